//! One pass of the binder over one portal, with the app's stored OAuth tokens
//! (`call_as_app`; the REST client adds the portal's `auth_connector` to every call):
//!
//! 1. `app.info`: is the app's installation finished (`INSTALLED`)?
//! 2. with `bind.handler` set: `events` (the codes the portal offers the app), then what the
//!    plugins need ([`plan`]), then `event.get` (what is bound);
//! 3. when binding (not only checking): `event.bind` for each missing binding ("bound
//!    already", in any of the portal's spellings, counts as bound), and with `bind.prune`
//!    `event.unbind` for each extra one.
//!
//! A refusal is reported per code and the pass goes on; a portal that does not answer (503,
//! 429, a timeout) ends the pass and asks for another later ([`Outcome::retry`]).

use std::collections::{BTreeMap, BTreeSet};

use b24_plugin_api::{RestError, RestErrorKind};
use serde_json::{Value, json};

use super::{plan, report::PortalBindings};
use crate::{
    codes::ON_OFFLINE_EVENT,
    journal::now_ms,
    rest::{EventContext, RestClient},
    route::Routes,
};

/// What a pass needs besides the portal: the `[bind]` settings and which portals' offline
/// queues are polled.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `bind.handler`.
    pub handler: Option<String>,
    /// `bind.prune`.
    pub prune: bool,
    /// `bind.nudge_min_timeout_s`.
    pub nudge_min_timeout_s: u32,
    /// The portals whose offline queue is polled (`offline.enabled`).
    pub offline: BTreeSet<String>,
}

/// Check only, or bind what is missing too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Read the portal's state.
    Check,
    /// Read it and bind what is missing (and prune).
    Bind,
}

/// A pass's result.
pub struct Outcome {
    /// What it found (and did).
    pub report: PortalBindings,
    /// The portal did not answer: try again later.
    pub retry: bool,
}

fn transient(e: &RestError) -> bool {
    e.kind == RestErrorKind::Unavailable
}

/// `app.info`'s `INSTALLED`, however it is spelled.
fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_i64() != Some(0)),
        Value::String(s) => match s.as_str() {
            "Y" | "1" | "true" => Some(true),
            "N" | "0" | "false" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Runs one pass over `member` (see the module docs).
pub async fn run(
    rest: &RestClient,
    settings: &Settings,
    routes: &Routes,
    member: &str,
    mode: Mode,
) -> Outcome {
    let mut report = PortalBindings {
        member_id: member.to_owned(),
        offline: settings.offline.contains(member),
        ..PortalBindings::default()
    };
    let mut retry = false;
    let (client_endpoint, _) = rest.stored_endpoints(member).await;
    let Some(client_endpoint) = client_endpoint else {
        report.error = Some(
            "no OAuth tokens stored for this portal: install the app on it while the host runs"
                .into(),
        );
        report.checked_at_ms = Some(now_ms());
        return Outcome { report, retry };
    };
    report.domain = super::portal_domain(&client_endpoint);
    let ctx = EventContext {
        domain: report.domain.clone().unwrap_or_default(),
        ..EventContext::app(member)
    };
    match rest.call_as_app(&ctx, "app.info", json!({})).await {
        Ok(info) => report.installed = flag(&info["INSTALLED"]),
        Err(e) => {
            retry |= transient(&e);
            report.failures.push(format!("app.info: {e}"));
        }
    }
    let Some(handler) = settings.handler.as_deref() else {
        report.checked_at_ms = Some(now_ms());
        return Outcome { report, retry };
    };
    let offered = match rest.call_as_app(&ctx, "events", json!({})).await {
        Ok(list) => Some(
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_ascii_uppercase)
                .collect::<BTreeSet<String>>(),
        ),
        Err(e) => {
            retry |= transient(&e);
            report
                .failures
                .push(format!("events: {e} (wildcards expanded over every code the host knows)"));
            None
        }
    };
    let wanted = plan::plugin_codes(routes, offered.as_ref());
    report.unexpanded = wanted.unexpanded;
    report.not_offered = wanted.not_offered;
    report.needed = plan::needed(&wanted.codes, report.offline);
    let connector = rest.connector(member).unwrap_or_default().to_owned();
    match rest.call_as_app(&ctx, "event.get", json!({})).await {
        Ok(answer) => report.bound = plan::ours(&answer, handler, &connector),
        Err(e) => {
            retry |= transient(&e);
            report.error = Some(format!("event.get failed: {e}"));
            (report.missing, report.extra) = plan::diff(&report.needed, &report.bound);
            report.checked_at_ms = Some(now_ms());
            return Outcome { report, retry };
        }
    }
    if mode == Mode::Bind {
        let (missing, extra) = plan::diff(&report.needed, &report.bound);
        retry |= bind_missing(rest, &ctx, settings, handler, &missing, &mut report).await;
        if settings.prune && !retry {
            retry |= unbind_extra(rest, &ctx, handler, &extra, &mut report).await;
        }
    }
    (report.missing, report.extra) = plan::diff(&report.needed, &report.bound);
    report.checked_at_ms = Some(now_ms());
    Outcome { report, retry }
}

