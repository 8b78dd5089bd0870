//! The control socket (`state_dir/control.sock`): how `b24-host journal ...` reaches a running
//! host, whose journal file is locked by the host. Requests and answers are
//! [`admin::Request`]/[`admin::Response`] as JSON over HTTP/1 on a Unix socket, which only
//! users with access to the state folder can open.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use std::sync::Arc;

use crate::{
    journal::{
        Journal,
        admin::{self, Request as AdminRequest, Response as AdminResponse},
    },
    offline::Pollers,
    rest::{EventContext, RestClient},
};

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
    pub journal: Journal,
    /// The offline pollers.
    pub pollers: Arc<Pollers>,
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
    let journal = &reach.journal;
    match &request {
        AdminRequest::OfflineStatus => {
            return AdminResponse::Offline { portals: reach.pollers.status() };
        }
        AdminRequest::OfflineBind { portal, events } => {
            return bind_offline(reach, portal, events).await;
        }
        _ => {}
    }
    if let Some(op) = admin::change(&request) {
        return match journal.admin(op).await {
            Ok(rows) => admin::changed(&request, rows),
            Err(e) => AdminResponse::Error { message: e.to_string() },
        };
    }
    let journal = journal.clone();
    let answer = tokio::task::spawn_blocking(move || match journal.database() {
        Ok(database) => admin::read(&database, &request),
        Err(e) => Some(Err(e)),
    })
    .await;
    match answer {
        Ok(Some(Ok(AdminResponse::Stats { mut plugins, events }))) => {
            let runners: std::collections::BTreeMap<_, _> =
                reach.supervisor.runners().into_iter().collect();
            for p in &mut plugins {
                p.runner = runners.get(&p.plugin).cloned();
            }
            AdminResponse::Stats { plugins, events }
        }
        Ok(Some(Ok(response))) => response,
        Ok(Some(Err(e))) => AdminResponse::Error { message: e.to_string() },
        Ok(None) => AdminResponse::Error { message: "unknown request".into() },
        Err(e) => AdminResponse::Error { message: e.to_string() },
    }
}

/// `event.bind` with `event_type=offline` for each code, with the portal's stored OAuth tokens
/// (the REST client adds the portal's `auth_connector`, so the binding is the poller's queue).
async fn bind_offline(reach: &Reach, portal: &str, events: &[String]) -> AdminResponse {
    let (client_endpoint, server_endpoint) = reach.rest.stored_endpoints(portal);
    let ctx = EventContext {
        member_id: portal.to_owned(),
        domain: String::new(),
        client_endpoint,
        server_endpoint,
        user_token: None,
    };
    let mut bound = Vec::new();
    for code in events {
        let params =
            serde_json::json!({ "event": code.to_ascii_uppercase(), "event_type": "offline" });
        match reach.rest.call_as_app(&ctx, "event.bind", params).await {
            Ok(_) => bound.push(code.to_ascii_uppercase()),
            Err(e) if e.error.as_str() == "ERROR_EVENT_ALREADY_INSTALLED" => {
                bound.push(code.to_ascii_uppercase())
            }
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
