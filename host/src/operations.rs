//! What an operator can do to the running host, and what they read of it: [`Ops`], the
//! handle the admin listener (`ops.rs`) and the web console (`console/`) share: why the host is
//! not ready, pausing and resuming a plugin, a reload. It knows neither listener nor page, so
//! both can use it without importing each other.

use std::{path::PathBuf, sync::Arc};

use hyper::StatusCode;

use crate::{
    auth::Verifier,
    bind::Binder,
    config::Config,
    journal::{Operator, pause::Paused},
    metrics::Metrics,
    offline::Pollers,
    supervisor::{ReloadReport, Supervisor},
};

/// What the admin listener and the console reach of the running host.
#[derive(Clone)]
pub struct Ops {
    /// Token checks: `[auth]` applies on reload.
    pub verifier: Arc<Verifier>,
    /// The plugins.
    pub supervisor: Arc<Supervisor>,
    /// The journal, as the operator sees it.
    pub journal: Operator,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The config file to re-read on reload (`None`: embedded defaults, nothing to re-read).
    pub config_path: Option<PathBuf>,
    /// The offline pollers, for the console's overview.
    pub pollers: Arc<Pollers>,
    /// The binder, for the console's portals page.
    pub binder: Arc<Binder>,
}

impl Ops {
    /// Why the host is not ready, if it is not.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .supervisor
            .failures()
            .into_iter()
            .map(|(name, reason)| format!("plugin {name}: {reason}"))
            .collect();
        for (name, runner) in self.supervisor.runners() {
            if runner.state != "running" {
                let last = runner.last_exit.as_deref().unwrap_or("-");
                out.push(format!(
                    "plugin {name}: its runner is {} (last exit: {last})",
                    runner.state
                ));
            }
        }
        if let Some(e) = self.journal_unwritable() {
            out.push(format!("the journal is not writable: {e}"));
        }
        out.extend(self.journal.damage());
        out
    }

    /// Why the journal takes no writes now, if it does not.
    pub(crate) fn journal_unwritable(&self) -> Option<String> {
        // A host that spools still takes events (writable, ready; the `/readyz` body says it
        // spools) unless its spool cannot be written either: the NATS backend's write error.
        self.journal.last_write_error()
    }

    /// Pauses (`pause`) or resumes plugin `name` through the journal, `via` naming where the
    /// operator asked (`console`, `admin API`; see `Journal::operator_pause`). Only an enabled
    /// plugin can be paused (404); any paused one can be resumed.
    pub async fn set_pause(
        &self,
        name: &str,
        pause: bool,
        via: &str,
    ) -> Result<Paused, (StatusCode, String)> {
        let enabled = self.supervisor.names();
        if !enabled.iter().any(|n| n == name) && (pause || self.journal.paused(name).is_none()) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no enabled plugin {name:?} (enabled: {})", enabled.join(", ")),
            ));
        }
        self.journal.operator_pause(name, pause.then_some(via)).await.map_err(|e| {
            (StatusCode::SERVICE_UNAVAILABLE, format!("the journal did not store it: {e}"))
        })
    }

    /// Re-reads host.toml and applies it; the status tells the reload command how it went.
    pub async fn reload(&self) -> (StatusCode, ReloadOutcome) {
        let Some(path) = &self.config_path else {
            return (
                StatusCode::BAD_REQUEST,
                ReloadOutcome::Error(
                    "the host runs on its embedded defaults: there is no config file to re-read"
                        .into(),
                ),
            );
        };
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                // The same text `b24-host reload` prints: file, line, column, key.
                tracing::error!("reload refused, the running config stays: {e}");
                return (StatusCode::BAD_REQUEST, ReloadOutcome::Error(e.to_string()));
            }
        };
        self.verifier.reconfigure(&config.auth);
        let report = self.supervisor.reload(config).await;
        let status = if report.ok() { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
        (status, ReloadOutcome::Done(report))
    }
}

/// The answer to `POST /reload`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The reload ran; see the report.
    Done(ReloadReport),
    /// It could not start (bad host.toml).
    Error(String),
}

/// Event `id` in detail as an operator reads it (the console's page, `journal show`): the
/// journal's detail with the decoded event, every token redacted, filled in here, since the
/// journal does not decode.
pub async fn show(
    journal: &Operator,
    id: u64,
) -> Result<Option<crate::journal::admin::EventDetail>, crate::journal::StoreError> {
    let Some(mut detail) = journal.show(id).await? else { return Ok(None) };
    detail.decoded = match &detail.record {
        Some(record) => match crate::decode::decode(&record.raw, record.meta.format) {
            Ok(event) => crate::decode::redact::redacted(&event),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        None => serde_json::json!({ "error": "the record on the log fails its checksum" }),
    };
    Ok(Some(detail))
}
