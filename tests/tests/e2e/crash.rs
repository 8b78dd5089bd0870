//! The crash test: events from several concurrent clients while the host is killed with SIGKILL
//! at random moments and restarted. Every event that got a 200 must reach every plugin.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::support::*;

#[test]
fn every_acknowledged_event_reaches_every_plugin_across_sigkills() {
    crash_test(4, 750, 5);
}

crate::in_process_too!(every_acknowledged_event_reaches_every_plugin_across_sigkills);

/// The large variant: 10,000 acknowledged events, a random number of SIGKILLs (4 to 9) at random
/// moments. Runners only (the default isolation): the in-process variant above covers the rest.
#[test]
fn ten_thousand_acknowledged_events_survive_random_sigkills() {
    let mut seed = seed();
    let kills = 4 + (next_random(&mut seed) % 6) as usize;
    crash_test(8, 1_250, kills);
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        | 1
}

/// `clients` concurrent clients send `per_client` events each, retrying until they hear 200,
/// while the host is SIGKILLed up to `max_kills` times at random moments and restarted; then every
/// acknowledged event must have reached both plugins.
fn crash_test(clients: u64, per_client: u64, max_kills: usize) {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let addr = format!("127.0.0.1:{}", free_port());
    let launch = Launch { listen: Some(addr.clone()), ..Launch::default() };
    let path = "/b24/events";

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let acked = acked.clone();
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                for n in 0..per_client {
                    let field_id = client * 1_000_000 + n;
                    let body = field_event(field_id, "UF_CRM_CRASH");
                    // Like a sender that retries until it hears 200 (Bitrix24 does not, which
                    // is why the host must never lose what it acknowledged).
                    loop {
                        sent += 1;
                        match try_request(
                            &addr,
                            "POST",
                            path,
                            Some("application/x-www-form-urlencoded"),
                            body.as_bytes(),
                        ) {
                            Ok(answer) if answer.status == 200 => {
                                acked.lock().unwrap().insert(field_id);
                                break;
                            }
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                }
                sent
            })
        })
        .collect();

    let mut seed = seed();
    eprintln!(
        "crash test seed {seed}: {clients} clients x {per_client} events, {max_kills} SIGKILLs"
    );
    let mut kills = 0;
    let mut host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("{e}"));
    while kills < max_kills {
        // Spread the kills over the load: at least 200 ms apart, never after the last event.
        std::thread::sleep(Duration::from_millis(200 + next_random(&mut seed) % 600));
        if acked.lock().unwrap().len() as u64 >= clients * per_client {
            break;
        }
        host.kill();
        kills += 1;
        host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("restart {kills}: {e}"));
    }
    let sent: u64 = threads.into_iter().map(|c| c.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, clients * per_client);

    // The last host delivers whatever is left.
    let drained = eventually(Duration::from_secs(60), || {
        dir.stats().values().all(|(backlog, _, dead)| *backlog == 0 && *dead == 0)
    });
    assert!(drained, "plugins left with a backlog: {:?}", dir.stats());

    let field_ids = |file: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> Vec<u64> {
        dir.read_lines_lenient(file)
            .iter()
            .filter(|l| pred(l))
            .filter_map(|l| l["field_id"].as_u64())
            .collect()
    };
    let audit = field_ids("audit.jsonl", &|_| true);
    let probe = field_ids("probe.jsonl", &|l| l["kind"] == "user_field");
    let audit_set: BTreeSet<u64> = audit.iter().copied().collect();
    let probe_set: BTreeSet<u64> = probe.iter().copied().collect();
    let lost_audit: Vec<_> = acked.difference(&audit_set).collect();
    let lost_probe: Vec<_> = acked.difference(&probe_set).collect();
    eprintln!(
        "crash test: {sent} requests sent, {} acknowledged, {kills} SIGKILLs; audit-log got {} calls ({} distinct), probe {} ({} distinct)",
        acked.len(),
        audit.len(),
        audit_set.len(),
        probe.len(),
        probe_set.len()
    );
    assert!(
        lost_audit.is_empty(),
        "audit-log lost {} acknowledged events: {:?}",
        lost_audit.len(),
        &lost_audit[..lost_audit.len().min(10)]
    );
    assert!(
        lost_probe.is_empty(),
        "probe lost {} acknowledged events: {:?}",
        lost_probe.len(),
        &lost_probe[..lost_probe.len().min(10)]
    );
    assert!(host.stop());
}
