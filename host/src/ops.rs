//! The admin listener, apart from the public event endpoint (loopback by default):
//! `GET /healthz` (the process answers), `GET /readyz` (journal writable and every enabled
//! plugin loaded, else 503 with the reasons; the body says what the log does: embedded,
//! shared log acknowledging, or spooling, which still takes events and stays 200 while the
//! spool can be written),
//! `GET /metrics` (Prometheus text 0.0.4, or
//! OpenMetrics when `Accept` prefers it) and
//! `POST /reload` (re-read host.toml and the plugins folder; 200 with the report, 500 when a
//! plugin failed to reload and kept its old instance, 400 when host.toml is invalid),
//! `POST /plugins/NAME/pause` and `POST /plugins/NAME/resume` (`journal::pause`; 200 with the
//! plugin's pause as JSON, 404 for a plugin that is not enabled; a browser's form gets a 303
//! back to the console's Plugins page), and the web console (`console/`) on every other path.
//! With `admin.token` everything but `/healthz` and `/static/*` needs the token (bearer) or a
//! console session; the POSTs pass the console's CSRF rule. `/readyz` stays 200 for a paused
//! plugin (the operator's choice, not a fault) and names it in its body. Every answer carries
//! `Server-Timing: app;dur=<ms>`.
//!
//! The listener has limits of its own, so that no client of it can take what the event
//! listener needs: at most `admin.max_connections` open (503 past it), the event listener's
//! header and whole-request deadlines (an idle connection is closed after
//! `server.header_read_timeout_ms`), a body of at most 64 KiB read whole before the request is
//! handled (handling itself, a reload say, has no deadline), and accepting with back-off.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE,
    server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{
    conn::{self, Acceptor, DeadlineIo, Limiter, RequestRead},
    console::{self, Console},
    journal::admin::Stats,
    metrics::{Metrics, PluginLabel},
    operations::Ops,
    supervisor::Supervisor,
};

/// The admin listener's limits.
pub struct Limits {
    /// Its open connections (`admin.max_connections`).
    pub connections: Limiter,
    /// `server.header_read_timeout_ms`: also how long an idle connection is kept.
    pub header_read_timeout: Duration,
    /// `server.request_read_timeout_ms`: a request's head and body, from its first byte.
    pub request_read_timeout: Duration,
}

/// How long a scrape waits for the journal's numbers (a shared log may not answer).
const STATS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

