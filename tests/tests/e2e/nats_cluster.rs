//! Smoke test of the NATS cluster harness (`b24_tests::nats`, issue 12) with the real
//! `nats-server` and the real `async-nats` client: a 3-node JetStream cluster, an R3 stream,
//! duplicate suppression by `Nats-Msg-Id`, SIGKILL of the stream leader, and read-back of every
//! acknowledged message. It prints what it measures (acked-publish latency with many publishes
//! in flight; time from the leader's SIGKILL to the next acknowledged publish) and asserts only
//! correctness, never speed. Skips loudly without a server, except under `CI=true`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use async_nats::{
    HeaderValue,
    header::NATS_MESSAGE_ID,
    jetstream::{self, consumer, context::PublishAckFuture, message::PublishMessage, stream},
};
use b24_tests::nats::{NatsCluster, NatsOptions, cluster_or_skip, patiently};
use futures_util::{StreamExt, stream::FuturesUnordered};

const STREAM: &str = "B24_EVENTS";
/// Publishes kept in flight while measuring latency.
const IN_FLIGHT: usize = 64;
/// How long one publish may wait for its ack before the test sends it again (same id).
const ACK_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the cluster may take to elect a new stream leader before the test gives up.
const ELECTION_LIMIT: Duration = Duration::from_secs(20);

fn subject(i: usize) -> String {
    format!("b24.events.member{}.ONCRMDEALADD", i % 4)
}

fn message(id: &str) -> PublishMessage {
    PublishMessage::build().payload(format!("{{\"event\":\"{id}\"}}").into()).message_id(id)
}

