//! Exec plugins (`kind = "exec"`) end to end, with the exec probe (`tests/plugins/exec/probe.py`,
//! a Python program speaking the JSON-lines protocol): what it receives and how its answers
//! decide the journal, its REST calls through the host, its log lines, settings in `hello`,
//! its environment; faults under a steady stream of posts (an exit mid-event, a hang, floods,
//! garbage and a 50 MB line on stdout, no `ready`, an exit at start); the window; shutdown, a
//! SIGKILLed host, a live reload; and the NATS backend.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use b24_tests::fake_portal::{FakePortal, PortalOptions};
use serde_json::Value;

use crate::support::*;

/// Faults need crashes and restarts with back-off: more patience.
const FAULT_PATIENCE: Duration = Duration::from_secs(90);

/// The Python the probe runs with: the system's, where there is one (a version manager's shim
/// adds variables of its own to the environment).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

/// The `[plugin.xp]` tables: the exec probe with `host_keys` and `settings`.
fn xp(name: &str, host_keys: &str, settings: &str) -> String {
    let python = python();
    format!(
        "[plugin.{name}]\nkind = \"exec\"\ncommand = [\"{python}\", \"probe.py\"]\nevents = [\"ONCRM*\"]\n{host_keys}\n[plugin.{name}.retry]\nattempts = 3\nbase_ms = 10\ncap_ms = 50\n\n[plugin.{name}.settings]\nrecord = \"{name}.jsonl\"\n{settings}\n"
    )
}

/// A host folder with the exec probe's script and a config enabling `plugins` (with `extra`).
fn exec_dir(plugins: &[&str], extra: &str) -> HostDir {
    let dir = HostDir::new(&[]);
    std::fs::copy(
        workspace_root().join("tests/plugins/exec/probe.py"),
        dir.path().join("probe.py"),
    )
    .expect("cannot copy the exec probe");
    dir.write_config(&config(plugins, extra));
    dir
}

/// The probe's record lines of `kind`.
fn records(dir: &HostDir, plugin: &str, kind: &str) -> Vec<Value> {
    dir.read_lines_lenient(&format!("{plugin}.jsonl"))
        .into_iter()
        .filter(|l| l["kind"] == kind)
        .collect()
}

/// (field id, attempt) of each event the probe got, in order.
fn calls(dir: &HostDir, plugin: &str) -> Vec<(u64, u64)> {
    records(dir, plugin, "event")
        .iter()
        .map(|l| (l["field_id"].as_u64().unwrap_or(0), l["attempt"].as_u64().unwrap_or(0)))
        .collect()
}

/// Posts one user-field event named `name` for field `id`; its journal id.
fn post(host: &RunningHost, id: u64, name: &str) -> u64 {
    let answer = host.post_form(&field_event(id, name));
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body.trim_start_matches("accepted ").parse().unwrap()
}

/// A steady stream of posts to `host` until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    client: JoinHandle<(Vec<u64>, u64)>,
}

impl Stream {
    fn start(host: &RunningHost) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, path, flag) = (host.addr.clone(), host.path.clone(), stop.clone());
        let client = std::thread::spawn(move || steady_client(addr, path, flag));
        Stream { stop, client }
    }

    /// Stops the posts; the field ids accepted, after checking none was refused.
    fn finish(self, what: &str) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let (acked, refused) = self.client.join().unwrap();
        assert_eq!(refused, 0, "{what}: {refused} requests were refused during the fault");
        assert!(acked.len() > 5, "{what}: the client posted only {} events", acked.len());
        acked
    }
}

/// Waits until the probe `plugin` got every field id of `ids`; the ones it got.
fn wait_for_all(dir: &HostDir, plugin: &str, ids: &[u64]) -> BTreeSet<u64> {
    let wanted: BTreeSet<u64> = ids.iter().copied().collect();
    eventually(FAULT_PATIENCE, || {
        let got: BTreeSet<u64> = calls(dir, plugin).into_iter().map(|(f, _)| f).collect();
        wanted.is_subset(&got).then_some(got)
    })
    .unwrap_or_else(|| calls(dir, plugin).into_iter().map(|(f, _)| f).collect())
}