fn text(
    status: StatusCode,
    body: impl Into<String>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// Serves the admin endpoints (the console's pages with `console`'s login and sessions)
/// within `limits` until the task is dropped.
pub async fn serve(ops: Ops, console: Console, listener: TcpListener, limits: Limits) {
    Listener { ops, console: Arc::new(console) }.serve(listener, limits).await
}

/// The admin listener: the host's [`Ops`] and the console's login and sessions.
struct Listener {
    ops: Ops,
    console: Arc<Console>,
}

impl Listener {
    async fn serve(self, listener: TcpListener, limits: Limits) {
        let ops = Arc::new(self);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
        let mut listener = Acceptor::new(listener, "admin");
        loop {
            let (stream, peer) = listener.accept().await;
            let Some(slot) = limits.connections.try_acquire() else {
                tracing::debug!(%peer, "admin.max_connections reached: 503");
                limits.connections.reject(stream, conn::BUSY);
                continue;
            };
            let io = DeadlineIo::new(stream, limits.request_read_timeout);
            let read = io.request_read();
            let ops = ops.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (ops, read) = (ops.clone(), read.clone());
                    async move { Ok::<_, Infallible>(ops.handle(request, peer, &read).await) }
                });
                let _ = http.serve_connection(TokioIo::new(io), service).await;
                drop(slot);
            });
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        read: &RequestRead,
    ) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let (head, body) = request.into_parts();
        // The body is read whole under the request's deadline; handling it then has none.
        let body = match Limited::new(body, console::MAX_BODY_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is larger than 64 KiB\n",
                    "text/plain; charset=utf-8",
                );
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}\n"),
                    "text/plain; charset=utf-8",
                );
            }
        };
        read.done();
        let mut response = self.route(Request::from_parts(head, body), peer).await;
        console::server_timing(&mut response, started);
        response
    }

    async fn route(&self, request: Request<Bytes>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if request.method() == Method::GET {
            if path == "/healthz" {
                return text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8");
            }
            if let Some(asset) = path.strip_prefix("/static/").and_then(|_| console::asset(path)) {
                return asset;
            }
        }
        if !self.console.host_allowed(request.headers()) {
            return text(
                StatusCode::FORBIDDEN,
                "this admin listener has no admin.token and answers only to localhost or an IP \
                 address in the Host header (a protection against DNS rebinding); set admin.token \
                 to reach it under a name\n",
                "text/plain; charset=utf-8",
            );
        }
        let who = match self.console.identify(request.headers(), peer.ip()).await {
            Ok(who) => who,
            Err(console::TooManyFailures) => return console::too_many_failures(),
        };
        if path == "/login" {
            return console::login(&self.console, who, request, peer.ip()).await;
        }
        if matches!(who, console::Who::Nobody) {
            return console::unauthorized(request.method(), path);
        }
        if request.method() == Method::POST
            && let Some((name, pause)) = plugin_action(path)
        {
            let name = name.to_owned();
            return self.pause_request(&who, &request, &name, pause).await;
        }
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/readyz") => {
                let problems = self.ops.problems();
                // Spooling is taking events: still ready; the body says so.
                let mut log = format!("log: {}\n", self.ops.journal.log_state());
                let spooled = self.ops.journal.spooled_events();
                if spooled > 0 {
                    log.push_str(&format!(
                        "spool: {spooled} events on this host not yet on the shared log\n"
                    ));
                }
                // Paused is the operator's choice (or the plugin's own breaker): still ready.
                for (name, pause) in self.ops.journal.pauses() {
                    log.push_str(&format!(
                        "paused: plugin {name}: {}; its events wait in the journal\n",
                        pause.describe()
                    ));
                }
                if problems.is_empty() {
                    text(StatusCode::OK, format!("ready\n{log}"), "text/plain; charset=utf-8")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n{log}", problems.join("\n")),
                        "text/plain; charset=utf-8",
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let accept = request
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Every enabled plugin is listed, so a drained backlog reads 0 rather than its
                // last value.
                // A shared log that does not answer must not hold up the scrape.
                let stats = tokio::time::timeout(
                    STATS_PATIENCE,
                    self.ops.journal.stats(self.ops.supervisor.names()),
                )
                .await
                .ok()
                .and_then(Result::ok);
                let size = self.ops.journal.size_bytes();
                let acknowledging = !matches!(
                    self.ops.journal.log_state(),
                    crate::journal::admin::LogState::Spooling { .. }
                );
                self.ops.metrics.log_acknowledging.set(i64::from(acknowledging));
                // The same checks as /readyz, so an alert on the gauge means what a probe sees.
                self.ops.metrics.ready.set(i64::from(self.ops.problems().is_empty()));
                self.ops
                    .metrics
                    .journal_writable
                    .set(i64::from(self.ops.journal_unwritable().is_none()));
                self.ops.metrics.journal_spooled.set(self.ops.journal.spooled_events() as i64);
                let damaged = self.ops.journal.damaged_records();
                let counted = &self.ops.metrics.journal_damaged;
                counted.inc_by(damaged.saturating_sub(counted.get()));
                let metrics = self.ops.metrics.clone();
                let supervisor = self.ops.supervisor.clone();
                let paused = self.ops.journal.pauses();
                let (body, content_type) = tokio::task::spawn_blocking(move || {
                    refresh_gauges(stats, size, &metrics, &supervisor);
                    for plugin in supervisor.names() {
                        let label = PluginLabel { plugin: plugin.clone() };
                        let gauge = metrics.plugin_paused.get_or_create(&label);
                        gauge.set(i64::from(paused.contains_key(&plugin)));
                    }
                    metrics.render_for(accept.as_deref())
                })
                .await
                .unwrap_or((String::new(), crate::metrics::PROMETHEUS_TEXT));
                text(StatusCode::OK, body, content_type)
            }
            (&Method::POST, "/reload") => {
                if !console::csrf_passes(&self.console, &who, request.headers()) {
                    return text(
                        StatusCode::FORBIDDEN,
                        "CSRF token missing or wrong\n",
                        "text/plain; charset=utf-8",
                    );
                }
                let (status, report) = self.ops.reload().await;
                text(
                    status,
                    serde_json::to_string_pretty(&report).unwrap_or_default(),
                    "application/json",
                )
            }
            _ => console::route(&self.ops, &self.console, who, request).await,
        }
    }

    /// `POST /plugins/NAME/pause` or `/resume` (`pause`: which), after the CSRF rule: JSON for
    /// a script, a 303 back to the Plugins page for the console's form.
    async fn pause_request(
        &self,
        who: &console::Who,
        request: &Request<Bytes>,
        name: &str,
        pause: bool,
    ) -> Response<Full<Bytes>> {
        if !console::csrf_passes_form(&self.console, who, request) {
            return text(
                StatusCode::FORBIDDEN,
                "CSRF token missing or wrong\n",
                "text/plain; charset=utf-8",
            );
        }
        let browser = request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
        let via = match who {
            console::Who::Session { .. } => "console",
            console::Who::Open if browser => "console",
            _ => "admin API",
        };
        match self.ops.set_pause(name, pause, via).await {
            Ok(_) if browser => console::see_other_plugins(),
            Ok(answer) => text(
                StatusCode::OK,
                serde_json::to_string_pretty(&answer).unwrap_or_default(),
                "application/json",
            ),
            Err((status, why)) => text(status, format!("{why}\n"), "text/plain; charset=utf-8"),
        }
    }
}

/// `NAME` and whether to pause (`true`) of `/plugins/NAME/pause` and `/plugins/NAME/resume`.
fn plugin_action(path: &str) -> Option<(&str, bool)> {
    let (name, action) = path.strip_prefix("/plugins/")?.split_once('/')?;
    let pause = match action {
        "pause" => true,
        "resume" => false,
        _ => return None,
    };
    (!name.is_empty()).then_some((name, pause))
}

/// Fills the scrape-time gauges from the journal's numbers and the supervisor.
fn refresh_gauges(
    stats: Option<Stats>,
    journal_bytes: Option<u64>,
    metrics: &Metrics,
    supervisor: &Supervisor,
) {
    supervisor.export_states();
    for plugin in supervisor.names() {
        metrics.touch_plugin(&plugin);
    }
    if let Some(bytes) = journal_bytes {
        metrics.journal_bytes.set(bytes as i64);
    }
    if let Some(Stats { plugins, events }) = stats {
        metrics.journal_events.set(events as i64);
        for p in plugins {
            let label = PluginLabel { plugin: p.plugin.clone() };
            metrics.backlog.get_or_create(&label).set(p.backlog as i64);
            metrics
                .oldest_pending_seconds
                .get_or_create(&label)
                .set(p.oldest_pending_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
        }
    }
}
