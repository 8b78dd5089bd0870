//! The `journal` commands and `check` on the NATS backend, against a real 3-node JetStream
//! cluster. The log is stocked here the way hosts stock it (the contract's stream, consumer
//! and bucket names, subjects, headers and sealed payloads, published with async-nats), so
//! these tests do not depend on a host's delivery; every command is the real `b24-host`
//! binary run against the cluster with no host running: the log is shared, not locked.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, consumer::pull, context::Context, kv, message::PublishMessage,
    publish::PublishAck, stream,
};
use b24_host::journal::{
    admin::SKIPPED,
    checksum,
    record::{EventMeta, EventRecord, Format, Source},
};
use b24_tests::nats::{NatsCluster, NatsOptions, cluster_or_skip, patiently};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::support::*;

/// The events stream's name (`journal.nats.stream`'s default).
const S: &str = "B24_EVENTS";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The log as hosts set it up (the contract): the events stream (interest retention, discard
/// new, R3), the dead letters' stream, the bucket of retry states and skips, and a durable
/// pull consumer per plugin reading the events and its own replays.
async fn set_up_log(js: &Context, plugins: &[&str]) {
    patiently("events stream", || {
        js.get_or_create_stream(stream::Config {
            name: S.into(),
            subjects: vec![format!("b24.{S}.events.>"), format!("b24.{S}.replay.>")],
            storage: stream::StorageType::File,
            num_replicas: 3,
            duplicate_window: Duration::from_secs(120),
            retention: stream::RetentionPolicy::Interest,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
    })
    .await;
    patiently("dead letters stream", || {
        js.get_or_create_stream(stream::Config {
            name: format!("{S}_DEAD"),
            subjects: vec![format!("b24.{S}.dead.>")],
            storage: stream::StorageType::File,
            num_replicas: 3,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
    })
    .await;
    patiently("pending bucket", || {
        js.create_key_value(kv::Config {
            bucket: format!("{S}_pending"),
            history: 1,
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await;
    let events = patiently("events stream", || js.get_stream(S)).await;
    for plugin in plugins {
        let name = format!("{S}_{plugin}");
        patiently("consumer", || {
            events.get_or_create_consumer::<pull::Config>(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: 1,
                    filter_subjects: vec![
                        format!("b24.{S}.events.>"),
                        format!("b24.{S}.replay.{plugin}.>"),
                    ],
                    ..Default::default()
                },
            )
        })
        .await;
    }
}

/// The sealed payload of a user-field event (field `field`), as a host publishes it.
fn payload(field: u64) -> Bytes {
    let raw = field_event(field, &format!("UF_CRM_{field}"));
    let record = EventRecord {
        meta: EventMeta {
            received_at_ms: now_ms() - 5_000,
            format: Format::Form,
            source: Source::Online,
            code: "ONCRMDEALUSERFIELDUPDATE".into(),
            member_id: MEMBER.into(),
            domain: "example.bitrix24.com".into(),
            dedup_key: format!("key{field}"),
            extra: vec![],
            user_field: None,
        },
        raw: Bytes::from(raw),
    };
    Bytes::from(checksum::seal(b"b24-event", &record.encode()))
}

fn now_ms() -> i64 {
    b24_host::journal::now_ms()
}

/// Publishes an event for `plugins` as a host's append does; its id (the sequence).
async fn publish_event(js: &Context, field: u64, plugins: &str) -> u64 {
    let subject = format!("b24.{S}.events.{MEMBER}.ONCRMDEALUSERFIELDUPDATE");
    let message = PublishMessage::build()
        .payload(payload(field))
        .message_id(format!("key{field}"))
        .header("B24-Plugins", plugins);
    publish_patiently(js, &subject, message).await.sequence
}

/// Publishes until the log acknowledges (the same `Nats-Msg-Id` each time, so stored once): a
/// stream just created on a fresh cluster may answer "no stream found" from a server its
/// interest has not reached yet, as the hosts' own appends and burials retry.
async fn publish_patiently(js: &Context, subject: &str, message: PublishMessage) -> PublishAck {
    patiently(subject, || async {
        match js.send_publish(subject.to_owned(), message.clone()).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Stores `plugin`'s dead letter of event `id` as a host's `Reporter::bury` does (the host
/// then ends the consumer's message with `Term`).
async fn bury(js: &Context, plugin: &str, id: u64, reason: &str, attempts: u32) {
    let events = js.get_stream(S).await.unwrap();
    let message = events.get_raw_message(id).await.expect("the event");
    let subject = format!("b24.{S}.dead.{plugin}.{MEMBER}.ONCRMDEALUSERFIELDUPDATE");
    let dead = PublishMessage::build()
        .payload(message.payload)
        .message_id(format!("dead:{plugin}:{id}"))
        .header("B24-Event-Id", id.to_string())
        .header("B24-Plugin", plugin)
        .header("B24-Reason", reason)
        .header("B24-Attempts", attempts.to_string())
        .header("B24-At-Ms", now_ms().to_string());
    publish_patiently(js, &subject, dead).await;
}

/// Takes the consumer's next message of `plugin` and ends it with `ack`: (sequence, event id
/// header if any, subject).
async fn take(js: &Context, plugin: &str, ack: AckKind) -> (u64, Option<String>, String) {
    let consumer: jetstream::consumer::PullConsumer =
        js.get_stream(S).await.unwrap().get_consumer(&format!("{S}_{plugin}")).await.unwrap();
    let mut batch =
        consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
    let message = batch.next().await.expect("a message").expect("not an error");
    let info = message.info().unwrap().stream_sequence;
    let event_id =
        message.headers.as_ref().and_then(|h| h.get("B24-Event-Id")).map(|v| v.to_string());
    let subject = message.subject.to_string();
    message.double_ack_with(ack).await.expect("acked");
    (info, event_id, subject)
}

fn host_dir(cluster: &NatsCluster) -> HostDir {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(
        &["probe"],
        &format!("{}\n{}", probe("", ""), cluster.journal_toml(3, 1000)),
    ));
    dir
}

fn rows(answer: &serde_json::Value, key: &str) -> Vec<serde_json::Value> {
    answer[key].as_array().cloned().unwrap_or_default()
}

#[test]
fn dead_letters_replay_purge_and_skip_through_journal_commands_on_the_shared_log() {
    let Some(cluster) = cluster_or_skip(
        "dead_letters_replay_purge_and_skip_through_journal_commands_on_the_shared_log",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let dir = host_dir(&cluster);
    let rt = runtime();
    let _in_runtime = rt.enter();
    let client = rt.block_on(async_nats::connect(cluster.urls())).expect("connect");
    let js = jetstream::new(client.clone());
    rt.block_on(set_up_log(&js, &["probe"]));

    // Four events for the probe: 1 and 2 given up (dead letters), 3 done, 4 still pending.
    let ids: Vec<u64> = rt.block_on(async {
        futures_util::future::join_all((1..=4).map(|f| publish_event(&js, f, "probe"))).await
    });
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3, 4], "four events acknowledged by the log");
    rt.block_on(async {
        for (id, reason) in [(1, "gave up after 3 attempts: HTTP 500"), (2, "rejected: bad field")]
        {
            bury(&js, "probe", id, reason, 3).await;
            // A host that buries again (it died before its Term) stores it once.
            bury(&js, "probe", id, reason, 3).await;
            let (seq, _, _) = take(&js, "probe", AckKind::Term).await;
            assert_eq!(seq, id);
        }
        let (seq, _, _) = take(&js, "probe", AckKind::Ack).await;
        assert_eq!(seq, 3);
    });

    let stats = dir.stats();
    assert_eq!(stats["probe"], (1, 0, 2), "backlog 1 (event 4), dead 2: {stats:?}");
    // A failed attempt's retry state, as the delivering host writes it, counts as retrying;
    // finished, the host deletes it.
    let bucket = rt.block_on(js.get_key_value(format!("{S}_pending"))).unwrap();
    // (Patiently: the bucket's first write on a fresh cluster, as in `publish_patiently`.)
    rt.block_on(patiently("retry state", || {
        bucket.put("probe.4", Bytes::from_static(b"{\"attempts\":2}"))
    }));
    eventually(PATIENCE, || dir.stats()["probe"] == (1, 1, 2));
    assert_eq!(dir.stats()["probe"], (1, 1, 2), "event 4 failed once: retrying");
    rt.block_on(bucket.delete("probe.4")).unwrap();
    let answer = dir.journal(&["stats"]);
    assert_eq!(answer["events"], 1, "the log keeps only what a plugin has not finished: {answer}");
    let oldest = answer["plugins"][0]["oldest_pending_age_ms"].as_i64().expect("an age");
    assert!(oldest >= 5_000, "event 4 was accepted 5 s before it was published: {oldest}");

    let listed = rows(&dir.journal(&["list", "--limit", "10"]), "events");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["id"].as_u64(), listed[0]["pending"].clone()),
        (Some(4), serde_json::json!(["probe"]))
    );

    // `show` finds a pending event in the log and a finished one in its dead letter; tokens
    // never show.
    let shown = dir.journal(&["show", "4"]);
    assert_eq!(shown["event"]["summary"]["code"], "ONCRMDEALUSERFIELDUPDATE");
    let text = shown.to_string();
    assert!(text.contains("<redacted>") && !text.contains(TOKEN), "{text}");
    let shown = dir.journal(&["show", "1"]);
    assert_eq!(shown["event"]["dead_state"]["probe"]["attempts"], 3, "{shown}");
    let out = dir.run_cli(&["journal", "show", "3", "--config", "host.toml"]);
    assert!(!out.status.success(), "event 3 is done and gone");

    let dead = rows(&dir.journal(&["dead", "--plugin", "probe"]), "rows");
    let dead_ids: Vec<u64> = dead.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(dead_ids, vec![1, 2]);
    assert_eq!(dead[1]["dead"]["reason"], "rejected: bad field");
    assert_eq!(dead[0]["member_id"], MEMBER);
    assert!(rows(&dir.journal(&["dead", "--plugin", "other"]), "rows").is_empty());

    // Replay 1: it goes back to the probe's consumer only, under its original id and a new
    // message id (not a duplicate of anything), and its dead letter is gone.
    let replayed = rows(&dir.journal(&["replay", "--plugin", "probe", "1"]), "rows");
    assert_eq!(replayed, vec![serde_json::json!(["probe", 1])]);
    eventually(PATIENCE, || dir.stats()["probe"] == (2, 0, 1));
    assert_eq!(dir.stats()["probe"], (2, 0, 1), "event 4 and the replay of 1 pending; 2 dead");
    rt.block_on(async {
        let (seq, _, _) = take(&js, "probe", AckKind::Ack).await;
        assert_eq!(seq, 4);
        let (seq, event_id, subject) = take(&js, "probe", AckKind::Ack).await;
        assert_eq!(event_id.as_deref(), Some("1"), "the replay keeps the event id");
        assert_eq!(subject, format!("b24.{S}.replay.probe.{MEMBER}.ONCRMDEALUSERFIELDUPDATE"));
        // Acknowledged by its only consumer, it leaves the log: the replicas remove it once
        // the acknowledgement has reached them, a moment after the double ack's answer.
        let events = js.get_stream(S).await.unwrap();
        patiently("the replayed event leaving the log", || async {
            match events.get_raw_message(seq).await {
                Ok(_) => Err(format!("event {seq} still stored")),
                Err(_) => Ok(()),
            }
        })
        .await;
    });
    eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 1));
    assert_eq!(dir.stats()["probe"], (0, 0, 1));

    // Purge 2.
    let purged = rows(&dir.journal(&["purge", "--plugin", "probe"]), "rows");
    assert_eq!(purged, vec![serde_json::json!(["probe", 2])]);
    eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 0));
    assert_eq!(dir.stats()["probe"], (0, 0, 0));

    // Skip: event 5 pending becomes a dead letter "skipped by an operator", marked in the
    // bucket, and the hosts are told on the skip subject; an id not pending is refused.
    let mut told = rt.block_on(client.subscribe(format!("b24.{S}.skip.probe"))).unwrap();
    rt.block_on(client.flush()).unwrap();
    let five = rt.block_on(publish_event(&js, 5, "probe"));
    let out = dir.run_cli(&[
        "journal",
        "skip",
        "--plugin",
        "probe",
        &five.to_string(),
        "3",
        "--config",
        "host.toml",
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["skipped"], serde_json::json!([five]), "{answer}");
    assert_eq!(answer["not_pending"], serde_json::json!([3]), "{answer}");
    let word = rt
        .block_on(tokio::time::timeout(Duration::from_secs(10), told.next()))
        .expect("the skip was announced")
        .expect("a message");
    assert_eq!(word.payload, Bytes::from(five.to_string()));
    let marked = rt.block_on(async {
        js.get_key_value(format!("{S}_pending"))
            .await
            .unwrap()
            .get(format!("skip.probe.{five}"))
            .await
            .unwrap()
    });
    assert!(marked.is_some(), "skip.probe.{five} in the bucket");
    let dead = rows(&dir.journal(&["dead"]), "rows");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0]["id"].as_u64(), dead[0]["dead"]["reason"].as_str()),
        (Some(five), Some(SKIPPED))
    );
    // Replaying a skipped event lifts its mark, so the delivering host does not drop it.
    rt.block_on(async {
        let (seq, _, _) = take(&js, "probe", AckKind::Term).await;
        assert_eq!(seq, five, "the delivering host drops it (here: by hand)");
    });
    let replayed = rows(&dir.journal(&["replay"]), "rows");
    assert_eq!(replayed, vec![serde_json::json!(["probe", five])]);
    let marked = rt.block_on(async {
        js.get_key_value(format!("{S}_pending"))
            .await
            .unwrap()
            .get(format!("skip.probe.{five}"))
            .await
            .unwrap()
    });
    assert!(marked.is_none(), "the mark is lifted");
    let stats = dir.stats();
    assert_eq!(stats["probe"], (1, 0, 0), "{stats:?}");
}

#[test]
fn check_reports_the_stream_its_replicas_and_the_consumers_and_names_an_unreachable_log() {
    let Some(cluster) = cluster_or_skip(
        "check_reports_the_stream_its_replicas_and_the_consumers_and_names_an_unreachable_log",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let dir = host_dir(&cluster);
    let rt = runtime();
    let _in_runtime = rt.enter();
    let client = rt.block_on(async_nats::connect(cluster.urls())).expect("connect");
    let js = jetstream::new(client);
    rt.block_on(set_up_log(&js, &["probe"]));
    rt.block_on(async {
        for field in 1..=3 {
            publish_event(&js, field, "probe").await;
        }
    });
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("stream {S}: 3 message(s)")), "{text}");
    assert!(text.contains("3 replica(s)"), "{text}");
    let leader = (0..3).map(|i| cluster.name(i)).find(|n| text.contains(&format!("leader {n}")));
    assert!(leader.is_some(), "the stream's leader is named: {text}");
    assert!(text.contains("consumer probe: 3 pending, 0 ack pending, 0 redelivered"), "{text}");
    assert!(text.contains(&format!("dead letters {S}_DEAD: 0")), "{text}");

    // No server: a clear error naming the URLs, within seconds, and a failing exit.
    let port = free_port();
    let unreachable = HostDir::new(&["probe"]);
    let journal = format!(
        "[journal]\nbackend = \"nats\"\n\n[journal.nats]\nurls = [\"nats://127.0.0.1:{port}\"]\nack_timeout_ms = 500\n"
    );
    unreachable.write_config(&config(&["probe"], &format!("{}\n{journal}", probe("", ""))));
    let started = std::time::Instant::now();
    let out = unreachable.run_cli(&["check", "--config", "host.toml"]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("cannot reach"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let out = unreachable.run_cli(&["journal", "stats", "--config", "host.toml"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("cannot reach"), "{text}");
}

#[test]
fn readyz_and_metrics_say_what_the_log_does_on_the_embedded_journal() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body.trim_end(), "ready\nlog: embedded journal");
    let metrics = host.admin_request("GET", "/metrics");
    assert!(metrics.body.contains("\nb24_journal_log_acknowledging 1\n"), "{}", metrics.body);
    assert!(host.stop());
}

/// A real host on the log: the probe fails or rejects, the host buries the events on the log,
/// and the `journal` commands (run while the host delivers, and after it stopped) show, replay
/// and purge them; a replay reaches the probe under the event's original id.
#[test]

fn a_host_on_the_log_buries_and_journal_commands_replay_and_purge() {
    let Some(cluster) = cluster_or_skip(
        "a_host_on_the_log_buries_and_journal_commands_replay_and_purge",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let dir = HostDir::new(&["probe"]);
    let journal = cluster.journal_toml(3, 1000);
    let extra = format!("{}\n{journal}", probe("", "fail_while = \"fail.flag\""));
    dir.write_config(&config(&["probe"], &extra));
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    let host = start(&dir);
    let mut accepted = Vec::new();
    for (field, name) in [(1, "UF_CRM_A"), (2, "UF_CRM_REJECT"), (3, "UF_CRM_B")] {
        let answer = host.post_form(&field_event(field, name));
        assert_eq!(answer.status, 200, "{answer:?}");
        accepted.push(answer.body.trim_start_matches("accepted ").trim().to_owned());
    }
    // 3 attempts each for 1 and 3 (the flag makes every call retry), 1 for the rejection.
    let calls = dir.wait_lines("probe.jsonl", 7, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(calls.len(), 7, "{}", host.log_text());
    let buried = eventually(PATIENCE, || dir.stats().get("probe") == Some(&(0, 0, 3)));
    assert!(buried, "{:?}\n{}", dir.stats(), host.log_text());
    let dead = rows(&dir.journal(&["dead", "--plugin", "probe"]), "rows");
    let ids: Vec<String> = dead.iter().map(|r| r["id"].to_string()).collect();
    assert_eq!(ids, accepted, "one dead letter per event, under the ids the host answered");
    let reasons: Vec<&str> = dead.iter().map(|r| r["dead"]["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].starts_with("gave up after 3 attempts"), "{reasons:?}");
    assert!(reasons[1].starts_with("rejected: probe told to reject"), "{reasons:?}");
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("dead letters B24_EVENTS_DEAD: 3"), "{text}");

    // Fix the cause, replay two; they reach the probe under their own ids, at attempt 1.
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    let replayed = rows(&dir.journal(&["replay", "--plugin", "probe", &ids[0], &ids[2]]), "rows");
    assert_eq!(replayed.len(), 2);
    let calls = dir.wait_lines("probe.jsonl", 9, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(calls.len(), 9, "{}", host.log_text());
    let last_two: Vec<String> = calls[7..].iter().map(|l| l["event_id"].to_string()).collect();
    assert_eq!(last_two, vec![ids[0].clone(), ids[2].clone()]);
    assert!(calls[7..].iter().all(|l| l["attempt"] == 1), "replay starts again at attempt 1");
    let drained = eventually(PATIENCE, || dir.stats().get("probe") == Some(&(0, 0, 1)));
    assert!(drained, "{:?}", dir.stats());

    // The admin listener says what the log does, and the backlog comes from the consumer.
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.ends_with("log: shared log acknowledging"), "{}", ready.body);
    let metrics = host.admin_request("GET", "/metrics").body;
    assert!(metrics.contains("\nb24_journal_log_acknowledging 1\n"), "{metrics}");
    assert!(metrics.contains("\nb24_plugin_backlog{plugin=\"probe\"} 0\n"), "{metrics}");

    // Purge the last one with the host stopped: the log needs no host.
    assert!(host.stop());
    let purged = rows(&dir.journal(&["purge", "--plugin", "probe"]), "rows");
    assert_eq!(purged, vec![serde_json::json!(["probe", accepted[1].parse::<u64>().unwrap()])]);
    assert_eq!(dir.stats()["probe"], (0, 0, 0));
}

/// The log loses its quorum (2 of 3 nodes killed): the host keeps answering 200 into its
/// spool, `/readyz` stays 200 and says it spools, `b24_journal_log_acknowledging` is 0; with a
/// node back the spool drains to the plugin and the log acknowledges again.
#[test]

fn readyz_stays_ready_and_says_so_while_the_host_spools() {
    let Some(mut cluster) = cluster_or_skip(
        "readyz_stays_ready_and_says_so_while_the_host_spools",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(
        &["probe"],
        &format!("{}\n{}", probe("", ""), cluster.journal_toml(3, 500)),
    ));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_BEFORE")).status, 200);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field").len(), 1);
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(
        (ready.status, ready.body.ends_with("log: shared log acknowledging")),
        (200, true),
        "{}",
        ready.body
    );

    cluster.kill(1);
    cluster.kill(2);
    // Sent, acknowledged (200), delivered, lost: counted.
    let sent = 10;
    let mut acknowledged = Vec::new();
    for field in 2..2 + sent {
        let answer = host.post_form(&field_event(field, "UF_CRM_SPOOLED"));
        assert_eq!(answer.status, 200, "{answer:?}\n{}", host.log_text());
        acknowledged.push(field);
    }
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("log: spooling"), "{}", ready.body);
    let metrics = host.admin_request("GET", "/metrics").body;
    assert!(metrics.contains("\nb24_journal_log_acknowledging 0\n"), "{metrics}");
    // The spool's count, what the alert on a spool that does not drain reads.
    let spooled = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("b24_journal_spooled_events "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert!(spooled(&metrics).is_some_and(|n| n >= 1), "{metrics}");

    cluster.restart(1).expect("node 2 back");
    let lines = dir.wait_lines("probe.jsonl", 1 + sent as usize, Duration::from_secs(40), |l| {
        l["kind"] == "user_field"
    });
    let mut delivered: Vec<u64> =
        lines.iter().filter_map(|l| l["field_id"].as_u64()).filter(|f| *f >= 2).collect();
    delivered.sort();
    delivered.dedup();
    let lost: Vec<&u64> = acknowledged.iter().filter(|f| !delivered.contains(f)).collect();
    eprintln!(
        "spool: sent {sent}, acknowledged {}, delivered {}, lost {}",
        acknowledged.len(),
        delivered.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}:\n{}", host.log_text());
    let back = eventually(PATIENCE, || {
        host.admin_request("GET", "/readyz").body.ends_with("log: shared log acknowledging")
    });
    assert!(back, "{}", host.admin_request("GET", "/readyz").body);
    let drained =
        eventually(PATIENCE, || spooled(&host.admin_request("GET", "/metrics").body) == Some(0));
    assert!(drained, "{}", host.admin_request("GET", "/metrics").body);
    assert!(host.stop());
}

/// `journal skip` of an event a host is retrying: the command stores the dead letter, marks
/// the skip and announces it; the delivering host drops the event, and the plugin's next
/// event (a sentinel) comes through.
#[test]

fn skip_of_an_event_a_host_is_retrying_drops_it_there() {
    let Some(cluster) = cluster_or_skip(
        "skip_of_an_event_a_host_is_retrying_drops_it_there",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let dir = HostDir::new(&["probe"]);
    let probe = "[plugin.probe]\n[plugin.probe.retry]\nattempts = 1000\nbase_ms = 100\ncap_ms = 200\n\n[plugin.probe.settings]\nrecord = \"probe.jsonl\"\nfail_while = \"fail.flag\"\n";
    dir.write_config(&config(&["probe"], &format!("{probe}\n{}", cluster.journal_toml(3, 1000))));
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    let host = start(&dir);
    let answer = host.post_form(&field_event(1, "UF_CRM_STUCK"));
    assert_eq!(answer.status, 200);
    let id = answer.body.trim_start_matches("accepted ").trim().to_owned();
    let retrying = eventually(PATIENCE, || dir.stats().get("probe") == Some(&(1, 1, 0)));
    assert!(retrying, "{:?}\n{}", dir.stats(), host.log_text());
    let skipped = dir.journal(&["skip", "--plugin", "probe", &id]);
    assert_eq!(skipped["skipped"], serde_json::json!([id.parse::<u64>().unwrap()]), "{skipped}");
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    // With concurrency 1 the sentinel comes only once the skipped event is dropped.
    let before = probe_sentinel(&host, &dir, 2);
    assert!(before.iter().any(|l| l["field_id"] == 1), "event 1 was tried before the skip");
    let all = dir.read_lines("probe.jsonl");
    let after_sentinel = all.iter().skip_while(|l| l["field_id"] != 2).skip(1);
    assert_eq!(after_sentinel.filter(|l| l["field_id"] == 1).count(), 0, "not tried after");
    let settled = eventually(PATIENCE, || dir.stats().get("probe") == Some(&(0, 0, 1)));
    assert!(settled, "{:?}\n{}", dir.stats(), host.log_text());
    let dead = rows(&dir.journal(&["dead"]), "rows");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["dead"]["reason"], SKIPPED);
    assert!(host.stop());
}