#[test]
fn an_exec_plugin_gets_its_events_in_order_and_its_answers_decide_the_journal() {
    let extra = xp(
        "xp",
        "env = { B24_DEBUG = \"1\", API_KEY = { env = \"HOME\" } }\n",
        "greeting = \"hello\"\n[plugin.xp.settings.nested]\nn = 3\n",
    );
    let dir = exec_dir(&["xp"], &extra);
    let host = start(&dir);
    let names = ["UF_CRM_A", "UF_SKIP", "UF_RETRY_2", "UF_REJECT", "UF_LOG", "UF_CRM_B"];
    let ids: Vec<u64> =
        names.iter().enumerate().map(|(i, n)| post(&host, i as u64 + 1, n)).collect();
    let got = eventually(PATIENCE, || {
        let c = calls(&dir, "xp");
        (c.len() >= 7).then_some(c)
    })
    .unwrap_or_else(|| panic!("the probe got {:?}\n{}", calls(&dir, "xp"), host.log_text()));
    // In journal order; the retried event holds the later ones back until it is done.
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (3, 2), (4, 1), (5, 1), (6, 1)]);

    let hello = &records(&dir, "xp", "hello")[0];
    assert_eq!(hello["hello"]["type"], "hello");
    assert_eq!(hello["hello"]["protocol"], 1);
    assert_eq!(hello["hello"]["plugin"], "xp");
    assert_eq!(hello["hello"]["settings"]["greeting"], "hello");
    assert_eq!(hello["hello"]["settings"]["nested"]["n"], 3);
    // Nothing inherited but PATH, HOME and LANG, plus its own env table.
    let env = hello["env"].as_object().unwrap();
    assert_eq!(env["B24_DEBUG"], "1");
    assert_eq!(env["API_KEY"], std::env::var("HOME").unwrap().as_str());
    let allowed = ["PATH", "HOME", "LANG", "B24_DEBUG", "API_KEY", "MALLOC_ARENA_MAX", "LC_CTYPE"];
    let foreign: Vec<&String> = env.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
    assert!(foreign.is_empty(), "inherited from the host: {foreign:?}");

    // The event as the protocol says, without the application or refresh token.
    let event = &records(&dir, "xp", "event")[0]["event"];
    assert_eq!(event["type"], "event");
    assert_eq!(event["event_id"], ids[0]);
    assert_eq!(event["attempt"], 1);
    assert_eq!(event["code"], "ONCRMDEALUSERFIELDUPDATE");
    assert_eq!(event["origin"], "online");
    assert_eq!(event["portal"]["member_id"], MEMBER);
    assert_eq!(event["portal"]["domain"], "some-domain.bitrix24.com");
    assert_eq!(event["data"]["FIELDS"]["FIELD_NAME"], "UF_CRM_A");
    assert_eq!(event["data"]["FIELDS"]["ID"], "1");
    assert_eq!(
        (event["entity"].as_str(), event["action"].as_str()),
        (Some("CRM_DEAL"), Some("UPDATE"))
    );
    assert_eq!(
        (event["field_id"].as_u64(), event["field_name"].as_str()),
        (Some(1), Some("UF_CRM_A"))
    );
    assert!(event["ts"].is_i64() && event["user"] == 1 && event["access_token"].is_string());
    let text = std::fs::read_to_string(dir.path().join("xp.jsonl")).unwrap();
    assert!(!text.contains(TOKEN), "the application token reached the plugin");
    assert!(event.get("auth").is_none() && event.get("refresh_token").is_none());

    // The journal: the rejected event is a dead letter, everything else is done.
    let dead = dead_letters(&dir, "xp");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, ids[3]);
    assert!(dead[0].1.contains("rejected by the probe"), "{dead:?}");
    let stats = dir.stats();
    assert_eq!(stats.get("xp").map(|s| s.0), Some(0), "{stats:?}");
    // Its log lines, under its name.
    for level in ["error", "warn", "info"] {
        let line = format!("probe {level} line of event {}", ids[4]);
        assert!(host.wait_log(&line, PATIENCE), "no log line {line:?}:\n{}", host.log_text());
    }
}

