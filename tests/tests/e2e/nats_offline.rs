//! Offline events with several hosts on one NATS log: one host at a time polls a portal (the
//! lease `offline.<member>`), and an `ONOFFLINEEVENT` that reaches the other host still wakes
//! the poller at once, through the log's connection.

use std::{collections::BTreeSet, time::Duration};

use b24_tests::{
    fake_portal::{FakePortal, PortalOptions},
    nats::{NatsOptions, cluster_or_skip},
};

use crate::{
    offline::{delivered, offline_config, offline_status, push_rows},
    support::*,
};

#[test]
fn an_onofflineevent_through_the_host_not_polling_wakes_the_poller_on_the_other() {
    let test = "nats_offline::wake_across_hosts";
    let Some(cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else { return };
    let portal = FakePortal::start(PortalOptions::default());
    // Polls once when it gets the tokens, then only every 10 minutes: a row that arrives in
    // time came because something woke the poller.
    let host_dir = || {
        let dir = HostDir::new(&["probe"]);
        let offline = offline_config(&portal, 600_000, &["probe"], "", "");
        dir.write_config(&format!("{offline}\n{}", cluster.journal_toml(3, 1000)));
        dir
    };
    let (dir_a, dir_b) = (host_dir(), host_dir());
    let a = start(&dir_a);
    post_app_install(&a, &portal);
    let polled = |dir: &HostDir| offline_status(dir)["last_poll_ms"].is_number();
    assert!(
        eventually(PATIENCE, || polled(&dir_a)),
        "host A never polled: {}",
        offline_status(&dir_a)
    );
    let b = start(&dir_b);
    // B sees A hold the portal's poller lease, and does not poll itself.
    let holder = eventually(PATIENCE, || {
        offline_status(&dir_b)["poller"].as_str().filter(|p| !p.is_empty()).map(str::to_owned)
    })
    .expect("host B names the portal's poller");
    println!(
        "{test}: the portal's poller is {holder}; host B's status: {}",
        offline_status(&dir_b)
    );
    assert!(!polled(&dir_b), "host B polled although A holds the lease");

    let rows = push_rows(&portal, 3, 700);
    let mut nudge = args("ONOFFLINEEVENT");
    nudge.system = true;
    let sent = std::time::Instant::now();
    assert_eq!(b.post_form(&form(&nudge)).status, 200);
    let got =
        || -> BTreeSet<String> { delivered(&dir_a).into_iter().chain(delivered(&dir_b)).collect() };
    assert!(
        eventually(Duration::from_secs(30), || got() == rows),
        "the rows did not arrive after the wake-up through B: {:?} of {rows:?}",
        got()
    );
    println!(
        "{test}: {} rows delivered {} ms after the ONOFFLINEEVENT reached host B",
        rows.len(),
        sent.elapsed().as_millis()
    );
    assert!(!polled(&dir_b), "host B polled although A holds the lease");
    assert!(a.stop() && b.stop(), "the hosts did not stop cleanly");
}