/// `event.bind` for each of `missing`; true when the portal stopped answering.
async fn bind_missing(
    rest: &RestClient,
    ctx: &EventContext,
    settings: &Settings,
    handler: &str,
    missing: &BTreeSet<plan::Binding>,
    report: &mut PortalBindings,
) -> bool {
    let mut bound = Vec::new();
    let mut unavailable = false;
    for binding in missing {
        let mut params = json!({ "event": binding.event });
        if binding.offline {
            params["event_type"] = json!("offline");
        } else {
            params["handler"] = json!(handler);
            if binding.event == ON_OFFLINE_EVENT {
                params["options"] = json!({ "minTimeout": settings.nudge_min_timeout_s });
            }
        }
        match rest.call_as_app(ctx, "event.bind", params).await {
            Ok(_) => {
                bound.push(binding.to_string());
                report.bound.insert(binding.clone());
            }
            Err(e) if plan::already_bound(&e) => {
                report.bound.insert(binding.clone());
            }
            Err(e) => {
                tracing::warn!(member_id = %ctx.member_id, binding = %binding, "event.bind refused: {e}");
                report.failures.push(format!("{binding}: {e}"));
                if transient(&e) {
                    unavailable = true;
                    break;
                }
            }
        }
    }
    if !bound.is_empty() {
        tracing::info!(member_id = %ctx.member_id, count = bound.len(), events = %bound.join(", "), "bound events on the portal");
    }
    unavailable
}

/// `event.unbind` for each of `extra` (`bind.prune`); true when the portal stopped answering.
async fn unbind_extra(
    rest: &RestClient,
    ctx: &EventContext,
    handler: &str,
    extra: &BTreeSet<plan::Binding>,
    report: &mut PortalBindings,
) -> bool {
    let mut removed: BTreeMap<String, u64> = BTreeMap::new();
    for binding in extra {
        let params = if binding.offline {
            json!({ "event": binding.event, "event_type": "offline" })
        } else {
            json!({ "event": binding.event, "handler": handler })
        };
        match rest.call_as_app(ctx, "event.unbind", params).await {
            Ok(answer) => {
                removed.insert(binding.to_string(), answer["count"].as_u64().unwrap_or(0));
                report.bound.remove(binding);
            }
            Err(e) => {
                tracing::warn!(member_id = %ctx.member_id, binding = %binding, "event.unbind refused: {e}");
                report.failures.push(format!("unbind {binding}: {e}"));
                if transient(&e) {
                    return true;
                }
            }
        }
    }
    if !removed.is_empty() {
        let events: Vec<&str> = removed.keys().map(String::as_str).collect();
        tracing::info!(member_id = %ctx.member_id, count = removed.len(), events = %events.join(", "), "unbound events no plugin receives (bind.prune)");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_flag_reads_every_spelling() {
        assert_eq!(flag(&json!(true)), Some(true));
        assert_eq!(flag(&json!(false)), Some(false));
        assert_eq!(flag(&json!("Y")), Some(true));
        assert_eq!(flag(&json!("N")), Some(false));
        assert_eq!(flag(&json!(0)), Some(false));
        assert_eq!(flag(&Value::Null), None);
    }
}
