//! The portals page: per portal whether the app's installation is finished (`app.info`), the
//! bindings the plugins need, have, miss and do not need (the binder's last pass), and the
//! offline poller's lost reservations and parked rows. Read-only: the binder and the pollers
//! do the work; `b24-host bind` binds now. The changing part is `div#portals-live`, which htmx
//! reloads from `/partials/portals` every 2 s.

use std::collections::BTreeSet;

use maud::{Markup, html};

use super::when;
use crate::{
    bind::{Binding, PortalBindings},
    journal::now_ms,
    offline::PortalStatus,
    operations::Ops,
};

/// The page's body.
pub fn body(ops: &Ops) -> Markup {
    html! {
        h1 { "Portals" }
        (live(ops))
    }
}

fn list(set: &BTreeSet<Binding>) -> String {
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// `div#portals-live`: everything that changes.
pub fn live(ops: &Ops) -> Markup {
    let reports = ops.binder.reports();
    let pollers = ops.pollers.status();
    let now = now_ms();
    html! {
        div id="portals-live" hx-get="/partials/portals" hx-trigger="every 2s" hx-swap="outerHTML" {
            p.handler {
                @match ops.binder.handler() {
                    Some(handler) => { "The host binds the plugins' events to " code { (handler) } " (bind.handler)." }
                    None => { "bind.handler is not set: the host binds nothing; bind events yourself, or set it." }
                }
            }
            @if reports.is_empty() {
                p { "no portal checked yet: install the app on a portal while the host runs" }
            }
            @for r in &reports {
                (portal(r, pollers.iter().find(|p| p.member_id == r.member_id), ops.binder.handler().is_some(), now))
            }
            @for p in pollers.iter().filter(|p| !reports.iter().any(|r| r.member_id == p.member_id)) {
                section.portal id=(format!("portal-{}", p.member_id)) {
                    h2 { (p.member_id) }
                    (offline(p, now))
                }
            }
        }
    }
}

fn portal(r: &PortalBindings, poller: Option<&PortalStatus>, binding: bool, now: i64) -> Markup {
    html! {
        section.portal id=(format!("portal-{}", r.member_id)) {
            h2 { (r.member_id) @if let Some(domain) = &r.domain { " · " (domain) } }
            dl {
                dt { "installation" }
                dd.installation {
                    @match r.installed {
                        Some(true) => span.state-loaded { "finished" },
                        Some(false) => span.state-failed { "NOT finished: installFinish was never called, the portal sends no events" },
                        None => "unknown",
                    }
                }
                dt { "checked" }
                dd.checked { (r.checked_at_ms.map_or("never".to_owned(), |at| format!("{} ago", when::age(now - at)))) }
                @if let Some(error) = &r.error {
                    dt { "error" }
                    dd.problem.error { (error) }
                }
                @if binding {
                    dt { "needed" }
                    dd.needed { (r.needed.len()) ": " (list(&r.needed)) }
                    dt { "bound" }
                    dd.bound { (r.bound.len()) }
                    dt { "missing" }
                    dd.missing class=@if !r.missing.is_empty() { "problem" } { (r.missing.len()) ": " (list(&r.missing)) }
                    dt { "extra" }
                    dd.extra { (r.extra.len()) ": " (list(&r.extra)) }
                }
                @if !r.unexpanded.is_empty() {
                    dt { "not expanded" }
                    dd.unexpanded.problem { (r.unexpanded.join("; ")) " (name the codes in plugin.<name>.events)" }
                }
                @if !r.failures.is_empty() {
                    dt { "failures" }
                    dd.failures { ul { @for f in &r.failures { li { (f) } } } }
                }
            }
            @if let Some(p) = poller { (offline(p, now)) }
        }
    }
}

fn offline(p: &PortalStatus, now: i64) -> Markup {
    html! {
        h3 { "Offline queue" }
        dl.offline {
            dt { "mode" } dd.mode { (p.mode) }
            dt { "oldest reservation" }
            dd.oldest-reservation { (p.oldest_reservation_ms.map_or("none".to_owned(), |at| format!("held {}", when::age(now - at)))) }
            dt { "lost batches taken over" } dd.lost { (p.lost_batches_resumed) }
            dt { "rows" } dd.rows { (p.rows_pulled) " pulled, " (p.rows_cleared) " cleared, " (p.rows_failed) " sent back" }
            dt { "parked" }
            dd.parked { (p.parked_total) " row(s) parked with event.offline.error"
                @if let Some(at) = p.surveyed_ms { " (as of " (when::age(now - at)) " ago)" } }
        }
        @if !p.parked.is_empty() {
            table.parked-rows {
                thead { tr { th { "row" } th { "event" } th { "time" } th { "message id" } } }
                tbody {
                    @for row in &p.parked {
                        tr { td { (row.id) } td { (row.event_name) } td { (row.timestamp) } td { code { (row.message_id) } } }
                    }
                }
            }
        }
    }
}
