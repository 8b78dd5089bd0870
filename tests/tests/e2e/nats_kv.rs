//! The NATS backend's shared key/value state (issue 12), at the `Journal` seam: two
//! `Journal`s on one real 3-node JetStream cluster are two hosts. A token learned through one
//! is read and watched by the other (and its removal too), OAuth tokens are replaced only by
//! compare-and-set, named values are shared, leases are exclusive, renewed while held, taken at
//! once when released and after the expiry when their holder died; and two hosts' REST clients
//! refreshing one portal's OAuth tokens at once spend its single-use refresh token once (the
//! fake portal's OAuth server refuses a reuse), and two hosts' offline pollers poll a portal one
//! at a time. Skips loudly without a server, except under
//! `CI=true`.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use b24_host::{
    auth::Verifier,
    config::{AuthConfig, Config},
    decode::{self, Decoded, Format},
    journal::{Journal, PortalChange},
    offline::Pollers,
    record::Source,
    rest::{EventContext, RestClient, oauth::StoredTokens},
    route::Router,
};
use b24_plugin_api::Secret;
use b24_tests::{
    MEMBER,
    fake_portal::{FakePortal, PortalOptions, RequestKind},
    nats::{NatsCluster, NatsOptions, cluster_or_skip},
};
use bytes::Bytes;
use serde_json::json;

/// How long a change may take to reach the other host's watch before the test fails.
const WATCH_LIMIT: Duration = Duration::from_secs(10);

/// A host's config on `cluster` (3 replicas), with `extra` (e.g. a `[rest]` table) appended.
fn config(cluster: &NatsCluster, dir: &Path, extra: &str) -> Config {
    let text = format!("state_dir = \"state\"\n{extra}\n{}", cluster.journal_toml(3, 2000));
    Config::parse(&text, &dir.join("host.toml")).expect("the test's host.toml is valid")
}

/// Opens the journal of one "host" on the cluster, as a running host does.
async fn host(config: &Config) -> Journal {
    match Journal::open(&config.state_dir, &config.journal, &[]).await {
        Ok((journal, _writer)) => journal,
        Err(e) => panic!("cannot open the journal on the cluster: {e}"),
    }
}

/// Two hosts' journals on one cluster.
async fn two_hosts(
    cluster: &NatsCluster,
    extra: &str,
) -> (tempfile::TempDir, Config, Journal, Journal) {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = config(cluster, &dir.path().join("a"), extra);
    let b = config(cluster, &dir.path().join("b"), extra);
    for c in [&a, &b] {
        std::fs::create_dir_all(&c.state_dir).expect("state dir");
    }
    let ja = host(&a).await;
    let jb = host(&b).await;
    (dir, a, ja, jb)
}

/// An event of `code` from `member` with application token `token`.
fn event(code: &str, member: &str, token: &str) -> (Bytes, Decoded) {
    let raw = Bytes::from(
        json!({
            "event": code,
            "data": {"FIELDS": {"ID": "1"}},
            "ts": "1700000000",
            "auth": {"member_id": member, "application_token": token, "domain": "x.bitrix24.com"},
        })
        .to_string(),
    );
    let decoded = decode::decode(&raw, Format::Json).expect("a valid event");
    (raw, decoded)
}

/// Journals `code` on `journal` with the token change an install or uninstall brings. The
/// token is stored before the event is published, so the change is in the log whatever the
/// append path answers (on this branch: not built yet).
async fn journal_token(journal: &Journal, code: &str, member: &str, token: Option<&str>) {
    let (raw, decoded) = event(code, member, token.unwrap_or("gone"));
    let change = Some(PortalChange {
        member_id: member.to_owned(),
        token: Some(token.map(Secret::new)),
        oauth: None,
    });
    let key = decode::dedup_key(&decoded);
    let record = decode::record(&decoded, raw, Format::Json, Source::Online, &key, Vec::new(), 0);
    match journal.log().append(record, key, Vec::new(), change).await {
        Ok(appended) => eprintln!("{code} journaled: {appended:?}"),
        Err(e) => eprintln!("{code}: the token change is stored; the event append says: {e}"),
    }
}

