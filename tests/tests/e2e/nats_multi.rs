//! Several hosts on one replicated NATS JetStream log (issue 12): two b24-host processes on a
//! real 3-node R3 cluster, clients alternating between them. Every acknowledged event reaches
//! each plugin (probe and audit-log) at least once, in per-plugin order, under one
//! `delivery.event_id` whichever host delivers it; a host SIGKILLed under load leaves its
//! in-flight events to the other; the stream leader SIGKILLed under load costs no request a
//! 200 (the spool takes the events), the spool drains once the cluster is back and
//! `Nats-Msg-Id` suppresses the duplicates. Each test prints its figures (events sent,
//! acknowledged, delivered, lost, non-200s).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use b24_tests::nats::{NatsCluster, NatsOptions, cluster_or_skip};

use crate::support::*;

/// How long delivery may take to catch up after the load (a lease moving to another host
/// waits up to 10 s, a leader election up to ~8 s).
pub(crate) const CATCH_UP: Duration = Duration::from_secs(40);

/// How long work that should be progressing (a spool draining, deliveries catching up) may
/// show no progress at all before a test calls it stalled.
pub(crate) const STALL: Duration = Duration::from_secs(60);

/// The plugins of these tests and the files they record to.
const PLUGINS: [(&str, &str); 2] = [("probe", "probe.jsonl"), ("audit-log", "audit.jsonl")];

/// A host folder on `cluster` (replicas 3) with probe (sleeping `sleep_ms` per call) and
/// audit-log.
pub(crate) fn host_dir(cluster: &NatsCluster, ack_timeout_ms: u64, sleep_ms: u64) -> HostDir {
    let dir = HostDir::new(&["probe", "audit-log"]);
    let plugins = config(&["probe", "audit-log"], &probe("", &format!("sleep_ms = {sleep_ms}")));
    dir.write_config(&format!("{plugins}\n{}", cluster.journal_toml(3, ack_timeout_ms)));
    dir
}

/// One request: the field id sent, the host index and the answer.
pub(crate) type Row = (u64, usize, Result<Answer, String>);

/// What the clients saw.
#[derive(Default)]
pub(crate) struct Sent {
    pub(crate) rows: Mutex<Vec<Row>>,
}

impl Sent {
    pub(crate) fn acked(&self) -> BTreeSet<u64> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .filter(|(_, _, r)| matches!(r, Ok(a) if a.status == 200))
            .map(|(f, _, _)| *f)
            .collect()
    }

    fn non_200(&self, host: Option<usize>) -> Vec<(u64, usize, String)> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .filter(|(_, h, _)| host.is_none_or(|x| x == *h))
            .filter(|(_, _, r)| !matches!(r, Ok(a) if a.status == 200))
            .map(|(f, h, r)| (*f, *h, format!("{r:?}")))
            .collect()
    }

    fn len(&self) -> usize {
        self.rows.lock().unwrap().len()
    }
}

/// Clients posting user-field events (a new field id each) to the hosts' addresses in turn
/// until stopped; every `dup_every`-th event is posted to the next host as well (the same
/// body: a duplicate).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    sent: Arc<Sent>,
}

