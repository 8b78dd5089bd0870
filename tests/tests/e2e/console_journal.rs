//! The journal's side of the console: every delivery attempt is kept, and `journal show`
//! (through the running host's control socket) lists them with the raw body, tokens redacted.

use b24_host::journal::{
    Operator,
    admin::{EventStatus, Page, Query},
};

use crate::support::*;

/// The outcomes of `plugin`'s attempts on event `id` as `journal show --json` lists them.
fn outcomes(dir: &HostDir, id: u64, plugin: &str) -> Vec<String> {
    let shown = dir.journal(&["show", &id.to_string()]);
    shown["event"]["attempts"][plugin]
        .as_array()
        .map(|a| a.iter().map(|x| x["outcome"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn an_event_retried_twice_then_done_shows_its_three_attempts_and_no_token() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    let answer = host.post_form(&field_event(7, "UF_CRM_RETRY2"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let id: u64 = answer.body.trim_start_matches("accepted ").parse().unwrap();
    // The attempt rows are written with the outcomes: done once the third one is there.
    let done = eventually(PATIENCE, || outcomes(&dir, id, "probe").len() == 3);
    assert!(done, "{:?}\n{}", outcomes(&dir, id, "probe"), host.log_text());
    let shown = dir.journal(&["show", &id.to_string()]);
    let event = &shown["event"];
    let attempts = event["attempts"]["probe"].as_array().unwrap();
    let got: Vec<(u64, &str)> = attempts
        .iter()
        .map(|a| (a["n"].as_u64().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(got, vec![(1, "retry"), (2, "retry"), (3, "done")], "{shown}");
    // Retries carry the plugin's error text; each has a time and a duration.
    assert!(!attempts[0]["error"].as_str().unwrap_or("").is_empty(), "{shown}");
    assert!(attempts[2].get("error").is_none(), "{shown}");
    assert!(attempts.iter().all(|a| a["at_ms"].as_i64().unwrap() > 0), "{shown}");
    assert!(attempts.windows(2).all(|w| w[0]["at_ms"].as_i64() <= w[1]["at_ms"].as_i64()));
    // The event is done: no plugin has it pending or dead.
    assert_eq!(event["summary"]["pending"], serde_json::json!([]), "{shown}");
    assert_eq!(event["summary"]["dead"], serde_json::json!([]), "{shown}");
    // The raw body is shown, its application token is not, anywhere in the answer.
    let raw = event["raw_redacted"].as_str().unwrap();
    assert!(raw.contains("UF_CRM_RETRY2") && raw.contains("<redacted>"), "{raw}");
    assert!(!shown.to_string().contains(TOKEN), "{shown}");
    // The text form lists the attempts too.
    let out = dir.run_cli(&["journal", "show", &id.to_string(), "--config", "host.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("attempts of probe"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("retry")).count(), 2, "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    // A rejected event is a dead letter at once; purge --since selects by the letter's time.
    let answer = host.post_form(&field_event(8, "UF_CRM_REJECT"));
    let rejected: u64 = answer.body.trim_start_matches("accepted ").parse().unwrap();
    let dead = eventually(PATIENCE, || outcomes(&dir, rejected, "probe") == ["rejected"]);
    assert!(dead, "{:?}", outcomes(&dir, rejected, "probe"));
    let later = (b24_host::journal::now_ms() + 3_600_000).to_string();
    let purged = dir.journal(&["purge", "--plugin", "probe", "--since", &later]);
    assert_eq!(purged["rows"], serde_json::json!([]), "{purged}");
    let purged = dir.journal(&["purge", "--plugin", "probe", "--since", "2000-01-01T00:00:00Z"]);
    assert_eq!(purged["rows"], serde_json::json!([["probe", rejected]]), "{purged}");
    // The purged letter's attempts went with it; the finished event's stay.
    let shown = dir.journal(&["show", &rejected.to_string()]);
    assert_eq!(shown["event"]["attempts"], serde_json::json!({}), "{shown}");
    assert_eq!(outcomes(&dir, id, "probe").len(), 3);
    assert!(host.stop());
}

#[test]
fn on_the_nats_log_a_dead_letters_attempts_are_kept_in_the_attempts_stream() {
    let test = "on_the_nats_log_a_dead_letters_attempts_are_kept_in_the_attempts_stream";
    let Some(cluster) =
        b24_tests::nats::cluster_or_skip(test, 1, b24_tests::nats::NatsOptions::default())
    else {
        return;
    };
    let dir = HostDir::new(&["probe"]);
    let plugins = config(&["probe"], &probe("", ""));
    dir.write_config(&format!("{plugins}\n{}", cluster.journal_toml(1, 2_000)));
    let host = start(&dir);
    // Retried on every attempt: after the 3 configured attempts, a dead letter.
    let answer = host.post_form(&field_event(9, "UF_CRM_RETRY9"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let id: u64 = answer.body.trim_start_matches("accepted ").parse().unwrap();
    let kept = eventually(PATIENCE, || {
        let shown = dir.journal(&["show", &id.to_string()]);
        shown["event"]["dead_state"]["probe"].is_object()
            && outcomes(&dir, id, "probe") == ["retry", "retry", "retry"]
    });
    let shown = dir.journal(&["show", &id.to_string()]);
    assert!(kept, "{shown}\n{}", host.log_text());
    let attempts = shown["event"]["attempts"]["probe"].as_array().unwrap();
    let numbers: Vec<u64> = attempts.iter().map(|a| a["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![1, 2, 3], "{shown}");
    let raw = shown["event"]["raw_redacted"].as_str().unwrap();
    assert!(raw.contains("UF_CRM_RETRY9") && raw.contains("<redacted>"), "{raw}");
    assert!(!shown.to_string().contains(TOKEN), "{shown}");

    // The console's listing over the shared log: the dead letter is there, with its filters.
    let config = b24_host::config::Config::load(&dir.path().join("host.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let query = |q: Query| {
        runtime.block_on(async {
            let (journal, _writer) =
                Operator::open(&config.state_dir, &config.journal).await.unwrap();
            journal.query(q).await.unwrap()
        })
    };
    let ids = |page: &Page| page.events.iter().map(|e| e.id).collect::<Vec<u64>>();
    let all = query(Query { limit: 10, ..Query::default() });
    assert_eq!((ids(&all), all.next_before), (vec![id], None), "{all:?}");
    assert_eq!(all.events[0].dead, vec!["probe".to_owned()]);
    let dead = query(Query { limit: 10, status: Some(EventStatus::Dead), ..Query::default() });
    assert_eq!(ids(&dead), vec![id]);
    let pending =
        query(Query { limit: 10, status: Some(EventStatus::Pending), ..Query::default() });
    assert_eq!(ids(&pending), Vec::<u64>::new());
    let other = query(Query { limit: 10, member_id: Some("nobody".into()), ..Query::default() });
    assert_eq!(ids(&other), Vec::<u64>::new());
    let older = query(Query { limit: 10, before_id: Some(id), ..Query::default() });
    assert_eq!(ids(&older), Vec::<u64>::new());
    assert!(host.stop());
}
