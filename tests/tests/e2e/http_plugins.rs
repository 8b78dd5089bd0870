//! http plugins (`kind = "http"`) end to end, against a real local HTTP server that records
//! every request (`b24_tests::http_target`): the body byte for byte (the application token
//! put back, the refresh token blank), the Standard Webhooks headers and a signature checked
//! with an independent HMAC, 2xx done; 500 for a while, 429 with Retry-After, a hanging target,
//! reset connections, a target that is down and comes back, each under a steady stream of
//! posts with none refused and every event delivered in order; 404 a dead letter with the
//! status and the answer; the NATS backend.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use b24_tests::http_target::{HttpTarget, Received, Reply, ok};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};

use crate::support::*;

/// Faults need retries with back-off: more patience.
const FAULT_PATIENCE: Duration = Duration::from_secs(90);

/// The signing secret of the tests, as Standard Webhooks writes one.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `[plugin.fw]` table forwarding to `url`, with `keys`.
fn fw(url: &str, keys: &str) -> String {
    format!(
        "[plugin.fw]\nkind = \"http\"\nurl = \"{url}\"\nevents = [\"ONCRM*\"]\ntimeout_ms = 2000\n{keys}\n[plugin.fw.retry]\nattempts = 20\nbase_ms = 50\ncap_ms = 500\n"
    )
}

fn http_dir(extra: &str) -> HostDir {
    let dir = HostDir::new(&[]);
    dir.write_config(&config(&["fw"], extra));
    dir
}

/// The field id (`data[FIELDS][ID]`) of a forwarded form body.
fn field_id(request: &Received) -> Option<u64> {
    let body = String::from_utf8_lossy(&request.body);
    body.split('&')
        .find_map(|pair| pair.strip_prefix("data%5BFIELDS%5D%5BID%5D="))
        .and_then(|v| v.parse().ok())
}

/// Every request's field id, in arrival order.
fn field_ids(target: &HttpTarget) -> Vec<u64> {
    target.received().iter().filter_map(field_id).collect()
}

/// Posts field `id` named `name`; its journal id.
fn post(host: &RunningHost, id: u64, name: &str) -> u64 {
    let answer = host.post_form(&field_event(id, name));
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body.trim_start_matches("accepted ").parse().unwrap()
}

/// Runs a steady stream of posts while `during` runs, then checks that none was refused and
/// that the target got every accepted event, the first time each in the order accepted.
fn under_load(
    what: &str,
    dir: &HostDir,
    host: &RunningHost,
    target: &HttpTarget,
    during: impl FnOnce(),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, path, stop) = (host.addr.clone(), host.path.clone(), stop.clone());
        std::thread::spawn(move || steady_client(addr, path, stop))
    };
    during();
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = client.join().unwrap();
    assert_eq!(refused, 0, "{what}: {refused} requests were refused");
    assert!(acked.len() > 5, "{what}: only {} posts", acked.len());
    let wanted: BTreeSet<u64> = acked.iter().copied().collect();
    let arrived = eventually(FAULT_PATIENCE, || {
        let got: BTreeSet<u64> = field_ids(target).into_iter().collect();
        wanted.is_subset(&got)
    });
    let received = field_ids(target);
    assert!(arrived, "{what}: not every accepted event reached the target:\n{}", host.log_text());
    // In order: the first arrival of each event follows the order the host accepted them.
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> =
        received.iter().copied().filter(|id| *id >= 10_000 && seen.insert(*id)).collect();
    assert_eq!(firsts, acked, "{what}: events arrived out of order");
    eprintln!(
        "http fault {what}: posts {}, refused 0, delivered {}, requests {}, dead letters {}",
        acked.len(),
        seen.len(),
        received.len(),
        dead_letters(dir, "fw").len()
    );
}

