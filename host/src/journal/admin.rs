//! What the journal tells and lets an operator change, as plain data: per-plugin statistics,
//! event listings, one event in detail (tokens redacted), dead letters, and the outcome of
//! replay, purge and skip. Every backend answers with these types; how they travel (the
//! control socket) and how they print (the `journal` commands) is `control.rs`'s and the
//! commands' business, not the journal's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{DeadLetter, Pending};
use crate::decode;

/// The reason of a dead letter that `journal skip` made.
pub const SKIPPED: &str = "skipped by an operator";

/// Which dead letters an admin command applies to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// Only this plugin's (all plugins when `None`).
    pub plugin: Option<String>,
    /// Only these event ids (all when empty).
    pub ids: Vec<u64>,
}

impl Selection {
    /// Whether the dead letter of `plugin` for event `id` is selected.
    pub fn matches(&self, plugin: &str, id: u64) -> bool {
        self.plugin.as_deref().is_none_or(|p| p == plugin)
            && (self.ids.is_empty() || self.ids.contains(&id))
    }
}

/// One plugin's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStats {
    /// The plugin.
    pub plugin: String,
    /// Events not yet delivered (pending rows).
    pub backlog: u64,
    /// Of those, events that failed or crashed at least once.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Age of the oldest pending event, ms.
    pub oldest_pending_age_ms: Option<i64>,
}

/// The journal's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// One entry per plugin: the enabled ones, and any other with rows.
    pub plugins: Vec<PluginStats>,
    /// Events in the journal.
    pub events: u64,
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    /// Event id.
    pub id: u64,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: i64,
    /// Event code.
    pub code: String,
    /// Portal.
    pub member_id: String,
    /// Plugins still to deliver to.
    pub pending: Vec<String>,
    /// Plugins that gave up on it.
    pub dead: Vec<String>,
}

/// One event in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    /// The summary.
    pub summary: EventSummary,
    /// The decoded event with every token redacted.
    pub decoded: serde_json::Value,
    /// Per plugin still pending: attempts and last error.
    pub pending_state: BTreeMap<String, Pending>,
    /// Per plugin dead: why.
    pub dead_state: BTreeMap<String, DeadLetter>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRow {
    /// The plugin.
    pub plugin: String,
    /// The event.
    pub id: u64,
    /// Its code.
    pub code: String,
    /// Its portal.
    pub member_id: String,
    /// Why it is dead.
    pub dead: DeadLetter,
}

/// What `journal skip` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The plugin.
    pub plugin: String,
    /// The events moved to its dead letters.
    pub skipped: Vec<u64>,
    /// The ids asked for that had no pending row of the plugin (finished, dead, unknown).
    pub not_pending: Vec<u64>,
}

impl Skipped {
    /// The answer to skipping `ids` of `plugin` when the (plugin, id) pairs `moved` were moved.
    pub fn of(plugin: &str, ids: &[u64], moved: Vec<(String, u64)>) -> Skipped {
        let skipped: Vec<u64> = moved.into_iter().map(|(_, id)| id).collect();
        let mut not_pending: Vec<u64> =
            ids.iter().copied().filter(|id| !skipped.contains(id)).collect();
        not_pending.dedup();
        Skipped { plugin: plugin.to_owned(), skipped, not_pending }
    }
}

/// The decoded event as JSON, tokens replaced by `<redacted>`.
pub fn redacted(event: &decode::Decoded) -> serde_json::Value {
    let auth = &event.auth;
    let hidden = |present: bool| {
        if present { serde_json::json!("<redacted>") } else { serde_json::Value::Null }
    };
    serde_json::json!({
        "event": event.code,
        "event_handler_id": event.handler_id,
        "ts": event.ts,
        "data": event.data.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        "auth": {
            "member_id": auth.member_id,
            "domain": auth.domain,
            "client_endpoint": auth.client_endpoint,
            "server_endpoint": auth.server_endpoint,
            "status": auth.status,
            "application_token": hidden(!auth.application_token.is_empty()),
            "user_id": auth.user.as_ref().map(|u| u.user_id.map_or(serde_json::json!("unknown"), |id| serde_json::json!(id))),
            "scope": auth.user.as_ref().map(|u| u.scope.clone()),
            "access_token": hidden(auth.user.is_some()),
            "refresh_token": hidden(auth.refresh_token.is_some()),
        },
    })
}
