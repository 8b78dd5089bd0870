//! The control protocol and socket (`state_dir/control.sock`): how `b24-host journal ...`,
//! `b24-host plugin pause|resume` and `b24-host offline ...` reach a running host, whose journal is locked by the host (the
//! embedded journal's file lock; on the NATS backend the `journal` commands open the shared
//! log themselves, which no host locks, and only `offline` needs the socket). Requests
//! and answers are [`Request`]/[`Response`] as JSON over HTTP/1 on a Unix socket, which only
//! users with access to the state folder can open. The journal answers with plain data
//! (`journal::admin`); this module wraps it into the protocol, adds what only the running host
//! knows (runner states, offline pollers) and answers a stopped host's journal too
//! ([`answer_journal`]).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    bind::{Binder, Mode, PortalBindings, already_bound},
    journal::{
        Operator, Selection,
        admin::{DeadRow, EventDetail, EventSummary, PluginStats},
        pause::Paused,
    },
    offline::{Pollers, PortalStatus},
    rest::{EventContext, RestClient},
    runner::RunnerState,
};

/// A question or change for the journal, or the offline pollers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "request")]
pub enum AdminRequest {
    /// Per-plugin backlog, retrying, dead letters, oldest pending age.
    Stats {
        /// The enabled plugins (listed even with nothing pending).
        enabled: Vec<String>,
    },
    /// The newest events.
    List {
        /// How many.
        limit: usize,
    },
    /// One event in detail.
    Show {
        /// Its id.
        id: u64,
    },
    /// Dead letters.
    Dead {
        /// Only this plugin's.
        plugin: Option<String>,
    },
    /// Put dead letters back into delivery.
    Replay(Selection),
    /// Delete dead letters.
    Purge(Selection),
    /// Move pending events of one plugin to its dead letters ("skipped by an operator").
    Skip {
        /// The plugin.
        plugin: String,
        /// The event ids.
        ids: Vec<u64>,
    },
    /// Pause a plugin (`b24-host plugin pause`): it receives nothing until resumed.
    Pause {
        /// The plugin.
        plugin: String,
        /// Where the operator asked (`command line`).
        via: String,
    },
    /// Resume a paused plugin (`b24-host plugin resume`).
    Resume {
        /// The plugin.
        plugin: String,
    },
    /// Offline pollers' status (running host only).
    OfflineStatus,
    /// Subscribe a portal's offline events with `event.bind` (running host only: it has the
    /// portal's tokens and REST client).
    OfflineBind {
        /// The portal's member_id.
        portal: String,
        /// Event codes.
        events: Vec<String>,
    },
    /// Bind what the plugins receive, or only check (running host only: the binder).
    Bind {
        /// Only this portal; every known one when `None`.
        portal: Option<String>,
        /// Check only: bind nothing.
        check: bool,
    },
}

