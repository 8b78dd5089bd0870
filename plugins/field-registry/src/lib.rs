//! **field-registry**: a b24-host plugin that keeps, per portal, a live copy of every CRM custom
//! field's definition.
//!
//! On each `ONCRM*USERFIELD{ADD,UPDATE,SETENUMVALUES}` event it reads the field back through the
//! host's REST call (`crm.<entity>.userfield.get`, or `userfieldconfig.get` for smart processes,
//! smart invoices and smart documents), normalises the answer and stores it; on
//! `...USERFIELDDELETE` it marks the field deleted, keeping its name and entity. A burst of
//! events for one field is read once: an event received before a stored read started needs no
//! new read. After every change the portal's registry is written atomically to
//! `<dir>/<member_id>.json` (see [`Snapshot`]), and the snapshots are loaded again on start.
//!
//! The plugin answers `Retry` when the portal is unreachable or over its rate limit, and when a
//! snapshot cannot be written; `Reject` for other REST failures. It never sees or stores tokens:
//! the host makes the REST calls.
//!
//! Settings (`[plugin.field-registry.settings]` in host.toml):
//!
//! ```toml
//! dir = "field-registry"   # the snapshot folder; relative to the folder of host.toml
//! ```
//!
//! The code: [`fetch`] reads and normalises a field, [`registry`] applies events, [`snapshot`]
//! writes and loads the files; this module wires them into the host.

#![warn(missing_docs)]

pub mod fetch;
pub mod registry;
pub mod snapshot;

use std::sync::Mutex;

use b24_plugin_api::prelude::*;
use serde::Deserialize;

pub use fetch::{FieldDef, ListValue, Portal};
pub use registry::{Applied, Registry};
pub use snapshot::Snapshot;

/// The plugin's settings, `[plugin.field-registry.settings]`.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The folder for the snapshots; relative paths are taken against the folder of host.toml.
    pub dir: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { dir: "field-registry".to_owned() }
    }
}

/// The plugin: the registry behind a lock, and the host that makes its REST calls.
pub struct FieldRegistry {
    host: Host,
    registry: Mutex<Registry>,
}

impl Create for FieldRegistry {
    fn create(ctx: PluginContext) -> Result<Self, PluginError> {
        let settings: Settings = ctx.settings()?;
        if settings.dir.trim().is_empty() {
            return Err(PluginError::reject("field-registry settings: `dir` must not be empty"));
        }
        let dir = ctx.host.resolve_path(&settings.dir);
        let registry = Registry::open(&dir)
            .map_err(|e| PluginError::reject(format!("field-registry: {e}")))?;
        let fields: usize = registry
            .member_ids()
            .filter_map(|m| registry.portal(m))
            .map(|snapshot| snapshot.fields.len())
            .sum();
        ctx.host.info(&format!(
            "snapshots in {}: {} portal(s), {fields} field(s) loaded",
            dir.display(),
            registry.member_ids().count()
        ));
        Ok(FieldRegistry { host: ctx.host, registry: Mutex::new(registry) })
    }
}

impl Plugin for FieldRegistry {
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        // A panic while the lock was held leaves the registry consistent: memory only changes
        // after a snapshot was written.
        let mut registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let applied = registry.apply(event, &self.host)?;
        let line = format!(
            "{} field {} ({}) of {} on portal {}: {}",
            event.code,
            event.field_id,
            event.field_name,
            event.entity_id,
            event.portal.member_id,
            applied.as_str()
        );
        match applied.outcome() {
            Outcome::Done => self.host.info(&line),
            Outcome::Skipped => self.host.debug(&line),
        }
        Ok(applied.outcome())
    }
}

export_plugin!(FieldRegistry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribes_to_user_field_events_one_at_a_time() {
        assert_eq!(<FieldRegistry as Plugin>::EVENTS, &["ONCRM*USERFIELD*"]);
        const { assert!(!<FieldRegistry as Plugin>::CONCURRENT) };
    }
}
