//! The overview: intake per second (chart), per-plugin backlog, oldest pending age, retrying,
//! dead letters and state, the journal and its health, each portal's offline poller (its
//! parked rows link to the portals page), the installs refused lately (Bitrix24 does not send
//! them again). The changing part is `div#live`, which htmx reloads from
//! `/partials/overview` every 2 s.

use maud::{Markup, html};

use super::{STATS_PATIENCE, when};
use crate::{
    journal::{admin::Stats, now_ms},
    metrics::now_seconds,
    operations::Ops,
};

/// The page's body.
pub async fn body(ops: &Ops) -> Markup {
    let live = live(ops).await;
    html! {
        h1 { "Overview" }
        (live)
    }
}

/// `div#live`: everything that changes.
pub async fn live(ops: &Ops) -> Markup {
    let stats: Option<Stats> =
        tokio::time::timeout(STATS_PATIENCE, ops.journal.stats(ops.supervisor.names()))
            .await
            .ok()
            .and_then(Result::ok);
    let views = ops.supervisor.views();
    let paused = ops.journal.pauses();
    let window = ops.metrics.intake.window(now_seconds());
    let problems = ops.problems();
    let pollers = ops.pollers.status();
    let refused = ops.verifier.refused.list();
    let backend = if ops.journal.is_shared() { "nats" } else { "embedded" };
    let now = now_ms();
    html! {
        div id="live" hx-get="/partials/overview" hx-trigger="every 2s" hx-swap="outerHTML" {
            section id="intake" {
                h2 { "Intake" }
                (super::chart::intake(&window))
            }
            section id="plugins-overview" {
                h2 { "Plugins" }
                table id="plugin-stats" {
                    thead { tr { th { "plugin" } th { "backlog" } th { "oldest pending" } th { "retrying" } th { "dead" } th { "state" } } }
                    tbody {
                        @for p in stats.as_ref().map(|s| s.plugins.as_slice()).unwrap_or_default() {
                            @let view = views.iter().find(|v| v.name == p.plugin);
                            tr id=(format!("stats-{}", p.plugin)) {
                                td.name { (p.plugin) }
                                td.backlog { (p.backlog) }
                                td.oldest { (p.oldest_pending_age_ms.map_or("-".to_owned(), when::age)) }
                                td.retrying { (p.retrying) }
                                td.dead { a href=(format!("/dead?plugin={}", p.plugin)) { (p.dead) } }
                                td.state {
                                    @if let Some(pause) = paused.get(&p.plugin) {
                                        span.state-paused { "paused" } " (" (pause.describe()) ") · "
                                    }
                                    @match view {
                                        Some(v) => {
                                            span class=(format!("state-{}", v.state)) { (v.state) }
                                            @if let Some(f) = &v.failure { " (" (f) ")" }
                                            @if let Some(r) = &v.runner {
                                                " · runner " (r.state) ", " (r.restarts) " restarts"
                                                @if let Some(exit) = &r.last_exit { " (last exit: " (exit) ")" }
                                            }
                                        }
                                        None => "not enabled",
                                    }
                                }
                            }
                        }
                    }
                }
                @if stats.is_none() {
                    p.problem { "the journal did not answer within 2 s: numbers unavailable" }
                }
            }
            section id="journal" {
                h2 { "Journal" }
                dl {
                    dt { "backend" } dd.backend { (backend) }
                    dt { "log" } dd.log { (ops.journal.log_state().to_string()) }
                    dt { "health" }
                    dd.health {
                        @if problems.is_empty() { "ready" } @else {
                            "not ready: "
                            ul { @for p in &problems { li { (p) } } }
                        }
                    }
                    dt { "last write error" }
                    dd.write-error { (ops.journal.last_write_error().unwrap_or_else(|| "none".into())) }
                    dt { "events" }
                    dd.events { (stats.as_ref().map_or("-".to_owned(), |s| s.events.to_string())) }
                    dt { "size" }
                    dd.size { (ops.journal.size_bytes().map_or("-".to_owned(), bytes)) }
                    dt { "damaged records read" }
                    dd.damaged { (ops.journal.damaged_records()) }
                }
            }
            section id="offline" {
                h2 { "Offline pollers" }
                @if pollers.is_empty() {
                    p { "no portal has offline polling enabled" }
                } @else {
                    table {
                        thead { tr { th { "portal" } th { "mode" } th { "last poll" } th { "rows" } th { "parked" } th { "errors" } th { "last error" } th { "poller" } } }
                        tbody {
                            @for s in &pollers {
                                tr id=(format!("offline-{}", s.member_id)) {
                                    td { (s.member_id) }
                                    td.mode { (s.mode) }
                                    td.last-poll { (s.last_poll_ms.map_or("never".to_owned(), |ms| format!("{} ago", when::age(now - ms)))) }
                                    td.rows { (s.rows_pulled) " (" (s.duplicates) " duplicates, " (s.rows_failed) " failed)" }
                                    td.parked { a href="/portals" { (s.parked_total) } }
                                    td.errors { (s.errors) }
                                    td.last-error { (s.last_error.as_deref().unwrap_or("-")) }
                                    td.poller { (s.poller.as_deref().unwrap_or("this host")) }
                                }
                            }
                        }
                    }
                }
            }
            section id="refused-installs" {
                h2 { "Refused installs" }
                @if refused.is_empty() {
                    p { "none since the host started" }
                } @else {
                    p {
                        "Bitrix24 does not send an install again: the app must be reinstalled on these portals once the reason is fixed (the log line says how; for an install that cannot be verified, list the portal in [auth.portals])."
                    }
                    table {
                        thead { tr { th { "portal (member_id)" } th { "domain" } th { "when" } th { "reason" } } }
                        tbody {
                            @for r in &refused {
                                tr.refused-install {
                                    td.member { (r.member_id) }
                                    td.domain { (r.domain) }
                                    td.when { (when::age(now - r.at_ms)) " ago" }
                                    td.reason { span.reason-code { (r.reason) } ": " (r.detail) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A size in bytes, short.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}