#[test]
fn an_exec_plugins_rest_call_reaches_the_portal_in_its_events_context() {
    let portal = FakePortal::start(PortalOptions::default());
    let options = portal.options();
    let dir = exec_dir(&["xp"], &xp("xp", "", ""));
    dir.write_config(&format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n",
        config(&["xp"], &xp("xp", "", "")),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    ));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let field = portal.add_field("CRM_DEAL", "UF_CRM_EXEC", "string", Vec::new());
    let mut a = args("ONCRMDEALUSERFIELDUPDATE");
    a.field_id = field;
    a.field_name = "UF_REST".to_owned();
    a.system = true;
    a.client_endpoint = Some(portal.client_endpoint());
    a.domain = portal.domain();
    assert_eq!(host.post_form(&form(&a)).status, 200);
    let answers = eventually(PATIENCE, || {
        let r = records(&dir, "xp", "rest_answer");
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("no REST answer reached the plugin:\n{}", host.log_text()));
    let answer = &answers[0]["answer"];
    assert_eq!(answer["type"], "rest_result", "{answer}");
    assert_eq!(answer["call"], "c1");
    assert_eq!(answer["result"]["FIELD_NAME"], "UF_CRM_EXEC", "{answer}");
    assert_eq!(portal.calls("crm.deal.userfield.get"), 1);
    // An unknown field: the portal's error comes back as rest_error.
    a.field_id = 999_999;
    assert_eq!(host.post_form(&form(&a)).status, 200);
    let answers = eventually(PATIENCE, || {
        let r = records(&dir, "xp", "rest_answer");
        (r.len() >= 2).then_some(r)
    })
    .expect("no second REST answer");
    assert_eq!(answers[1]["answer"]["type"], "rest_error", "{}", answers[1]);
    assert!(answers[1]["answer"]["code"].is_string());
}

/// A fault the probe does on the event named `name`, under a steady stream of posts; returns
/// the dead letters. Every accepted event reaches the plugin and no request is refused.
fn fault(name: &str, host_keys: &str) -> (HostDir, RunningHost, Vec<(u64, String)>) {
    let dir = exec_dir(&["xp"], &xp("xp", host_keys, ""));
    let host = start(&dir);
    let stream = Stream::start(&host);
    let poison = post(&host, 1, name);
    let after = post(&host, 2, "UF_CRM_AFTER");
    let got = eventually(FAULT_PATIENCE, || {
        let c = calls(&dir, "xp");
        c.iter().any(|(f, _)| *f == 2).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!("{name}: the event after the fault never arrived:\n{}", host.log_text())
    });
    let acked = stream.finish(name);
    let delivered = wait_for_all(&dir, "xp", &acked);
    let missing: Vec<&u64> = acked.iter().filter(|a| !delivered.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{name}: {} accepted events never reached the plugin",
        missing.len()
    );
    let dead = dead_letters(&dir, "xp");
    eprintln!(
        "exec fault {name}: posts {} (+2), refused 0, delivered {}, dead letters {}",
        acked.len(),
        delivered.len(),
        dead.len()
    );
    let _ = (poison, after, got);
    (dir, host, dead)
}

#[test]
fn an_exec_plugin_that_exits_mid_event_is_restarted_and_its_event_quarantined() {
    let (_dir, host, dead) = fault("UF_EXIT", "max_crashes = 2\n");
    assert_eq!(dead.len(), 1, "{dead:?}\n{}", host.log_text());
    assert!(
        dead[0].1.contains("exited with status 3") && dead[0].1.contains("2 times"),
        "{dead:?}"
    );
}

#[test]
fn an_exec_plugin_that_hangs_is_killed_after_kill_after_ms() {
    let (_dir, host, dead) = fault("UF_HANG", "max_crashes = 1\nkill_after_ms = 1500\n");
    assert_eq!(dead.len(), 1, "{dead:?}\n{}", host.log_text());
    assert!(dead[0].1.contains("kill_after_ms"), "{dead:?}");
}

#[test]
fn an_exec_plugin_that_floods_or_writes_garbage_delivers_and_the_host_stays_small() {
    let dir = exec_dir(&["xp"], &xp("xp", "", ""));
    let host = start(&dir);
    let stream = Stream::start(&host);
    // The garbage before the flood: the flood empties the plugin's log budget, and garbage
    // right behind it would be dropped with the flood's lines (CI, once deliveries came
    // straight from the consumers' tails: less than the millisecond a line's budget takes
    // to refill between the two events).
    for (id, name) in [(1, "UF_GARBAGE"), (2, "UF_FLOOD"), (3, "UF_HUGE"), (4, "UF_CRM_AFTER")] {
        post(&host, id, name);
    }
    let arrived = eventually(FAULT_PATIENCE, || calls(&dir, "xp").iter().any(|(f, _)| *f == 4));
    assert!(arrived, "the event after the floods never arrived:\n{}", host.log_text());
    let acked = stream.finish("floods");
    let delivered = wait_for_all(&dir, "xp", &acked);
    assert!(acked.iter().all(|a| delivered.contains(a)), "accepted events were lost");
    // Each delivered once: no answer was lost in the noise, nothing was retried.
    let got = calls(&dir, "xp");
    for id in 1..=4 {
        assert_eq!(got.iter().filter(|(f, _)| *f == id).count(), 1, "event {id}: {got:?}");
    }
    assert!(dead_letters(&dir, "xp").is_empty());
    // The plugin's stdout reaches the log through its reader thread, maybe after the answers.
    assert!(host.wait_log("plugin output: not json at all", PATIENCE), "junk stdout is logged");
    assert!(
        host.wait_log("longer than the protocol allows", PATIENCE),
        "the 50 MB line is reported"
    );
    assert!(host.wait_log("lines dropped", PATIENCE), "the flood is limited");
    let log = host.log_text();
    assert!(!log.contains(&"x".repeat(100_000)), "a huge line reached the log");
    // The host did not grow with the 50 MB line (it holds at most 8 MiB of one).
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "exec floods: posts {}, refused 0, delivered {}, dead letters 0, host peak RSS {} MiB",
        acked.len(),
        delivered.len(),
        hwm_kib / 1024
    );
    assert!(hwm_kib < 200 * 1024, "the host's peak RSS is {hwm_kib} KiB");
}