/// Waits for `journal`'s watch to report `(member, token)`; returns how long it took.
async fn watched(
    changes: &mut b24_host::journal::TokenChanges,
    member: &str,
    token: Option<&str>,
) -> Duration {
    let started = Instant::now();
    loop {
        let next = tokio::time::timeout(WATCH_LIMIT, changes.recv()).await;
        let Ok(Some((m, t))) = next else {
            panic!("the watch did not report {member}'s change within {WATCH_LIMIT:?}");
        };
        if m == member && t.as_ref().map(Secret::expose) == token {
            return started.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_learned_through_one_host_is_accepted_by_the_other_and_its_removal_too() {
    let Some(cluster) = cluster_or_skip(
        "a_token_learned_through_one_host_is_accepted_by_the_other_and_its_removal_too",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let (_dir, config_a, a, b) = two_hosts(&cluster, "").await;
    let member = "11112222333344445555666677778888";
    let odd = "odd.member id/ü*>";
    let token = "aaaabbbbccccddddeeeeffff00001111";

    // Host B as server.rs wires it: the tokens it knows at start, then the watch.
    let verifier = Verifier::new(
        &AuthConfig::default(),
        &config_a.rest,
        b.state().learned_tokens().await.unwrap(),
    )
    .expect("verifier");
    let mut changes = b.state().token_changes().expect("the NATS backend watches the tokens");
    let (_, from_portal) = event("ONCRMDEALADD", member, token);
    assert!(verifier.verify(&from_portal).is_err(), "B does not know the portal yet");

    journal_token(&a, "ONAPPINSTALL", member, Some(token)).await;
    journal_token(&a, "ONAPPINSTALL", odd, Some("odd-token")).await;
    // The fresh read ingress makes before a 401: at once, whatever the watch does.
    assert_eq!(
        b.state().shared_token(member).await.unwrap().as_ref().map(Secret::expose),
        Some(token)
    );
    assert_eq!(
        b.state().shared_token(odd).await.unwrap().as_ref().map(Secret::expose),
        Some("odd-token"),
        "any member id round-trips through the bucket's keys"
    );
    let took = watched(&mut changes, member, Some(token)).await;
    eprintln!("B's watch saw the learned token after {took:?}");
    verifier.set_learned(member, Some(Secret::new(token)));
    assert!(verifier.verify(&from_portal).is_ok(), "B accepts the token learned through A");
    let learned = b.state().learned_tokens().await.unwrap();
    assert_eq!(learned.keys().collect::<Vec<_>>(), vec![member, odd]);

    // Uninstalled through A: B forgets it.
    journal_token(&a, "ONAPPUNINSTALL", member, None).await;
    assert_eq!(b.state().shared_token(member).await.unwrap().map(|s| s.expose().to_owned()), None);
    let took = watched(&mut changes, member, None).await;
    eprintln!("B's watch saw the uninstall after {took:?}");
    verifier.set_learned(member, None);
    assert!(verifier.verify(&from_portal).is_err(), "B refuses the uninstalled portal");
    assert_eq!(b.state().learned_tokens().await.unwrap().keys().collect::<Vec<_>>(), vec![odd]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_replaced_by_compare_and_set_and_named_values_are_shared() {
    let Some(cluster) = cluster_or_skip(
        "oauth_tokens_are_replaced_by_compare_and_set_and_named_values_are_shared",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let (_dir, _config, a, b) = two_hosts(&cluster, "").await;
    let member = MEMBER;
    assert_eq!(b.state().oauth_entry(member).await.unwrap(), None);
    a.state().save_oauth(member, b"v1".to_vec()).await.unwrap();
    let (value, revision) = b.state().oauth_entry(member).await.unwrap().expect("stored through A");
    assert_eq!(value, b"v1");
    assert_eq!(a.state().oauth_entry(member).await.unwrap().map(|(_, r)| r), Some(revision));
    // Both read revision r; B replaces first, A's replace is refused and writes nothing.
    assert!(b.state().replace_oauth(member, b"v2".to_vec(), revision).await.unwrap());
    assert!(!a.state().replace_oauth(member, b"v3".to_vec(), revision).await.unwrap());
    assert_eq!(a.state().oauth(member).await.unwrap().as_deref(), Some(&b"v2"[..]));
    let (_, newer) = a.state().oauth_entry(member).await.unwrap().expect("stored");
    assert!(newer > revision);
    assert!(a.state().replace_oauth(member, b"v4".to_vec(), newer).await.unwrap());
    assert_eq!(b.state().oauth(member).await.unwrap().as_deref(), Some(&b"v4"[..]));

    // Named values (the offline pollers' process ids), any name.
    let name = format!("offline_process:{member}");
    a.state().set_state(&name, Some(b"pid-1".to_vec())).await.unwrap();
    assert_eq!(b.state().state(&name).await.unwrap().as_deref(), Some(&b"pid-1"[..]));
    b.state().set_state(&name, None).await.unwrap();
    assert_eq!(a.state().state(&name).await.unwrap(), None);
    assert_eq!(a.state().state("never set").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_renewed_while_held_and_taken_at_once_when_released() {
    let Some(cluster) = cluster_or_skip(
        "a_lease_is_exclusive_renewed_while_held_and_taken_at_once_when_released",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let (_dir, _config, a, b) = two_hosts(&cluster, "").await;
    let name = format!("offline.{MEMBER}");
    let held = a.state().lease(&name, Duration::ZERO).await.unwrap().expect("free lease taken");
    assert!(held.is_held());
    assert!(b.state().lease(&name, Duration::ZERO).await.unwrap().is_none(), "held by A");
    assert_eq!(
        b.state().lease_holder(&name).await.unwrap(),
        a.state().host_id(),
        "B sees who holds it"
    );
    // B waits longer than a lease lasts unrenewed (10 s): A's renewals keep it.
    let started = Instant::now();
    assert!(
        b.state().lease(&name, Duration::from_secs(12)).await.unwrap().is_none(),
        "renewed by A"
    );
    eprintln!("B waited {:?} in vain", started.elapsed());
    assert!(held.is_held());

    // A gives it up while B waits for it: B has it at once, without waiting for an expiry.
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let taken = b.state().lease(&name, Duration::from_secs(8)).await;
            (taken, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.release().await;
    let (taken, waited) = waiter.await.unwrap();
    let taken = taken.unwrap().expect("released lease taken by the waiting host");
    eprintln!("B took the released lease after waiting {waited:?} (A released it at ~300 ms)");
    assert!(a.state().lease(&name, Duration::ZERO).await.unwrap().is_none(), "now B's");
    taken.release().await;
    let again =
        a.state().lease(&name, Duration::ZERO).await.unwrap().expect("released: free at once");
    again.release().await;

    // Different names are different leases, any member id.
    let one = a.state().lease("refresh.a.b", Duration::ZERO).await.unwrap().expect("free");
    let two = b.state().lease("refresh.a_b", Duration::ZERO).await.unwrap().expect("another lease");
    one.release().await;
    two.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_expires_and_another_host_takes_it() {
    let Some(cluster) = cluster_or_skip(
        "a_dead_holders_lease_expires_and_another_host_takes_it",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let (_dir, _config, _a, b) = two_hosts(&cluster, "").await;
    // A host that took the lease and died: its key stays until the bucket's max age.
    let client = async_nats::connect(cluster.urls()).await.expect("client");
    let leases = jetstream::new(client).get_key_value("B24_EVENTS_leases").await.expect("bucket");
    let key = format!("offline.{MEMBER}");
    leases.create(&key, Bytes::from("dead-host-1")).await.expect("dead host's lease");
    let started = Instant::now();
    assert_eq!(b.state().lease_holder(&key).await.unwrap().as_deref(), Some("dead-host-1"));
    assert!(b.state().lease(&key, Duration::ZERO).await.unwrap().is_none(), "still held");
    // The server expires the key on its own clock (max age 10 s); a loaded machine may take
    // longer, so wait while the dead host is still the holder, and fail on anything else.
    let taken = loop {
        if let Some(taken) = b.state().lease(&key, Duration::from_secs(10)).await.unwrap() {
            break taken;
        }
        let holder = b.state().lease_holder(&key).await.unwrap();
        assert!(
            holder.is_none() || holder.as_deref() == Some("dead-host-1"),
            "the lease went to {holder:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the dead host's lease never expired"
        );
    };
    eprintln!(
        "the dead host's lease was taken {:?} after it was created (lease time 10 s)",
        started.elapsed()
    );
    assert!(taken.is_held());
    assert_eq!(b.state().lease_holder(&key).await.unwrap(), b.state().host_id());
    taken.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_refreshing_one_portals_tokens_at_once_spend_the_refresh_token_once() {
    let Some(cluster) = cluster_or_skip(
        "two_hosts_refreshing_one_portals_tokens_at_once_spend_the_refresh_token_once",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let portal = FakePortal::start(PortalOptions {
        rate_per_sec: f64::INFINITY,
        ..PortalOptions::default()
    });
    let options = portal.options();
    let rest = format!(
        "[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n",
        options.client_id,
        options.client_secret,
        portal.oauth_url()
    );
    let (_dir, config, a, b) = two_hosts(&cluster, &rest).await;
    let field = portal.add_field("CRM_LEAD", "UF_CRM_X", "string", vec![]);
    let (access, refresh) = portal.initial_oauth();
    let stored = StoredTokens {
        access_token: access,
        refresh_token: refresh,
        expires: None,
        client_endpoint: Some(portal.client_endpoint()),
        server_endpoint: Some(portal.server_endpoint()),
        oauth_url: Some(portal.oauth_url()),
        domain: None,
        installed_at_ms: None,
        install_key: None,
    };
    a.state().save_oauth(MEMBER, serde_json::to_vec(&stored).unwrap()).await.unwrap();
    let client_a = RestClient::new(config.rest.clone(), a.state()).expect("client A");
    let client_b = RestClient::new(config.rest.clone(), b.state()).expect("client B");
    let ctx = EventContext::app(MEMBER);
    const ROUNDS: usize = 5;
    let mut calls = 0;
    for round in 0..ROUNDS {
        // Every stored access token expires: both hosts' next calls must refresh, at once.
        portal.expire_access_tokens();
        let params = json!({ "id": field });
        let (one, two) = tokio::join!(
            client_a.call(&ctx, "crm.lead.userfield.get", params.clone()),
            client_b.call(&ctx, "crm.lead.userfield.get", params),
        );
        calls += 2;
        assert!(one.is_ok(), "round {round}: A's call: {one:?}");
        assert!(two.is_ok(), "round {round}: B's call: {two:?}");
    }
    let oauth: Vec<_> =
        portal.requests().into_iter().filter(|r| r.kind == RequestKind::OAuth).collect();
    let refused = oauth.iter().filter(|r| r.status != 200).count();
    eprintln!(
        "{calls} calls in {ROUNDS} rounds of simultaneous expiry: {} OAuth requests, {refused} refused, {} refreshes",
        oauth.len(),
        portal.refreshes().len()
    );
    assert_eq!(refused, 0, "no refresh token was used twice: {oauth:?}");
    assert_eq!(portal.refreshes().len(), ROUNDS, "one refresh per expiry, whichever host");
    // The chain is unbroken: each refresh spent the token the previous one issued.
    let chain = portal.refreshes();
    for pair in chain.windows(2) {
        assert_eq!(pair[0].1, pair[1].0);
    }
    let last: StoredTokens =
        serde_json::from_slice(&b.state().oauth(MEMBER).await.unwrap().expect("stored")).unwrap();
    assert_eq!(Some(&last.refresh_token), chain.last().map(|(_, new)| new));
}

/// Waits until `ready` says yes, at most `limit`; panics with `what` otherwise.
async fn until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_at_a_time_polls_a_portals_offline_queue_and_another_takes_over_at_stop() {
    let Some(cluster) = cluster_or_skip(
        "one_host_at_a_time_polls_a_portals_offline_queue_and_another_takes_over_at_stop",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let portal = FakePortal::start(PortalOptions {
        rate_per_sec: f64::INFINITY,
        ..PortalOptions::default()
    });
    let options = portal.options();
    let rest = format!(
        "[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n\n[rest.portals.{MEMBER:?}.offline]\npoll_interval_ms = 100\n",
        options.client_id,
        options.client_secret,
        portal.oauth_url()
    );
    let (_dir, config, a, b) = two_hosts(&cluster, &rest).await;
    let (access, refresh) = portal.initial_oauth();
    let stored = StoredTokens {
        access_token: access,
        refresh_token: refresh,
        expires: None,
        client_endpoint: Some(portal.client_endpoint()),
        server_endpoint: Some(portal.server_endpoint()),
        oauth_url: Some(portal.oauth_url()),
        domain: None,
        installed_at_ms: None,
        install_key: None,
    };
    a.state().save_oauth(MEMBER, serde_json::to_vec(&stored).unwrap()).await.unwrap();
    let rest_a = Arc::new(RestClient::new(config.rest.clone(), a.state()).expect("client A"));
    let rest_b = Arc::new(RestClient::new(config.rest.clone(), b.state()).expect("client B"));
    let gets = || portal.requests().iter().filter(|r| r.method == "event.offline.get").count();

    let pollers_a =
        Pollers::start(&config, rest_a, a.log(), a.state(), Router::default(), Default::default());
    let polled = |p: &Pollers| p.status().first().and_then(|s| s.last_poll_ms).is_some();
    until("A polls", Duration::from_secs(10), || polled(&pollers_a)).await;
    let pollers_b =
        Pollers::start(&config, rest_b, b.log(), b.state(), Router::default(), Default::default());
    // B finds the lease held and names its holder.
    until("B sees A's lease", Duration::from_secs(10), || {
        pollers_b.status().first().and_then(|s| s.poller.clone()) == a.state().host_id()
    })
    .await;
    // Many more polls (the sentinel), all A's: B never polled.
    let before = gets();
    until("A polls 20 more times", Duration::from_secs(20), || gets() >= before + 20).await;
    assert!(!polled(&pollers_b), "B polled while A held the lease: {:?}", pollers_b.status());
    let a_status = pollers_a.status();
    assert_eq!(a_status[0].errors, 0, "{a_status:?}");

    // A stops and gives the lease up: B takes over.
    pollers_a.stop().await;
    let took = until("B takes over", Duration::from_secs(10), || polled(&pollers_b)).await;
    eprintln!("{} polls by A; B took over {took:?} after A stopped", gets() - 1);
    let status = pollers_b.status();
    assert_eq!(status[0].errors, 0, "{status:?}");
    pollers_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_pair_is_stored_through_the_death_of_the_buckets_leader() {
    let Some(mut cluster) = cluster_or_skip(
        "a_refreshed_pair_is_stored_through_the_death_of_the_buckets_leader",
        3,
        NatsOptions::default(),
    ) else {
        return;
    };
    let (_dir, _config, a, b) = two_hosts(&cluster, "").await;
    a.state().save_oauth(MEMBER, b"old pair".to_vec()).await.unwrap();
    let (_, revision) = b.state().oauth_entry(MEMBER).await.unwrap().expect("stored");

    let client = async_nats::connect(cluster.urls()).await.expect("client");
    let mut stream =
        jetstream::new(client).get_stream("KV_B24_EVENTS_oauth").await.expect("the bucket");
    let info = stream.info().await.expect("stream info");
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a leader");
    let node = cluster.node_named(&leader).expect("the leader is a node of the cluster");
    cluster.kill(node);
    let killed = Instant::now();
    // The refresh's new pair: stored by CAS once a new leader is elected, not lost.
    assert!(b.state().replace_oauth(MEMBER, b"new pair".to_vec(), revision).await.unwrap());
    eprintln!("stored {:?} after SIGKILL of the bucket's leader {leader}", killed.elapsed());
    assert_eq!(a.state().oauth(MEMBER).await.unwrap().as_deref(), Some(&b"new pair"[..]));
    // A stale revision is still refused after the election.
    assert!(!a.state().replace_oauth(MEMBER, b"stale".to_vec(), revision).await.unwrap());
    a.state().set_state("after the election", Some(b"v".to_vec())).await.unwrap();
    assert_eq!(b.state().state("after the election").await.unwrap().as_deref(), Some(&b"v"[..]));
}
