//! One event: the decoded tree and the raw body (both redacted by the journal), and per plugin
//! its state (pending, done, dead), its attempts and, for a dead letter, the replay button
//! (which leads to the confirmation step of `/dead/replay`). `section#deliveries` reloads
//! from `/partials/events/{id}/deliveries` every 2 s while some plugin has it pending.

use std::collections::BTreeSet;

use maud::{Markup, html};

use super::when;
use crate::journal::admin::EventDetail;

/// The page's body.
pub fn body(detail: &EventDetail, csrf: &str) -> Markup {
    let s = &detail.summary;
    html! {
        h1 { "Event " (s.id) }
        dl.summary {
            dt { "code" } dd { (s.code) }
            dt { "portal" } dd { (s.member_id) }
            dt { "received (UTC)" } dd { (when::format_ms(s.received_at_ms)) }
        }
        (deliveries(detail, csrf))
        section id="decoded" {
            h2 { "Decoded (tokens redacted)" }
            pre { (serde_json::to_string_pretty(&detail.decoded).unwrap_or_default()) }
        }
        section id="raw" {
            h2 { "Raw body (tokens and secrets redacted)" }
            pre { (detail.raw_redacted) }
        }
    }
}

/// `section#deliveries`: per plugin, state and attempts.
pub fn deliveries(detail: &EventDetail, csrf: &str) -> Markup {
    let id = detail.summary.id;
    let plugins: BTreeSet<&String> = detail
        .pending_state
        .keys()
        .chain(detail.dead_state.keys())
        .chain(detail.attempts.keys())
        .chain(&detail.summary.pending)
        .chain(&detail.summary.dead)
        .collect();
    let waiting = !detail.pending_state.is_empty() || !detail.summary.pending.is_empty();
    html! {
        section id="deliveries"
            hx-get=[waiting.then(|| format!("/partials/events/{id}/deliveries"))]
            hx-trigger=[waiting.then_some("every 2s")]
            hx-swap=[waiting.then_some("outerHTML")] {
            h2 { "Deliveries" }
            @if plugins.is_empty() {
                p { "no plugin received this event" }
            }
            @for plugin in plugins {
                @let pending = detail.pending_state.get(plugin);
                @let dead = detail.dead_state.get(plugin);
                @let state = if dead.is_some() { "dead" } else if pending.is_some() || detail.summary.pending.contains(plugin) { "pending" } else { "done" };
                div.plugin-deliveries id=(format!("deliveries-{plugin}")) {
                    h3 { (plugin) ": " span class=(format!("state {state}")) { (state) } }
                    @if let Some(p) = pending {
                        p.pending-state {
                            (p.attempts) " attempts so far"
                            @if p.crashes > 0 { ", " (p.crashes) " crashes" }
                            @if p.next_at_ms > 0 { ", next at " (when::format_ms(p.next_at_ms)) }
                            @if !p.last_error.is_empty() { "; last error: " (p.last_error) }
                        }
                    }
                    @if let Some(d) = dead {
                        p.dead-reason { "given up at " (when::format_ms(d.at_ms)) " after " (d.attempts) " attempts: " (d.reason) }
                        form method="post" action="/dead/replay" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="plugin" value=(plugin);
                            input type="hidden" name="ids" value=(id);
                            button.primary id=(format!("replay-{plugin}")) type="submit" { "Replay" }
                        }
                    }
                    table {
                        thead { tr { th { "#" } th { "started (UTC)" } th { "duration" } th { "outcome" } th { "error" } } }
                        tbody {
                            @for a in detail.attempts.get(plugin).map(Vec::as_slice).unwrap_or_default() {
                                tr.attempt {
                                    td.n { (a.n) }
                                    td.time { (when::format_ms(a.at_ms)) }
                                    td.duration { (format!("{:.1} ms", a.duration_us as f64 / 1000.0)) }
                                    td.outcome { (a.outcome) }
                                    td.error { (a.error) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
