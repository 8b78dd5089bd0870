//! What a portal must have bound, and how that compares with what it has: pure functions over
//! the plugins' routes and the portal's answers, so every rule is tested without a portal.
//!
//! - [`plugin_codes`]: every enabled plugin's code globs, expanded to concrete codes. A code
//!   named without a wildcard is taken as it is; a wildcard is expanded over
//!   [`crate::codes::catalog`], and of those only the codes the portal offers the app (its
//!   `events` answer, when it gave one) are kept. A wildcard that matches no code the host
//!   knows cannot be expanded: it is reported, never guessed (name the codes in
//!   `plugin.<name>.events`).
//! - [`needed`]: the bindings those codes call for, plus `ONAPPUNINSTALL` online; with the
//!   portal's offline queue polled, the codes go `offline` and `ONOFFLINEEVENT` online.
//! - [`ours`]: the bindings of `event.get`'s answer that belong to this host (online to its
//!   handler, offline in its connector's queue).
//! - [`already_bound`]: every spelling of "bound already" a portal answers `event.bind` with.

use std::collections::{BTreeMap, BTreeSet};

use b24_plugin_api::RestError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    codes::{ON_APP_UNINSTALL, ON_OFFLINE_EVENT, catalog},
    route::Routes,
};

/// One subscription on a portal: an event code, online (posted to the handler) or offline
/// (queued in the connector's offline queue).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The event code, upper-case.
    pub event: String,
    /// `event_type=offline`.
    pub offline: bool,
}

impl Binding {
    /// An online binding of `event`.
    pub fn online(event: &str) -> Binding {
        Binding { event: event.to_ascii_uppercase(), offline: false }
    }

    /// An offline binding of `event`.
    pub fn offline(event: &str) -> Binding {
        Binding { event: event.to_ascii_uppercase(), offline: true }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offline { write!(f, "{} (offline)", self.event) } else { f.write_str(&self.event) }
    }
}

/// The codes the plugins receive, and the globs that could not be expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Concrete codes, upper-case.
    pub codes: BTreeSet<String>,
    /// `plugin: GLOB` for each wildcard that matches no code the host knows.
    pub unexpanded: Vec<String>,
    /// Codes a wildcard stands for that the portal does not offer the app (outside its scopes,
    /// or not on this portal): not bound.
    pub not_offered: BTreeSet<String>,
}

fn is_wildcard(glob: &str) -> bool {
    glob.contains(['*', '?'])
}

/// Expands every route's globs into codes (see the module docs). `offered` is the portal's
/// `events` answer, upper-case, when it gave one.
pub fn plugin_codes(routes: &Routes, offered: Option<&BTreeSet<String>>) -> Wanted {
    let catalog = catalog();
    let mut wanted = Wanted::default();
    for (plugin, route) in routes {
        let literals: BTreeSet<String> = route.literal_codes().collect();
        for glob in route.code_globs().filter(|g| is_wildcard(g)) {
            let pattern = wildmatch::WildMatch::new(&glob);
            let known = catalog.iter().chain(&literals).any(|code| pattern.matches(code));
            if !known {
                wanted.unexpanded.push(format!("{plugin}: {glob}"));
            }
        }
        for code in catalog.iter().filter(|c| route.receives_code(c) && !literals.contains(*c)) {
            match offered {
                Some(offered) if !offered.contains(code) => {
                    wanted.not_offered.insert(code.clone());
                }
                _ => {
                    wanted.codes.insert(code.clone());
                }
            }
        }
        wanted.codes.extend(literals.into_iter().filter(|code| route.receives_code(code)));
    }
    wanted.not_offered.retain(|code| !wanted.codes.contains(code));
    wanted.unexpanded.sort();
    wanted.unexpanded.dedup();
    wanted
}