#[test]
fn an_http_plugin_forwards_the_body_bitrix24_sent_signed_as_standard_webhooks_say() {
    let target = HttpTarget::start(0, |_, _| ok());
    let json = HttpTarget::start(0, |_, _| Reply::Status(204, Vec::new(), String::new()));
    let extra = format!(
        "{}\n[plugin.fj]\nkind = \"http\"\nurl = \"{}\"\nevents = [\"ONCRM*\"]\nformat = \"json\"\n",
        fw(&target.url("/bitrix/handler.php"), &format!("secret = \"{SECRET}\"")),
        json.url("/json"),
    );
    let dir = HostDir::new(&[]);
    dir.write_config(&config(&["fw", "fj"], &extra));
    let host = start(&dir);
    let mut a = args("ONCRMDEALUSERFIELDUPDATE");
    a.refresh_token = Some("RT-never-forwarded".to_owned());
    let body = form(&a);
    let id = host.post_form(&body).body.trim_start_matches("accepted ").parse::<u64>().unwrap();
    assert!(eventually(PATIENCE, || !target.received().is_empty() && !json.received().is_empty()));
    let got = &target.received()[0];
    // Byte for byte what Bitrix24 sent, but the refresh token (the host keeps the pair).
    let expected = body.replace("RT-never-forwarded", "");
    assert_eq!(String::from_utf8_lossy(&got.body), expected);
    assert!(expected.contains(&format!("auth%5Bapplication_token%5D={TOKEN}")));
    assert_eq!(got.path, "/bitrix/handler.php");
    assert_eq!(got.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(got.header("webhook-id"), Some(id.to_string().as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    let timestamp = got.header("webhook-timestamp").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    assert!((now - timestamp.parse::<i64>().unwrap()).abs() < 300);
    // Verified as a receiver would: HMAC-SHA256 of id.timestamp.body with the decoded secret.
    let key = STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&got.body);
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(got.header("webhook-signature"), Some(signature.as_str()));
    // The JSON format: the exec protocol's event object, unsigned without a secret.
    let sent = &json.received()[0];
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert!(sent.header("webhook-signature").is_none());
    let event: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(event["event_id"], id);
    assert_eq!(event["id"], id.to_string());
    assert_eq!(event["data"]["FIELDS"]["ID"], "554");
    assert!(!String::from_utf8_lossy(&sent.body).contains(TOKEN));
    // Done: nothing pending, no dead letter.
    assert!(eventually(PATIENCE, || dir.stats().values().all(|s| s.0 == 0)), "{:?}", dir.stats());
}

#[test]
fn an_http_target_answering_500_for_a_while_gets_every_event_in_order() {
    let target = HttpTarget::start(0, |_, n| {
        if n < 15 { Reply::Status(500, Vec::new(), "down".into()) } else { ok() }
    });
    let dir = http_dir(&fw(&target.url("/h"), ""));
    let host = start(&dir);
    under_load("500 for a while", &dir, &host, &target, || {
        assert!(eventually(FAULT_PATIENCE, || target.received().len() > 20));
    });
    assert!(dead_letters(&dir, "fw").is_empty());
}

#[test]
fn an_http_target_answering_429_is_asked_again_no_sooner_than_retry_after() {
    let target = HttpTarget::start(0, |_, n| {
        if n == 0 {
            Reply::Status(429, vec![("retry-after".into(), "2".into())], "slow down".into())
        } else {
            ok()
        }
    });
    let dir = http_dir(&fw(&target.url("/h"), ""));
    let host = start(&dir);
    post(&host, 1, "UF_CRM_ONE");
    assert!(eventually(PATIENCE, || target.received().len() >= 2), "{}", host.log_text());
    let got = target.received();
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(1900), "asked again after {waited:?}");
    assert_eq!(got[1].header("webhook-attempt"), Some("2"));
}

#[test]
fn an_http_target_answering_404_makes_a_dead_letter_with_the_status_and_the_answer() {
    let target = HttpTarget::start(0, |r, _| {
        if field_id(r) == Some(1) {
            Reply::Status(404, Vec::new(), format!("no such page {}", "x".repeat(3000)))
        } else {
            ok()
        }
    });
    let dir = http_dir(&fw(&target.url("/h"), ""));
    let host = start(&dir);
    let id = post(&host, 1, "UF_CRM_ONE");
    post(&host, 2, "UF_CRM_TWO");
    assert!(eventually(PATIENCE, || field_ids(&target).contains(&2)));
    let dead = dead_letters(&dir, "fw");
    assert_eq!(dead.len(), 1, "{dead:?}\n{}", host.log_text());
    assert_eq!(dead[0].0, id);
    assert!(dead[0].1.contains("HTTP 404: no such page xxx"), "{dead:?}");
    assert!(dead[0].1.len() < 1200, "the dead letter keeps only the answer's start");
    assert_eq!(field_ids(&target).iter().filter(|f| **f == 1).count(), 1, "a 404 is not retried");
}

#[test]
fn an_http_target_that_hangs_times_out_and_is_asked_again() {
    let target = HttpTarget::start(0, |_, n| if n < 2 { Reply::Hang } else { ok() });
    let dir = http_dir(&fw(&target.url("/h"), ""));
    let host = start(&dir);
    under_load("hang", &dir, &host, &target, || {
        assert!(eventually(FAULT_PATIENCE, || target.received().len() > 10));
    });
    assert!(host.log_text().contains("no answer within timeout_ms"));
}

#[test]
fn an_http_target_that_resets_connections_is_asked_again() {
    let target = HttpTarget::start(0, |_, n| if n < 8 { Reply::Reset } else { ok() });
    let dir = http_dir(&fw(&target.url("/h"), ""));
    let host = start(&dir);
    under_load("reset", &dir, &host, &target, || {
        assert!(eventually(FAULT_PATIENCE, || target.received().len() > 15));
    });
}

#[test]
fn events_wait_for_an_http_target_that_is_down_and_all_arrive_when_it_is_back() {
    let port = free_port();
    // Few attempts: a target that cannot be reached uses none of them.
    let table =
        fw(&format!("http://127.0.0.1:{port}/h"), "").replace("attempts = 20", "attempts = 2");
    let dir = http_dir(&table);
    let host = start(&dir);
    let slot: Arc<std::sync::Mutex<Option<HttpTarget>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, path, stop) = (host.addr.clone(), host.path.clone(), stop.clone());
        std::thread::spawn(move || steady_client(addr, path, stop))
    };
    // Down: events wait in the journal (the backlog shows), none is given up.
    assert!(
        eventually(FAULT_PATIENCE, || dir.stats().get("fw").is_some_and(|s| s.0 >= 20)),
        "no backlog built up: {:?}",
        dir.stats()
    );
    assert!(host.log_text().contains("cannot be reached"));
    *slot.lock().unwrap() = Some(HttpTarget::start(port, |_, _| ok()));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = client.join().unwrap();
    assert_eq!(refused, 0);
    let guard = slot.lock().unwrap();
    let target = guard.as_ref().unwrap();
    let wanted: BTreeSet<u64> = acked.iter().copied().collect();
    let arrived =
        eventually(FAULT_PATIENCE, || wanted.is_subset(&field_ids(target).into_iter().collect()));
    assert!(arrived, "not everything arrived after the target came back:\n{}", host.log_text());
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = field_ids(target).into_iter().filter(|id| seen.insert(*id)).collect();
    assert_eq!(firsts, acked, "out of order");
    assert!(dead_letters(&dir, "fw").is_empty(), "an event was given up while the target was down");
    eprintln!(
        "http fault down: posts {}, refused 0, delivered {}, dead letters 0",
        acked.len(),
        seen.len()
    );
}