#[test]
fn exec_plugins_that_never_get_ready_fail_their_start_and_others_deliver() {
    let extra = format!(
        "{}{}{}",
        xp("silent", "", "start = \"never\""),
        xp("quitter", "", "start = \"exit\""),
        xp("xp", "", ""),
    );
    let dir = exec_dir(&["silent", "quitter", "xp"], &extra);
    let text = std::fs::read_to_string(dir.path().join("host.toml")).unwrap();
    dir.write_config(&text.replace("[plugins]\ndir", "[plugins]\nstart_timeout_ms = 3000\ndir"));
    let host = start(&dir);
    let stream = Stream::start(&host);
    post(&host, 1, "UF_CRM_ONE");
    assert!(
        host.wait_log("did not answer ready within plugins.start_timeout_ms", FAULT_PATIENCE),
        "{}",
        host.log_text()
    );
    assert!(
        host.wait_log(
            "its program ended before it answered ready: exited with status 2",
            FAULT_PATIENCE
        ),
        "{}",
        host.log_text()
    );
    assert!(
        eventually(FAULT_PATIENCE, || calls(&dir, "xp").len() > 20),
        "the healthy plugin stalled"
    );
    let acked = stream.finish("no ready");
    let delivered = wait_for_all(&dir, "xp", &acked);
    assert!(acked.iter().all(|a| delivered.contains(a)), "the healthy plugin lost events");
    // The failed plugins' events wait in the journal for them.
    let stats = dir.stats();
    assert!(stats.get("silent").is_some_and(|s| s.0 > 0), "{stats:?}");
    eprintln!(
        "exec no ready: posts {}, refused 0, delivered to the healthy plugin {}, waiting for the failed ones {}",
        acked.len(),
        delivered.len(),
        stats["silent"].0
    );
}