/// The bindings `codes` call for on a portal, `offline` when its offline queue is polled.
pub fn needed(codes: &BTreeSet<String>, offline: bool) -> BTreeSet<Binding> {
    let mut out: BTreeSet<Binding> = codes
        .iter()
        .map(|code| {
            // These two cannot be queued: the portal refuses an offline ONOFFLINEEVENT, and an
            // uninstall must arrive while the app still has its tokens.
            if offline && code != ON_APP_UNINSTALL && code != ON_OFFLINE_EVENT {
                Binding::offline(code)
            } else {
                Binding::online(code)
            }
        })
        .collect();
    out.insert(Binding::online(ON_APP_UNINSTALL));
    if offline {
        out.insert(Binding::online(ON_OFFLINE_EVENT));
    }
    out
}

/// The bindings in `event.get`'s `answer` that are this host's: online ones to `handler`,
/// offline ones in `connector`'s queue (`""` without one).
pub fn ours(answer: &Value, handler: &str, connector: &str) -> BTreeSet<Binding> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = BTreeSet::new();
    for entry in answer.as_array().into_iter().flatten() {
        let event = text(&entry["event"]);
        if event.is_empty() {
            continue;
        }
        let offline = matches!(text(&entry["offline"]).as_str(), "1" | "true" | "Y");
        if offline {
            if text(&entry["connector_id"]) == connector {
                out.insert(Binding::offline(&event));
            }
        } else if text(&entry["handler"]) == handler {
            out.insert(Binding::online(&event));
        }
    }
    out
}

/// Whether `event.bind` refused because the binding exists: `ERROR_CORE` "Unable to set event
/// handler: Handler already binded" (what the portal's code answers), or the
/// `ERROR_EVENT_ALREADY_INSTALLED` of older portals.
pub fn already_bound(e: &RestError) -> bool {
    let description = e.description.as_str().to_ascii_lowercase();
    e.error.as_str() == "ERROR_EVENT_ALREADY_INSTALLED"
        || (e.error.as_str() == "ERROR_CORE"
            && (description.contains("already binded") || description.contains("already bound")))
}

/// `needed` minus `bound`, and `bound` minus `needed`.
pub fn diff(
    needed: &BTreeSet<Binding>,
    bound: &BTreeSet<Binding>,
) -> (BTreeSet<Binding>, BTreeSet<Binding>) {
    (needed.difference(bound).cloned().collect(), bound.difference(needed).cloned().collect())
}