#[test]
fn an_http_plugin_delivers_on_the_nats_backend() {
    use b24_tests::nats::{NatsOptions, cluster_or_skip};
    let Some(cluster) =
        cluster_or_skip("an_http_plugin_delivers_on_the_nats_backend", 3, NatsOptions::default())
    else {
        return;
    };
    let target = HttpTarget::start(0, |_, n| {
        if n < 5 { Reply::Status(503, Vec::new(), "busy".into()) } else { ok() }
    });
    let dir =
        http_dir(&format!("{}\n{}", fw(&target.url("/h"), ""), cluster.journal_toml(3, 1000)));
    let host = start(&dir);
    under_load("nats", &dir, &host, &target, || {
        assert!(eventually(FAULT_PATIENCE, || target.received().len() > 15));
    });
}

#[test]
fn an_http_plugin_with_concurrency_keeps_that_many_requests_in_flight_and_delivers_every_event() {
    use std::sync::{Condvar, Mutex};
    const WIDE: usize = 4;
    // Each request is held until WIDE are in flight at once: the target's own count is the
    // proof. A host sending one at a time makes the first wait out the patience, and then no
    // request waits any more (the test fails on the count, not by running for hours).
    // (in flight, most in flight at once, gave up)
    let gate = Arc::new((Mutex::new((0usize, 0usize, false)), Condvar::new()));
    let held = gate.clone();
    let target = HttpTarget::start(0, move |_, _| {
        let (lock, wake) = &*held;
        let mut state = lock.lock().unwrap();
        state.0 += 1;
        state.1 = state.1.max(state.0);
        wake.notify_all();
        let (mut state, waited) =
            wake.wait_timeout_while(state, FAULT_PATIENCE, |s| s.1 < WIDE && !s.2).unwrap();
        if waited.timed_out() {
            state.2 = true;
        }
        state.0 -= 1;
        ok()
    });
    let dir = http_dir(&fw(&target.url("/h"), &format!("concurrency = {WIDE}")));
    let host = start(&dir);
    let accepted: BTreeSet<u64> = (0..40).map(|i| post(&host, 20_000 + i, "UF_CRM_WIDE")).collect();
    assert_eq!(accepted.len(), 40);
    let wanted: BTreeSet<u64> = (0..40).map(|i| 20_000 + i).collect();
    // (A request held past `timeout_ms` on a loaded machine is sent again: at least once.)
    let wide = eventually(FAULT_PATIENCE, || gate.0.lock().unwrap().1 >= WIDE);
    let most = gate.0.lock().unwrap().1;
    assert!(wide, "at most {most} requests were in flight at once, not {WIDE}");
    let all_arrived = || field_ids(&target).into_iter().collect::<BTreeSet<_>>() == wanted;
    assert!(
        eventually(FAULT_PATIENCE, all_arrived),
        "not every event reached the target:\n{}",
        host.log_text()
    );
}