#[test]
fn an_exec_window_sends_several_events_and_a_retry_resends_only_the_unanswered() {
    let extra = xp("xp", "window = 4\n", "start = \"wait\"\ngather = 4");
    let dir = exec_dir(&["xp"], &extra);
    let host = dir
        .start_with(Launch { before_plugins: true, ..Launch::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    // Journaled while the plugin waits to say ready: one window of four once it does.
    for (id, name) in [(1, "UF_CRM_A"), (2, "UF_RETRY_2"), (3, "UF_CRM_C"), (4, "UF_CRM_D")] {
        post(&host, id, name);
    }
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let got = eventually(PATIENCE, || {
        let c = calls(&dir, "xp");
        (c.len() >= 5).then_some(c)
    })
    .unwrap_or_else(|| {
        let record = std::fs::read_to_string(dir.path().join("xp.jsonl")).unwrap_or_default();
        panic!("{:?}\n{record}\n{}", calls(&dir, "xp"), host.log_text())
    });
    // Several were in flight at once (the plugin holds what it gets, up to four, and answers
    // in reverse: D, C, B (retry), A); A, C and D done once each (those answered before B's
    // retry count as done: the plugin handled them), B retried once.
    let batches: Vec<u64> =
        records(&dir, "xp", "batch").iter().filter_map(|b| b["size"].as_u64()).collect();
    assert!(batches.iter().any(|n| *n > 1), "never more than one event in flight: {batches:?}");
    for id in [1, 3, 4] {
        assert_eq!(got.iter().filter(|(f, _)| *f == id).count(), 1, "event {id}: {got:?}");
    }
    assert_eq!(got.iter().filter(|(f, _)| *f == 2).count(), 2, "{got:?}");
    let ids: BTreeSet<String> = records(&dir, "xp", "event")
        .iter()
        .take(4)
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 4, "each delivery has its own id");
    assert!(eventually(PATIENCE, || dir.stats().get("xp").is_some_and(|s| s.0 == 0)));
    assert!(dead_letters(&dir, "xp").is_empty());
}

#[test]
fn an_exec_plugin_is_told_to_shut_down_and_a_sigkilled_host_leaves_no_process() {
    let dir = exec_dir(&["xp"], &xp("xp", "", ""));
    let host = start(&dir);
    post(&host, 1, "UF_CRM_ONE");
    assert!(eventually(PATIENCE, || !calls(&dir, "xp").is_empty()));
    let pid = records(&dir, "xp", "hello")[0]["pid"].as_u64().unwrap() as u32;
    assert!(host.stop(), "the host did not stop cleanly");
    let ends: Vec<String> = dir
        .read_lines_lenient("xp.jsonl")
        .iter()
        .filter_map(|l| l["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(ends.ends_with(&["shutdown".to_owned(), "eof".to_owned()]), "{ends:?}");
    assert!(eventually(PATIENCE, || !alive(pid)), "the plugin outlived the host");

    // Again, with children of its own, and a SIGKILL.
    let host = start(&dir);
    post(&host, 2, "UF_SPAWN");
    let spawned = eventually(PATIENCE, || {
        let s = records(&dir, "xp", "spawned");
        (!s.is_empty()).then_some(s)
    })
    .expect("the probe did not start its children");
    let mut pids: Vec<u32> =
        spawned[0]["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    let hellos = records(&dir, "xp", "hello");
    pids.push(hellos.last().unwrap()["pid"].as_u64().unwrap() as u32);
    assert!(pids.iter().all(|p| alive(*p)));
    host.kill();
    assert!(
        eventually(PATIENCE, || !pids.iter().any(|p| alive(*p))),
        "processes of the plugin outlived a SIGKILLed host: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}

#[test]
fn a_reload_restarts_an_exec_plugin_with_its_new_settings() {
    let dir = exec_dir(&["xp"], &xp("xp", "", "greeting = \"one\""));
    let host = start(&dir);
    post(&host, 1, "UF_CRM_ONE");
    assert!(eventually(PATIENCE, || !calls(&dir, "xp").is_empty()));
    let first = records(&dir, "xp", "hello")[0]["pid"].as_u64().unwrap() as u32;
    dir.write_config(&config(&["xp"], &xp("xp", "", "greeting = \"two\"")));
    host.signal("HUP");
    let hellos = eventually(PATIENCE, || {
        let h = records(&dir, "xp", "hello");
        (h.len() >= 2).then_some(h)
    })
    .unwrap_or_else(|| panic!("no new program after the reload:\n{}", host.log_text()));
    assert_eq!(hellos[1]["hello"]["settings"]["greeting"], "two");
    assert!(eventually(PATIENCE, || !alive(first)), "the old program still runs");
    post(&host, 2, "UF_CRM_TWO");
    assert!(eventually(PATIENCE, || calls(&dir, "xp").iter().any(|(f, _)| *f == 2)));
}

#[test]
fn an_exec_plugin_delivers_on_the_nats_backend() {
    use b24_tests::nats::{NatsOptions, cluster_or_skip};
    let Some(cluster) =
        cluster_or_skip("an_exec_plugin_delivers_on_the_nats_backend", 3, NatsOptions::default())
    else {
        return;
    };
    let dir =
        exec_dir(&["xp"], &format!("{}\n{}", xp("xp", "", ""), cluster.journal_toml(3, 1000)));
    let host = start(&dir);
    let stream = Stream::start(&host);
    post(&host, 1, "UF_RETRY_2");
    post(&host, 2, "UF_CRM_B");
    assert!(eventually(FAULT_PATIENCE, || calls(&dir, "xp").len() > 20), "{}", host.log_text());
    let acked = stream.finish("nats");
    let delivered = wait_for_all(&dir, "xp", &acked);
    assert!(acked.iter().all(|a| delivered.contains(a)), "accepted events were lost");
    let got = calls(&dir, "xp");
    let first: Vec<(u64, u64)> = got.iter().copied().filter(|(f, _)| *f < 3).collect();
    assert_eq!(first, vec![(1, 1), (1, 2), (2, 1)], "{got:?}");
    eprintln!("exec on NATS: posts {}, refused 0, delivered {}", acked.len(), delivered.len());
}