/// One plugin's line of `journal stats`: the journal's numbers and, on a running host in
/// process isolation, its runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLine {
    /// The journal's numbers.
    #[serde(flatten)]
    pub stats: PluginStats,
    /// The plugin's runner process (process isolation, running host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerState>,
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "response")]
pub enum AdminResponse {
    /// For `Stats`.
    Stats {
        /// One entry per plugin.
        plugins: Vec<PluginLine>,
        /// Events in the journal.
        events: u64,
    },
    /// For `List`.
    List {
        /// Newest first.
        events: Vec<EventSummary>,
    },
    /// For `Show`.
    Show {
        /// `None` when there is no such event.
        event: Option<Box<EventDetail>>,
    },
    /// For `Dead`.
    Dead {
        /// The dead letters.
        rows: Vec<DeadRow>,
    },
    /// For `Replay` and `Purge`: the (plugin, event id) pairs changed.
    Changed {
        /// The pairs.
        rows: Vec<(String, u64)>,
    },
    /// For `Skip`.
    Skipped {
        /// The plugin.
        plugin: String,
        /// The events moved to its dead letters.
        skipped: Vec<u64>,
        /// The ids asked for that had no pending row of the plugin (finished, dead, unknown).
        not_pending: Vec<u64>,
    },
    /// For `Pause` and `Resume`.
    Paused(Paused),
    /// For `OfflineStatus`.
    Offline {
        /// One entry per polled portal.
        portals: Vec<PortalStatus>,
    },
    /// For `OfflineBind`: the codes bound.
    Bound {
        /// The codes.
        events: Vec<String>,
    },
    /// For `Bind`: each portal's bindings and installation.
    Bindings {
        /// `bind.handler`; `None`: binding is off (only the installation is checked).
        handler: Option<String>,
        /// One report per portal.
        portals: Vec<PortalBindings>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Answers a journal request from `journal` (a running host's, or one a command opened while
/// the host is stopped). The offline requests need the running host: an error here.
pub async fn answer_journal(journal: &Operator, request: AdminRequest) -> AdminResponse {
    let fail = |e: crate::journal::StoreError| AdminResponse::Error { message: e.to_string() };
    match request {
        AdminRequest::Stats { enabled } => match journal.stats(enabled).await {
            Ok(stats) => AdminResponse::Stats {
                plugins: stats
                    .plugins
                    .into_iter()
                    .map(|stats| PluginLine { stats, runner: None })
                    .collect(),
                events: stats.events,
            },
            Err(e) => fail(e),
        },
        AdminRequest::List { limit } => {
            journal.list(limit).await.map_or_else(fail, |events| AdminResponse::List { events })
        }
        AdminRequest::Show { id } => crate::operations::show(journal, id)
            .await
            .map_or_else(fail, |event| AdminResponse::Show { event: event.map(Box::new) }),
        AdminRequest::Dead { plugin } => {
            journal.dead(plugin).await.map_or_else(fail, |rows| AdminResponse::Dead { rows })
        }
        AdminRequest::Replay(which) => {
            journal.replay(which).await.map_or_else(fail, |rows| AdminResponse::Changed { rows })
        }
        AdminRequest::Purge(which) => {
            journal.purge(which).await.map_or_else(fail, |rows| AdminResponse::Changed { rows })
        }
        AdminRequest::Skip { plugin, ids } => journal.skip(plugin, ids).await.map_or_else(fail, |s| {
            AdminResponse::Skipped { plugin: s.plugin, skipped: s.skipped, not_pending: s.not_pending }
        }),
        AdminRequest::Pause { plugin, via } => journal
            .operator_pause(&plugin, Some(&via))
            .await
            .map_or_else(fail, AdminResponse::Paused),
        AdminRequest::Resume { plugin } => {
            journal.operator_pause(&plugin, None).await.map_or_else(fail, AdminResponse::Paused)
        }
        AdminRequest::OfflineStatus
        | AdminRequest::OfflineBind { .. }
        | AdminRequest::Bind { .. } => AdminResponse::Error {
            message: "the host is not running: offline status and binding need the running host (its pollers, tokens and REST client)".into(),
        },
    }
}

/// The socket's path inside the state folder.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Binds the control socket, replacing a stale one left by a crashed host.
pub fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Owner only: the socket can read and change the journal.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What the control socket can reach in the running host.
#[derive(Clone)]
pub struct Reach {
    /// The journal.
    pub journal: Operator,
    /// The offline pollers.
    pub pollers: Arc<Pollers>,
    /// The binder (for `bind`).
    pub binder: Arc<Binder>,
    /// The REST client (for `offline bind`).
    pub rest: Arc<RestClient>,
    /// The plugins (their runners, for `journal stats`).
    pub supervisor: Arc<crate::supervisor::Supervisor>,
}

/// Answers control requests until the task is dropped.
pub async fn serve(listener: UnixListener, reach: Reach) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let reach = reach.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let reach = reach.clone();
                async move {
                    let answer = match request.into_body().collect().await {
                        Ok(body) => {
                            match serde_json::from_slice::<AdminRequest>(&body.to_bytes()) {
                                Ok(request) => execute(&reach, request).await,
                                Err(e) => {
                                    AdminResponse::Error { message: format!("bad request: {e}") }
                                }
                            }
                        }
                        Err(e) => AdminResponse::Error {
                            message: format!("cannot read the request: {e}"),
                        },
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Runs one request against the running host.
async fn execute(reach: &Reach, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::OfflineStatus => AdminResponse::Offline { portals: reach.pollers.status() },
        AdminRequest::OfflineBind { portal, events } => bind_offline(reach, &portal, &events).await,
        AdminRequest::Bind { portal, check } => {
            let mode = if check { Mode::Check } else { Mode::Bind };
            let portals = reach.binder.run(portal, mode).await;
            AdminResponse::Bindings { handler: reach.binder.handler().map(str::to_owned), portals }
        }
        request => match answer_journal(&reach.journal, request).await {
            AdminResponse::Stats { mut plugins, events } => {
                let runners: std::collections::BTreeMap<_, _> =
                    reach.supervisor.runners().into_iter().collect();
                for p in &mut plugins {
                    p.runner = runners.get(&p.stats.plugin).cloned();
                }
                AdminResponse::Stats { plugins, events }
            }
            other => other,
        },
    }
}

/// `event.bind` with `event_type=offline` for each code, with the portal's stored OAuth tokens
/// (the REST client adds the portal's `auth_connector`, so the binding is the poller's queue).
async fn bind_offline(reach: &Reach, portal: &str, events: &[String]) -> AdminResponse {
    let (client_endpoint, server_endpoint) = reach.rest.stored_endpoints(portal).await;
    let ctx = EventContext { client_endpoint, server_endpoint, ..EventContext::app(portal) };
    let mut bound = Vec::new();
    for code in events {
        let params =
            serde_json::json!({ "event": code.to_ascii_uppercase(), "event_type": "offline" });
        match reach.rest.call_as_app(&ctx, "event.bind", params).await {
            Ok(_) => bound.push(code.to_ascii_uppercase()),
            // "Bound already", in any of the portal's spellings.
            Err(e) if already_bound(&e) => bound.push(code.to_ascii_uppercase()),
            Err(e) => {
                return AdminResponse::Error {
                    message: format!("event.bind {code} failed: {e} (bound so far: {bound:?})"),
                };
            }
        }
    }
    AdminResponse::Bound { events: bound }
}

/// Why the running host could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the running host through {}: {reason}", .path.display())]
pub struct AskError {
    path: PathBuf,
    reason: String,
}

/// Sends `request` to the host whose state folder is `state_dir`.
pub async fn ask(state_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AskError> {
    let path = socket_path(state_dir);
    let fail = |reason: String| AskError { path: path.clone(), reason };
    let stream = UnixStream::connect(&path).await.map_err(|e| fail(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(connection);
    let body = serde_json::to_vec(request).map_err(|e| fail(e.to_string()))?;
    let request = Request::post("/journal")
        .header(hyper::header::HOST, "b24-host")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let body = response.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| fail(format!("bad answer: {e}")))
}
