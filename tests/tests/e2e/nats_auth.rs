//! Auth across hosts on one NATS log (issue 12): an application token learned through one
//! host (a verified ONAPPINSTALL) is accepted by another at once, and an uninstall through one
//! is honoured by the other.

use b24_tests::nats::cluster_or_skip;

use crate::auth::{
    PORTAL, PORTAL_TOKEN, event_of, install_of, learning_config, oauth_portal, rest_table,
};
use crate::support::*;

#[test]
fn a_token_learned_through_one_host_is_accepted_by_the_other_and_an_uninstall_reaches_both() {
    let Some(cluster) = cluster_or_skip("nats_auth", 3, Default::default()) else { return };
    let portal = oauth_portal(PORTAL);
    let journal = cluster.journal_toml(3, 1000);
    let dirs: Vec<HostDir> = (0..2)
        .map(|_| {
            let dir = HostDir::new(&["audit-log"]);
            let text = learning_config(&["audit-log"], "", &rest_table(&portal));
            dir.write_config(&format!("{text}\n{journal}"));
            dir
        })
        .collect();
    let a = start(&dirs[0]);
    let b = start(&dirs[1]);
    let field = || event_of("ONCRMDEALUSERFIELDADD", PORTAL, PORTAL_TOKEN);

    // Unknown to both before the install.
    assert_eq!(b.post_form(&field()).status, 401);

    // Learned through A: B accepts the portal's events at once (one fresh read before a 401,
    // whatever its watcher has seen yet).
    let install = install_of(PORTAL, PORTAL_TOKEN, portal.initial_oauth(), &portal);
    let answer = a.post_form(&install);
    assert_eq!(answer.status, 200, "{answer:?}\n{}", a.log_text());
    let answer = b.post_form(&field());
    assert_eq!(answer.status, 200, "{answer:?}\n{}", b.log_text());
    assert_eq!(a.post_form(&field()).status, 200);
    // One verification for the install, on A only.
    assert_eq!(portal.refreshes().len(), 1, "{:?}", portal.refreshes());

    // Uninstalled through B: A refuses the token from then on (its watcher removes it).
    assert_eq!(b.post_form(&event_of("ONAPPUNINSTALL", PORTAL, PORTAL_TOKEN)).status, 200);
    let refused =
        eventually(std::time::Duration::from_secs(10), || a.post_form(&field()).status == 401);
    assert!(refused, "host A still accepts the uninstalled portal's token\n{}", a.log_text());
    assert_eq!(b.post_form(&field()).status, 401);
    assert!(a.stop() && b.stop());
}

/// On NATS the pair is stored before the log can tell a repeat: the stored pair's install key
/// tells it (a repeat used to store its spent pair over the refreshed one), for an install of
/// a configured portal and for one the host verified (whose own refresh token it spent).
#[test]
fn a_repeated_install_keeps_the_refreshed_pair_on_nats() {
    let Some(cluster) = cluster_or_skip("nats_auth_repeat", 3, Default::default()) else { return };
    for learning in [false, true] {
        crate::tokens::a_repeated_install_keeps_the_refreshed_pair(
            &cluster.journal_toml(3, 1000),
            learning,
        );
    }
}