/// Publishes `id` until the stream acknowledges it (the way the host's spool will forward an
/// event: the same `Nats-Msg-Id` every time); returns the ack and the errors seen on the way
/// (by kind, counted).
async fn publish_until_acked(
    js: &jetstream::Context,
    i: usize,
    id: &str,
) -> (jetstream::publish::PublishAck, BTreeMap<String, u32>) {
    let started = Instant::now();
    let mut errors = BTreeMap::new();
    loop {
        let error = match js.send_publish(subject(i), message(id)).await {
            Ok(future) => match future.await {
                Ok(ack) => return (ack, errors),
                Err(e) => format!("ack: {e}"),
            },
            Err(e) => format!("send: {e}"),
        };
        *errors.entry(error).or_default() += 1;
        assert!(
            started.elapsed() < ELECTION_LIMIT,
            "{id} not acknowledged within {ELECTION_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits acks of publishes already sent, all at once (an ack future's timeout starts when it
/// is first polled); a failed one is sent again with the same id. Returns how many were resent
/// and how many of those the stream had stored already (acknowledged as duplicates).
async fn await_or_resend(
    js: &jetstream::Context,
    sent: Vec<(usize, String, PublishAckFuture)>,
    acked: &mut BTreeSet<String>,
) -> (usize, usize) {
    let mut waiting: FuturesUnordered<_> = sent
        .into_iter()
        .map(|(i, id, future)| async move { (i, id, future.await.is_ok()) })
        .collect();
    let mut failed = Vec::new();
    while let Some((i, id, ok)) = waiting.next().await {
        if !ok {
            failed.push((i, id.clone()));
        }
        acked.insert(id);
    }
    let mut duplicates = 0;
    for (i, id) in &failed {
        if publish_until_acked(js, *i, id).await.0.duplicate {
            duplicates += 1;
        }
    }
    (failed.len(), duplicates)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn r3_stream_dedups_and_loses_nothing_acked_when_the_stream_leader_is_killed() {
    let test_started = Instant::now();
    let Some(mut cluster) = cluster_or_skip(
        "nats_cluster::r3_stream_dedups_and_loses_nothing_acked_when_the_stream_leader_is_killed",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    println!(
        "nats cluster: {} (3 nodes) up with a meta leader in {:?}, in {}",
        cluster.version(),
        test_started.elapsed(),
        cluster.dir().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(scenario(&mut cluster));
}

async fn scenario(cluster: &mut NatsCluster) {
    let admin = jetstream::new(async_nats::connect(cluster.urls()).await.expect("connect"));
    let mut events = patiently("create the R3 stream", || {
        admin.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["b24.events.>".into()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
    })
    .await;
    let info = events.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
    let leader_name = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("stream leader");
    let leader = cluster.node_named(&leader_name).expect("leader is one of ours");
    // Publish through a follower, so that the kill below measures the election, not a reconnect.
    let follower = (leader + 1) % 3;
    let client = async_nats::connect(cluster.url(follower)).await.expect("connect to a follower");
    let js = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
    let mut acked = BTreeSet::new();
    // A stream just created may not yet be known to the follower's server ("no stream found"
    // until the leader's interest reaches it): wait until one publish through it is acked.
    publish_until_acked(&js, 0, "warm-up").await;
    acked.insert("warm-up".to_owned());

    // Acked-publish latency at R3, IN_FLIGHT publishes pipelined.
    let total = 2000;
    let mut latencies = Vec::with_capacity(total);
    let mut sequences = BTreeMap::new();
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    for i in 0..total {
        let id = format!("e-{i}");
        let sent_at = Instant::now();
        let future = js.send_publish(subject(i), message(&id)).await.expect("send");
        pending.push(async move { (id, sent_at, future.await) });
        while pending.len() >= IN_FLIGHT || (i + 1 == total && !pending.is_empty()) {
            let (id, sent_at, ack) = pending.next().await.expect("a pending publish");
            let ack = ack.unwrap_or_else(|e| panic!("{id} not acknowledged: {e}"));
            assert!(!ack.duplicate, "{id} is new, not a duplicate");
            sequences.insert(id.clone(), ack.sequence);
            latencies.push(sent_at.elapsed());
            acked.insert(id);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "acked publish at R3, {IN_FLIGHT} in flight, {total} messages (debug build): p50 {:?}, \
         p99 {:?}, {:.0} msg/s",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        total as f64 / elapsed.as_secs_f64()
    );

    // The same, one publish at a time.
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200 {
        let id = format!("s-{i}");
        let sent_at = Instant::now();
        js.send_publish(subject(i), message(&id)).await.expect("send").await.expect("ack");
        latencies.push(sent_at.elapsed());
        acked.insert(id);
    }
    latencies.sort();
    println!(
        "acked publish at R3, one at a time, 200 messages (debug build): p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );

    // A duplicate Nats-Msg-Id within the window is acknowledged but not stored again.
    let again =
        js.send_publish(subject(7), message("e-7")).await.expect("send").await.expect("ack");
    assert!(again.duplicate, "the server suppresses a repeated Nats-Msg-Id");
    assert_eq!(again.sequence, sequences["e-7"], "a duplicate's ack names the original's sequence");
    assert_eq!(events.info().await.expect("info").state.messages, acked.len() as u64);

    // SIGKILL the stream leader with publishes in flight, then time the next acknowledged publish.
    let in_flight: Vec<_> = {
        let mut sent = Vec::new();
        for i in 0..100 {
            let id = format!("f-{i}");
            let future = js.send_publish(subject(i), message(&id)).await.expect("send");
            sent.push((i, id, future));
        }
        sent
    };
    let killed_at = Instant::now();
    cluster.kill(leader);
    let (_, errors) = publish_until_acked(&js, 0, "k-0").await;
    let outage = killed_at.elapsed();
    acked.insert("k-0".to_owned());
    println!(
        "SIGKILL of stream leader {leader_name} -> next acknowledged publish after {outage:?} \
         (ack timeout {ACK_TIMEOUT:?}; failed attempts by error: {errors:?})"
    );
    let (resent, duplicates) = await_or_resend(&js, in_flight, &mut acked).await;
    println!(
        "publishes in flight at the kill: 100; not acknowledged, so sent again with the same id: \
         {resent}, of which the stream already had (acked as duplicate): {duplicates}"
    );
    for i in 1..50 {
        let id = format!("k-{i}");
        publish_until_acked(&js, i, &id).await;
        acked.insert(id);
    }
    let new_leader =
        events.info().await.expect("info").cluster.as_ref().and_then(|c| c.leader.clone());
    assert_ne!(new_leader.as_deref(), Some(leader_name.as_str()), "a new stream leader");

    // The killed node comes back on the same store and catches up.
    let restarting = Instant::now();
    cluster.restart(leader).expect("restart the killed node");
    println!("killed node {leader_name} restarted and healthy in {:?}", restarting.elapsed());

    // Every acknowledged message is in the stream exactly once.
    let reader = events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("smoke-check".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create a durable pull consumer");
    let stored = events.info().await.expect("info").state.messages as usize;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut messages = reader.messages().await.expect("consume");
    let reading = Instant::now();
    while seen.values().sum::<u32>() < stored as u32 {
        assert!(
            reading.elapsed() < Duration::from_secs(20),
            "read back {} of {stored}",
            seen.len()
        );
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            continue;
        };
        let message = message.expect("a message");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NATS_MESSAGE_ID))
            .map(HeaderValue::as_str)
            .expect("every message has a Nats-Msg-Id")
            .to_owned();
        *seen.entry(id).or_default() += 1;
        message.ack().await.expect("ack");
    }
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "read back in {:?}: acknowledged {}, stored {stored}, read back {}, lost {}, stored twice {}",
        reading.elapsed(),
        acked.len(),
        seen.len(),
        lost.len(),
        doubled.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(doubled.is_empty(), "stored twice despite Nats-Msg-Id: {doubled:?}");
}

#[test]
fn one_node_with_sync_always_has_it_in_force_and_restarts_on_its_store() {
    let Some(mut cluster) = cluster_or_skip(
        "nats_cluster::one_node_with_sync_always_has_it_in_force_and_restarts_on_its_store",
        1,
        NatsOptions { sync_always: true },
    ) else {
        return;
    };
    let jsz = cluster.monitor(0, "/jsz").expect("/jsz");
    assert_eq!(jsz["config"]["sync_always"], true, "sync_interval: always is in force: {jsz}");
    cluster.kill(0);
    cluster.restart(0).expect("restart on the same store");
    assert_eq!(cluster.monitor(0, "/jsz").expect("/jsz")["config"]["sync_always"], true);
    assert_eq!(cluster.urls(), vec![cluster.url(0)]);
}