impl Load {
    fn start(
        targets: Vec<(String, String)>,
        alive: Arc<Vec<AtomicBool>>,
        clients: usize,
        dup_every: u64,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Sent::default());
        let next = Arc::new(AtomicU64::new(1000));
        let threads = (0..clients)
            .map(|c| {
                let (stop, sent, next, targets, alive) =
                    (stop.clone(), sent.clone(), next.clone(), targets.clone(), alive.clone());
                std::thread::spawn(move || {
                    let mut turn = c;
                    while !stop.load(Ordering::SeqCst) {
                        let field = next.fetch_add(1, Ordering::SeqCst);
                        let body = field_event(field, "UF_CRM_MULTI");
                        let mut posts = vec![];
                        for _ in 0..targets.len() {
                            turn = (turn + 1) % targets.len();
                            if alive[turn].load(Ordering::SeqCst) {
                                break;
                            }
                        }
                        posts.push(turn);
                        if dup_every > 0 && field % dup_every == 0 {
                            let other = (turn + 1) % targets.len();
                            if alive[other].load(Ordering::SeqCst) {
                                posts.push(other);
                            }
                        }
                        for host in posts {
                            let (addr, path) = &targets[host];
                            let answer = try_request(
                                addr,
                                "POST",
                                path,
                                Some("application/x-www-form-urlencoded"),
                                body.as_bytes(),
                            );
                            sent.rows.lock().unwrap().push((field, host, answer));
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads, sent }
    }

    fn wait_sent(&self, n: usize) {
        let enough = eventually(Duration::from_secs(30), || self.sent.len() >= n);
        assert!(enough, "the clients sent only {} requests", self.sent.len());
    }

    fn finish(self) -> Arc<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.sent
    }
}

/// Per plugin: field id -> event ids delivered for it (from every host's record), and each
/// host's record as the event ids in delivery order.
fn delivered(dirs: &[&HostDir], file: &str) -> (BTreeMap<u64, BTreeSet<u64>>, Vec<Vec<u64>>) {
    let mut by_field: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut orders = Vec::new();
    for dir in dirs {
        let mut order = Vec::new();
        for line in dir.read_lines_lenient(file) {
            let (Some(field), Some(id)) = (line["field_id"].as_u64(), line["event_id"].as_u64())
            else {
                continue;
            };
            if field < 1000 {
                continue;
            }
            by_field.entry(field).or_default().insert(id);
            order.push(id);
        }
        orders.push(order);
    }
    (by_field, orders)
}

/// Waits until every acknowledged event reached every plugin, then checks and prints:
/// nothing lost, one event id per event, per-plugin order on each host. The figures line is
/// returned for the test's own report.
pub(crate) fn check_delivery(test: &str, dirs: &[&HostDir], sent: &Sent, non_200: usize) {
    let acked = sent.acked();
    for (plugin, file) in PLUGINS {
        let reached = eventually_progressing(STALL, || {
            let (by_field, _) = delivered(dirs, file);
            (acked.iter().all(|f| by_field.contains_key(f)), by_field.len())
        });
        let (by_field, orders) = delivered(dirs, file);
        let lost: Vec<u64> = acked.iter().filter(|f| !by_field.contains_key(f)).copied().collect();
        let deliveries: usize = orders.iter().map(Vec::len).sum();
        println!(
            "{test} [{plugin}]: sent {} requests ({} events), acknowledged {} events, delivered {} \
             events ({deliveries} calls), lost {}, non-200s {non_200}",
            sent.len(),
            sent.rows.lock().unwrap().iter().map(|r| r.0).collect::<BTreeSet<_>>().len(),
            acked.len(),
            by_field.len(),
            lost.len(),
        );
        assert!(reached && lost.is_empty(), "{plugin}: acknowledged but never delivered: {lost:?}");
        let split: Vec<_> = by_field.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(split.is_empty(), "{plugin}: events delivered under several ids: {split:?}");
        let ids: BTreeSet<u64> = by_field.values().flatten().copied().collect();
        assert_eq!(ids.len(), by_field.len(), "{plugin}: two events share an event id");
        // Order: on each host, an event delivered after a later one. An event delivered more
        // than once (at least once: an ack lost in an election, a host's in-flight events) may
        // come again after later ones: that repeat is no order violation, its first delivery
        // counts. Events delivered once in all must each come after every smaller id.
        let mut calls: BTreeMap<u64, usize> = BTreeMap::new();
        for id in orders.iter().flatten() {
            *calls.entry(*id).or_default() += 1;
        }
        let mut repeats_late = 0;
        for (host, order) in orders.iter().enumerate() {
            let mut highest = 0;
            let mut disorder = Vec::new();
            for id in order {
                if *id < highest {
                    if calls[id] == 1 {
                        disorder.push((highest, *id));
                    } else {
                        repeats_late += 1;
                    }
                }
                highest = highest.max(*id);
            }
            assert!(disorder.is_empty(), "{plugin} on host {host}: out of order: {disorder:?}");
        }
        println!("{test} [{plugin}]: {repeats_late} repeated deliveries came after later events");
    }
}

fn targets(hosts: &[&RunningHost]) -> Vec<(String, String)> {
    hosts.iter().map(|h| (h.addr.clone(), h.path.clone())).collect()
}

const DELIVERS: &str = "this host delivers the plugin now";

#[test]
fn two_hosts_deliver_every_acknowledged_event_once_per_id_in_order() {
    let test = "nats_multi::two_hosts";
    let Some(cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let (dir_a, dir_b) = (host_dir(&cluster, 2000, 0), host_dir(&cluster, 2000, 0));
    let a = start(&dir_a);
    let b = start(&dir_b);
    let alive = Arc::new(vec![AtomicBool::new(true), AtomicBool::new(true)]);
    let load = Load::start(targets(&[&a, &b]), alive, 4, 10);
    load.wait_sent(400);
    let sent = load.finish();
    let non_200 = sent.non_200(None);
    assert!(non_200.is_empty(), "requests not answered 200: {non_200:?}");
    // Duplicates posted to the other host were answered as duplicates of the same id.
    let rows = sent.rows.lock().unwrap();
    let dups = rows
        .iter()
        .filter(|(_, _, r)| r.as_ref().is_ok_and(|a| a.body.starts_with("duplicate of")))
        .count();
    drop(rows);
    println!("{test}: {dups} duplicates answered as such");
    assert!(dups > 0, "no duplicate was recognised across the hosts");
    check_delivery(test, &[&dir_a, &dir_b], &sent, non_200.len());
    assert!(a.stop() && b.stop(), "the hosts did not stop cleanly");
}

#[test]
fn a_host_killed_under_load_leaves_its_events_to_the_other() {
    host_leaves_under_load("nats_multi::host_killed", true);
}

#[test]
fn a_host_stopped_under_load_gives_its_events_back_to_the_other() {
    host_leaves_under_load("nats_multi::host_stopped", false);
}

/// Host A, which took the leases first, leaves under load: SIGKILL (`kill`) or SIGTERM.
fn host_leaves_under_load(test: &str, kill: bool) {
    let Some(cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let (dir_a, dir_b) = (host_dir(&cluster, 2000, 5), host_dir(&cluster, 2000, 5));
    let a = start(&dir_a);
    assert!(a.wait_log(DELIVERS, Duration::from_secs(20)), "host A never took a lease");
    let b = start(&dir_b);
    let alive = Arc::new(vec![AtomicBool::new(true), AtomicBool::new(true)]);
    let load = Load::start(targets(&[&a, &b]), alive.clone(), 4, 0);
    load.wait_sent(200);
    // A took the leases first; with the probe sleeping it has events in flight now.
    let before: usize = dir_a.read_lines_lenient("probe.jsonl").len();
    alive[0].store(false, Ordering::SeqCst);
    if kill {
        a.kill();
    } else {
        assert!(a.stop(), "host A did not stop cleanly");
    }
    println!(
        "{test}: host A {} after {before} probe calls",
        if kill { "SIGKILLed" } else { "stopped" }
    );
    load.wait_sent(400 + 200);
    let sent = load.finish();
    assert!(b.wait_log(DELIVERS, CATCH_UP), "host B never took over");
    // Only requests to the killed host may have failed (no answer: not acknowledged).
    let on_b = sent.non_200(Some(1));
    assert!(on_b.is_empty(), "host B answered non-200: {on_b:?}");
    let non_200 = sent.non_200(None).len();
    for line in b.log_text().lines().filter(|l| l.contains("taking over") || l.contains(DELIVERS)) {
        println!("{test}: host B: {line}");
    }
    check_delivery(test, &[&dir_a, &dir_b], &sent, non_200);
    let (by_a, _) = delivered(&[&dir_a], "probe.jsonl");
    let (by_b, _) = delivered(&[&dir_b], "probe.jsonl");
    let acked = sent.acked();
    let taken_over = acked.iter().filter(|f| by_b.contains_key(f) && !by_a.contains_key(f)).count();
    let both = acked.iter().filter(|f| by_b.contains_key(f) && by_a.contains_key(f)).count();
    println!("{test}: host B delivered {taken_over} events A never did, {both} A had started");
    assert!(taken_over > 0, "host B delivered nothing of what A left");
    assert!(b.stop());
}

/// The node leading `B24_EVENTS` (`consumer` `None`, from the stream's info, as `b24-host
/// check` reads it) or its consumer `consumer`.
fn leader(cluster: &NatsCluster, consumer: Option<&str>) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let client = async_nats::connect(cluster.urls()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("B24_EVENTS").await.ok()?;
        let cluster = match consumer {
            Some(name) => stream.consumer_info(name).await.ok()?.cluster.clone(),
            None => stream.info().await.ok()?.cluster.clone(),
        };
        cluster.and_then(|c| c.leader)
    })
}

#[test]
fn the_stream_leader_killed_under_load_costs_no_request_and_loses_nothing() {
    let test = "nats_multi::leader_killed";
    let Some(mut cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let (dir_a, dir_b) = (host_dir(&cluster, 300, 0), host_dir(&cluster, 300, 0));
    let a = start(&dir_a);
    let b = start(&dir_b);
    let alive = Arc::new(vec![AtomicBool::new(true), AtomicBool::new(true)]);
    let load = Load::start(targets(&[&a, &b]), alive, 4, 7);
    load.wait_sent(200);
    let leader_name = eventually(Duration::from_secs(10), || leader(&cluster, None))
        .expect("the stream's leader from the monitor endpoint");
    let leader = cluster.node_named(&leader_name).expect("the leader is one of ours");
    let at_kill = load.sent.len();
    cluster.kill(leader);
    println!("{test}: stream leader {leader_name} SIGKILLed after {at_kill} requests");
    // Through the election (a few seconds) and some more.
    let spooled = eventually(Duration::from_secs(20), || {
        a.log_text().contains("spooling accepted events")
            || b.log_text().contains("spooling accepted events")
    });
    load.wait_sent(at_kill + 600);
    cluster.restart(leader).expect("restart the killed node");
    load.wait_sent(load.sent.len() + 200);
    let sent = load.finish();
    let non_200 = sent.non_200(None);
    assert!(non_200.is_empty(), "requests not answered 200 during the election: {non_200:?}");
    assert!(spooled, "no host spooled during the election");
    {
        let rows = sent.rows.lock().unwrap();
        let body = |prefix: &str| {
            rows.iter()
                .filter(|(_, _, r)| r.as_ref().is_ok_and(|a| a.body.starts_with(prefix)))
                .count()
        };
        // A spooled event is answered "accepted 0": the log numbers it when it is forwarded.
        println!(
            "{test}: {} requests answered from the spool, {} as duplicates by the log",
            body("accepted 0"),
            body("duplicate of")
        );
    }
    let drained = |h: &RunningHost| {
        let log = h.log_text();
        !log.contains("spooling accepted events") || log.contains("the spool is drained")
    };
    // As long as the spools shrink: on a loaded machine forwarding 1,500 events to a cluster
    // that is catching up takes what it takes; a spool that stops shrinking fails the test.
    let spooled = |h: &RunningHost| scrape(h, "b24_journal_spooled_events ").unwrap_or(-1.0) as i64;
    let done =
        eventually_progressing(STALL, || (drained(&a) && drained(&b), (spooled(&a), spooled(&b))));
    let said = |h: &RunningHost| {
        let log = h.log_text();
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains("spool") || l.contains("forward")).collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    };
    assert!(
        done,
        "a spool did not drain (spooled: {}, {}); what A said of it:\n{}\nwhat B said:\n{}",
        spooled(&a),
        spooled(&b),
        said(&a),
        said(&b)
    );
    for (name, host) in [("A", &a), ("B", &b)] {
        let log = host.log_text();
        println!(
            "{test}: host {name} started spooling {} times, drained {} times, saw {} gaps in \
             its deliveries (put back in order)",
            log.matches("spooling accepted events").count(),
            log.matches("the spool is drained").count(),
            log.matches("never reached this host").count()
        );
    }
    check_delivery(test, &[&dir_a, &dir_b], &sent, non_200.len());
    assert!(a.stop() && b.stop(), "the hosts did not stop cleanly");
}

/// The node leading the probe's consumer is SIGKILLed while the probe (slow) has a backlog
/// and messages on the way: deliveries that node had sent may never arrive, and come again
/// only after their ack wait, behind newer ones. The delivering host must still hand the
/// probe every acknowledged event in order (it notices the jump in the consumer's delivery
/// numbers and waits for them), and nothing is lost.
#[test]
fn the_consumer_leader_killed_under_load_keeps_every_plugins_order() {
    let test = "nats_multi::consumer_leader_killed";
    let Some(mut cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let (dir_a, dir_b) = (host_dir(&cluster, 300, 2), host_dir(&cluster, 300, 2));
    let a = start(&dir_a);
    let b = start(&dir_b);
    let alive = Arc::new(vec![AtomicBool::new(true), AtomicBool::new(true)]);
    let load = Load::start(targets(&[&a, &b]), alive, 4, 0);
    load.wait_sent(300);
    let leader_name =
        eventually(Duration::from_secs(10), || leader(&cluster, Some("B24_EVENTS_probe")))
            .expect("the probe consumer's leader from its info");
    let leader = cluster.node_named(&leader_name).expect("the leader is one of ours");
    let at_kill = load.sent.len();
    cluster.kill(leader);
    println!(
        "{test}: the probe consumer's leader {leader_name} SIGKILLed after {at_kill} requests"
    );
    load.wait_sent(at_kill + 400);
    cluster.restart(leader).expect("restart the killed node");
    load.wait_sent(load.sent.len() + 200);
    let sent = load.finish();
    let non_200 = sent.non_200(None);
    assert!(non_200.is_empty(), "requests not answered 200: {non_200:?}");
    for (name, host) in [("A", &a), ("B", &b)] {
        let log = host.log_text();
        println!(
            "{test}: host {name} saw {} gaps in its deliveries (put back in order)",
            log.matches("never reached this host").count()
        );
        for line in log.lines().filter(|l| {
            ["lease", "taking over", "never reached", "consumer's state", "handed on"]
                .iter()
                .any(|k| l.contains(k))
        }) {
            println!("{test}: host {name}: {line}");
        }
    }
    check_delivery(test, &[&dir_a, &dir_b], &sent, non_200.len());
    assert!(a.stop() && b.stop(), "the hosts did not stop cleanly");
}

#[test]
fn a_host_whose_log_never_answers_refuses_to_start_and_says_what_to_check() {
    // No server on this port: the host retries for 30 s, then refuses with what to check.
    let port = free_port();
    let dir = HostDir::new(&["probe"]);
    let journal = format!(
        "[journal]\nbackend = \"nats\"\n\n[journal.nats]\nurls = [\"nats://127.0.0.1:{port}\"]\nreplicas = 1\nack_timeout_ms = 500\n"
    );
    dir.write_config(&format!("{}\n{journal}", config(&["probe"], &probe("", ""))));
    let refused = match dir.start() {
        Ok(_) => panic!("the host started without its log"),
        Err(e) => e,
    };
    assert!(refused.contains("the NATS log is not ready yet"), "no retry line: {refused}");
    assert!(
        refused.contains("cannot set up the NATS log") && refused.contains("journal.nats.urls"),
        "the refusal does not say what to check: {refused}"
    );
}

#[test]
fn events_spooled_before_a_restart_are_forwarded_when_the_host_starts_again() {
    let test = "nats_multi::spool_restart";
    let Some(mut cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let dir = host_dir(&cluster, 300, 0);
    let host = start(&dir);
    let post = |host: &RunningHost, fields: std::ops::Range<u64>| -> Vec<Answer> {
        fields.map(|f| host.post_form(&field_event(f, "UF_CRM_SPOOL"))).collect()
    };
    let before = post(&host, 1000..1020);
    assert!(before.iter().all(|a| a.status == 200), "{before:?}");
    // Two of three nodes gone: no quorum, the log acknowledges nothing; the host spools.
    cluster.kill(1);
    cluster.kill(2);
    let during = post(&host, 1020..1050);
    let non_200 = during.iter().filter(|a| a.status != 200).count();
    let spooled = during.iter().filter(|a| a.body == "accepted 0").count();
    assert_eq!(non_200, 0, "{during:?}");
    assert!(host.wait_log("spooling accepted events", Duration::from_secs(5)));
    assert!(host.stop(), "the host did not stop cleanly");
    let spool = dir.path().join("state/spool/journal.redb");
    assert!(spool.is_file(), "no spool at {}", spool.display());
    cluster.restart(1).expect("restart n2");
    cluster.restart(2).expect("restart n3");
    let again = start(&dir);
    assert!(
        again.wait_log("from an earlier run", Duration::from_secs(5)),
        "the restarted host did not find its spooled events"
    );
    let drained = eventually_progressing(STALL, || {
        let done = again.log_text().contains("the spool is drained");
        (done, scrape(&again, "b24_journal_spooled_events ").unwrap_or(-1.0) as i64)
    });
    assert!(drained, "the spool did not drain:\n{}", again.log_text());
    let sent = Sent::default();
    for (f, a) in (1000..1050).zip(before.into_iter().chain(during)) {
        sent.rows.lock().unwrap().push((f, 0, Ok(a)));
    }
    println!("{test}: {spooled} events spooled before the restart");
    check_delivery(test, &[&dir], &sent, non_200);
    assert!(again.stop());
}
