//! SIGKILL in a tight loop: the host is killed again and again, tens of milliseconds after each
//! start, while clients post without pause, so that kills land inside the write-ahead log's
//! group commit, between it and the tables' transactions, during a checkpoint, during the
//! replay at the start. Every event that got a 200 must reach every plugin. And a SIGKILL
//! the moment a 200 is read: the event is in the write-ahead log alone (the tables follow
//! later), and the next start delivers it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::support::*;

/// Kills in the loop.
const KILLS: usize = 25;

#[test]
fn sigkills_in_a_tight_loop_lose_no_acknowledged_event() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let addr = format!("127.0.0.1:{}", free_port());
    let launch = Launch { listen: Some(addr.clone()), ..Launch::default() };

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6u64)
        .map(|client| {
            let (acked, stop, addr) = (acked.clone(), stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let field_id = client * 1_000_000 + n;
                    let body = field_event(field_id, "UF_CRM_KILLED_AGAIN");
                    match try_request(
                        &addr,
                        "POST",
                        "/b24/events",
                        Some("application/x-www-form-urlencoded"),
                        body.as_bytes(),
                    ) {
                        Ok(answer) if answer.status == 200 => {
                            acked.lock().unwrap().insert(field_id);
                            n += 1;
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();

    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    eprintln!("crash loop seed {seed}");
    let mut host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut acked_before = 0;
    for kill in 1..=KILLS {
        // Wait until this host acknowledged something (at most a few seconds), then kill it
        // a random few tens of milliseconds later.
        let progressed = eventually(PATIENCE * 3, || acked.lock().unwrap().len() > acked_before);
        assert!(progressed, "no event acknowledged after restart {}", kill - 1);
        std::thread::sleep(Duration::from_millis(next_random(&mut seed) % 80));
        acked_before = acked.lock().unwrap().len();
        host.kill();
        host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("restart {kill}: {e}"));
    }
    let progressed = eventually(PATIENCE * 3, || acked.lock().unwrap().len() > acked_before);
    assert!(progressed, "no event acknowledged after the last restart");
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let drained = eventually(Duration::from_secs(120), || {
        dir.stats().values().all(|(backlog, _, dead)| *backlog == 0 && *dead == 0)
    });
    assert!(drained, "plugins left with a backlog: {:?}\n{}", dir.stats(), tail(&host.log_text()));
    let field_ids = |file: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> BTreeSet<u64> {
        dir.read_lines_lenient(file)
            .iter()
            .filter(|l| pred(l))
            .filter_map(|l| l["field_id"].as_u64())
            .collect()
    };
    let audit = field_ids("audit.jsonl", &|_| true);
    let probe = field_ids("probe.jsonl", &|l| l["kind"] == "user_field");
    let lost_audit: Vec<_> = acked.difference(&audit).collect();
    let lost_probe: Vec<_> = acked.difference(&probe).collect();
    eprintln!(
        "crash loop: {} acknowledged across {KILLS} SIGKILLs; audit-log {} distinct, probe {}",
        acked.len(),
        audit.len(),
        probe.len()
    );
    assert!(
        lost_audit.is_empty(),
        "audit-log lost {}: {:?}",
        lost_audit.len(),
        &lost_audit[..lost_audit.len().min(10)]
    );
    assert!(
        lost_probe.is_empty(),
        "probe lost {}: {:?}",
        lost_probe.len(),
        &lost_probe[..lost_probe.len().min(10)]
    );
    assert!(host.stop());
}

/// Each event is posted alone and the host SIGKILLed as soon as its 200 is read, before the
/// writer's next transaction could take it into the tables: the next start replays it from
/// the write-ahead log, and the plugin gets every one.
#[test]
fn a_sigkill_right_after_the_200_loses_nothing() {
    const ROUNDS: u64 = 6;
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let mut acked = BTreeSet::new();
    for field_id in 0..ROUNDS {
        let host = start(&dir);
        let answer = host.post_form(&field_event(field_id, "UF_CRM_KILLED"));
        assert_eq!(answer.status, 200, "{answer:?}");
        host.kill();
        acked.insert(field_id);
    }
    let host = start(&dir);
    let probed = || -> BTreeSet<u64> {
        dir.read_lines_lenient("probe.jsonl")
            .iter()
            .filter(|l| l["kind"] == "user_field")
            .filter_map(|l| l["field_id"].as_u64())
            .collect()
    };
    let all = eventually(PATIENCE * 3, || acked.is_subset(&probed()));
    assert!(all, "acknowledged {acked:?}, delivered {:?}:\n{}", probed(), host.log_text());
    assert!(host.stop());
}

/// The last lines of a log, enough to say why a plugin stopped.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
