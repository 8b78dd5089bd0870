//! **audit-log**: a b24-host plugin that appends one JSON line per CRM user-field event to a file.
//!
//! Each line records when the host received the event, the portal (`member_id`, `domain`), the
//! event code, the action, the entity, the field's id and name, and who caused it (`user_id`;
//! `"unknown"` when the portal sent a user's token without `auth[user_id]`; `"system"` for
//! automation). Tokens are never written. Lines are flushed one by one, so a crash
//! loses nothing the plugin reported as done.
//!
//! Settings (`[plugin.audit-log.settings]` in host.toml):
//!
//! ```toml
//! path = "audit.jsonl"   # relative to the folder of host.toml
//! ```

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::Mutex,
};

use b24_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

/// The plugin's settings.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Settings {
    /// Where to append the lines.
    path: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { path: "audit.jsonl".to_owned() }
    }
}

/// One line of the audit log.
#[derive(Serialize)]
struct Line<'a> {
    event_id: u64,
    received_at_ms: i64,
    member_id: &'a str,
    domain: &'a str,
    event: &'a str,
    action: &'a str,
    entity: &'a str,
    entity_id: &'a str,
    field_id: u64,
    field_name: &'a str,
    user: String,
}

/// Appends audit lines to one file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl Create for AuditLog {
    fn create(ctx: PluginContext) -> Result<Self, PluginError> {
        let settings: Settings = ctx.settings()?;
        let path = ctx.host.resolve_path(&settings.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                PluginError::reject(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| {
            PluginError::reject(format!("cannot open {} for appending: {e}", path.display()))
        })?;
        ctx.host.info(&format!("appending to {}", path.display()));
        Ok(AuditLog { path, file: Mutex::new(file) })
    }
}

impl Plugin for AuditLog {
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        let user = match event.user() {
            // A user's token without `auth[user_id]`: someone, but not user 0.
            Some(_) if event.delivery.user_id_unknown() => "unknown".to_owned(),
            Some(user) => user.user_id.to_string(),
            None => "system".to_owned(),
        };
        let line = Line {
            event_id: event.delivery.event_id,
            received_at_ms: event.delivery.received_at_ms,
            member_id: &event.portal.member_id,
            domain: &event.portal.domain,
            event: &event.code,
            action: event.action.as_str(),
            entity: event.entity.name(),
            entity_id: &event.entity_id,
            field_id: event.field_id,
            field_name: &event.field_name,
            user,
        };
        let mut text = serde_json::to_string(&line)
            .map_err(|e| PluginError::reject(format!("cannot encode the line: {e}")))?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(text.as_bytes()).and_then(|()| file.flush()).map_err(|e| {
            PluginError::retry(format!("cannot write {}: {e}", self.path.display()))
        })?;
        Ok(Outcome::Done)
    }

    fn shutdown(&self) {
        let file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = file.sync_all();
    }
}

export_plugin!(AuditLog);