/// The codes each plugin receives, for the operator: `plugin -> codes`.
pub fn by_plugin(routes: &Routes, codes: &BTreeSet<String>) -> BTreeMap<String, Vec<String>> {
    routes
        .iter()
        .map(|(plugin, route)| {
            let mine = codes.iter().filter(|c| route.receives_code(c)).cloned().collect();
            (plugin.to_string(), mine)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use b24_plugin_api::RestErrorKind;
    use serde_json::json;

    use super::*;
    use crate::{config::PluginConfig, route::Route};

    fn route(plugin: &str, subscribed: &[&str], events: Option<&[&str]>) -> (Arc<str>, Route) {
        let config = PluginConfig {
            events: events.map(|e| e.iter().map(|g| (*g).to_owned()).collect()),
            ..PluginConfig::default()
        };
        let subscribed: Vec<String> = subscribed.iter().map(|g| (*g).to_owned()).collect();
        (Arc::from(plugin), Route::new(&subscribed, &config))
    }

    fn set(codes: &[&str]) -> BTreeSet<String> {
        codes.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn wildcards_expand_over_the_catalog_and_literals_stay_as_named() {
        let routes = vec![
            route("audit-log", &["ONCRM*USERFIELD*"], Some(&["ONCRMDEAL*"])),
            route("bot", &["OnImBotMessageAdd", "ONIMBOT*"], None),
            route("probe", &["*"], Some(&["ONCRMLEADADD", "oncrmleadupdate"])),
        ];
        let wanted = plugin_codes(&routes, None);
        assert_eq!(
            wanted.codes,
            set(&[
                "ONCRMDEALUSERFIELDADD",
                "ONCRMDEALUSERFIELDDELETE",
                "ONCRMDEALUSERFIELDSETENUMVALUES",
                "ONCRMDEALUSERFIELDUPDATE",
                "ONCRMLEADADD",
                "ONCRMLEADUPDATE",
                "ONIMBOTMESSAGEADD",
            ])
        );
        // ONIMBOT* matches the literal the plugin also names, so it is not reported; a glob
        // that matches nothing known is.
        assert!(wanted.unexpanded.is_empty(), "{:?}", wanted.unexpanded);
        let routes = vec![route("tasks", &["ONTASK*"], None)];
        let wanted = plugin_codes(&routes, None);
        assert!(wanted.codes.is_empty());
        assert_eq!(wanted.unexpanded, ["tasks: ONTASK*"]);
    }

    #[test]
    fn codes_the_portal_does_not_offer_are_left_out_unless_named() {
        let routes = vec![route("a", &["ONCRMINVOICEUSERFIELD*", "ONCRMSHIPMENTADD"], None)];
        let offered = set(&["ONCRMINVOICEUSERFIELDADD", "ONAPPUNINSTALL"]);
        let wanted = plugin_codes(&routes, Some(&offered));
        assert_eq!(wanted.codes, set(&["ONCRMINVOICEUSERFIELDADD", "ONCRMSHIPMENTADD"]));
        assert_eq!(wanted.not_offered.len(), 3, "{:?}", wanted.not_offered);
    }

    #[test]
    fn an_offline_portal_queues_the_codes_and_binds_the_nudge_and_the_uninstall_online() {
        let codes = set(&["ONCRMDEALUSERFIELDADD", "ONAPPUNINSTALL"]);
        let online: Vec<String> = needed(&codes, false).iter().map(|b| b.to_string()).collect();
        assert_eq!(online, ["ONAPPUNINSTALL", "ONCRMDEALUSERFIELDADD"]);
        let offline: Vec<String> = needed(&codes, true).iter().map(|b| b.to_string()).collect();
        assert_eq!(
            offline,
            ["ONAPPUNINSTALL", "ONCRMDEALUSERFIELDADD (offline)", "ONOFFLINEEVENT"]
        );
    }

    #[test]
    fn only_this_hosts_handler_and_connector_count_as_ours() {
        let answer = json!([
            {"event": "ONCRMDEALUSERFIELDADD", "handler": "https://h.example/e", "auth_type": "0", "offline": 0},
            {"event": "onappuninstall", "handler": "https://h.example/e", "auth_type": "1", "offline": 0},
            {"event": "ONCRMLEADADD", "handler": "https://other.example/", "auth_type": "0", "offline": 0},
            {"event": "ONCRMLEADUPDATE", "connector_id": "", "offline": 1},
            {"event": "ONCRMLEADDELETE", "connector_id": "b24host", "offline": 1},
        ]);
        let mine: Vec<String> =
            ours(&answer, "https://h.example/e", "").iter().map(|b| b.to_string()).collect();
        assert_eq!(mine, ["ONAPPUNINSTALL", "ONCRMDEALUSERFIELDADD", "ONCRMLEADUPDATE (offline)"]);
        let mine = ours(&answer, "https://h.example/e", "b24host");
        assert!(mine.contains(&Binding::offline("ONCRMLEADDELETE")));
        assert!(!mine.contains(&Binding::offline("ONCRMLEADUPDATE")));
        let (missing, extra) = diff(
            &needed(&set(&["ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDUPDATE"]), false),
            &ours(&answer, "https://h.example/e", ""),
        );
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            [Binding::online("ONCRMDEALUSERFIELDUPDATE")]
        );
        assert_eq!(extra.into_iter().collect::<Vec<_>>(), [Binding::offline("ONCRMLEADUPDATE")]);
    }

    #[test]
    fn every_spelling_of_bound_already_counts() {
        let refusal = |code: &str, description: &str| RestError {
            kind: RestErrorKind::Api,
            status: 400,
            error: code.into(),
            description: description.into(),
        };
        assert!(already_bound(&refusal(
            "ERROR_CORE",
            "Unable to set event handler: Handler already binded"
        )));
        assert!(already_bound(&refusal("ERROR_EVENT_ALREADY_INSTALLED", "")));
        assert!(!already_bound(&refusal(
            "ERROR_CORE",
            "Unable to set event handler: Process of binding the handler has already started"
        )));
        assert!(!already_bound(&refusal("ERROR_EVENT_NOT_FOUND", "Event not found")));
    }
}
