//! The web console on the admin listener: server-rendered HTML (maud) with htmx refreshing
//! parts of pages, readable without JavaScript. Pages: the overview (`/`), events (`/events`,
//! `/events/{id}`), dead letters (`/dead`, with replay and purge in two steps), plugins
//! (`/plugins`, with reload, and pause and resume per plugin: forms posting to
//! `/plugins/NAME/pause`, which `ops.rs` answers), portals (`/portals`: installation, bindings, offline queue). Static assets (htmx, the stylesheet) are embedded in the binary.
//!
//! Invariants: the console changes the journal only through the seam's `replay` and `purge`
//! (and a plugin's pause, through `Ops::set_pause`);
//! it never sees a token (the journal hands out redacted events; plugin settings are redacted
//! here); every state-changing request is a POST that passes the CSRF rule (`csrf.rs`); with
//! `admin.token` every path but `/healthz` and `/static/*` needs a login (`auth.rs`).
//!
//! `ops.rs` owns the listener and routes here; this module owns the pages.

mod auth;
mod chart;
mod csrf;
mod dead;
mod event;
mod events;
mod layout;
mod login;
mod overview;
mod plugins;
mod portals;
pub mod when;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER, SET_COOKIE},
};
use maud::Markup;

pub use auth::{Console, TooManyFailures, Who};

use crate::operations::Ops;

/// How long a page waits for the journal's numbers.
pub(crate) const STATS_PATIENCE: Duration = Duration::from_secs(2);
/// The largest request body the admin listener reads (the console's forms); larger gets 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One answer.
pub type Answer = Response<Full<Bytes>>;

/// The vendored htmx (2.x; licence in host/assets/htmx.LICENSE).
static HTMX: &[u8] = include_bytes!("../../assets/htmx.min.js");
/// The console's stylesheet.
static CSS: &[u8] = include_bytes!("../../assets/console.css");

fn with_type(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An HTML answer; never cached, never framed.
pub fn html(status: StatusCode, markup: Markup) -> Answer {
    let mut response = with_type(status, markup.into_string(), "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// A plain-text answer.
pub fn plain(status: StatusCode, text: &str) -> Answer {
    with_type(status, format!("{text}\n"), "text/plain; charset=utf-8")
}

/// A 303 to `location`.
fn see_other(location: &'static str) -> Answer {
    let mut response = with_type(StatusCode::SEE_OTHER, "", "text/plain; charset=utf-8");
    response.headers_mut().insert(LOCATION, HeaderValue::from_static(location));
    response
}

/// Adds `Server-Timing: app;dur=<ms>` (the time since `started`).
pub fn server_timing(response: &mut Answer, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        response.headers_mut().insert("server-timing", value);
    }
}

/// `GET /static/...`: the embedded assets, cached a day (`None`: not one of them).
pub fn asset(path: &str) -> Option<Answer> {
    let (body, content_type) = match path {
        "/static/htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "/static/console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = with_type(StatusCode::OK, Bytes::from_static(body), content_type);
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    Some(response)
}

/// The answer to a request without a login: the login page for a page, else plain text.
pub fn unauthorized(method: &Method, path: &str) -> Answer {
    let page = method == Method::GET
        && !matches!(path, "/readyz" | "/metrics")
        && !path.starts_with("/partials/");
    let mut response = if page {
        html(StatusCode::UNAUTHORIZED, login::page(None))
    } else {
        plain(StatusCode::UNAUTHORIZED, "admin token required")
    };
    response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    response
}

/// The answer to a wrong admin token while too many wait for theirs.
pub fn too_many_failures() -> Answer {
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "too many wrong admin tokens are waiting for their answer; try again later",
    );
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("10"));
    response
}

/// The CSRF refusal.
fn forbidden() -> Answer {
    plain(StatusCode::FORBIDDEN, csrf::REFUSED)
}

/// Whether a state-changing request without a form (`POST /reload`) passes the CSRF rule.
pub fn csrf_passes(console: &Console, who: &Who, headers: &HeaderMap) -> bool {
    csrf::passes(console, who, headers, None)
}

/// Whether a state-changing request that may come from a console form (`POST
/// /plugins/NAME/pause`) passes the CSRF rule: the form's `csrf` field or the header.
pub fn csrf_passes_form(console: &Console, who: &Who, request: &Request<Bytes>) -> bool {
    let fields = form(request);
    csrf::passes(console, who, request.headers(), field(&fields, csrf::FIELD))
}

/// The 303 a console form's pause or resume answers with: back to the Plugins page.
pub fn see_other_plugins() -> Answer {
    see_other("/plugins")
}

/// The request's query or form pairs.
fn pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes()).into_owned().collect()
}

/// The first value of `name`, trimmed, if not empty.
fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// A POST's form fields (the body, read whole by `ops.rs`, at most [`MAX_BODY_BYTES`]).
fn form(request: &Request<Bytes>) -> Vec<(String, String)> {
    pairs(&String::from_utf8_lossy(request.body()))
}

/// `GET /login` and `POST /login` (and `/logout`) from `peer`: before the login check.
pub async fn login(console: &Console, who: Who, request: Request<Bytes>, peer: IpAddr) -> Answer {
    if request.method() == Method::GET {
        return if console.needs_login() && matches!(who, Who::Nobody) {
            html(StatusCode::OK, login::page(None))
        } else {
            see_other("/")
        };
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST /login");
    }
    if !console.needs_login() {
        return see_other("/");
    }
    let fields = form(&request);
    match console.login(field(&fields, "token").unwrap_or_default(), peer).await {
        Err(TooManyFailures) => too_many_failures(),
        Ok(Some(id)) => {
            let mut response = see_other("/");
            if let Ok(cookie) = HeaderValue::from_str(&auth::session_cookie(&id)) {
                response.headers_mut().insert(SET_COOKIE, cookie);
            }
            response
        }
        Ok(None) => html(StatusCode::UNAUTHORIZED, login::page(Some("wrong token"))),
    }
}

/// Every console path after the login check: the pages, the partials, the actions.
pub async fn route(ops: &Ops, console: &Console, who: Who, request: Request<Bytes>) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = pairs(request.uri().query().unwrap_or_default());
    let csrf = console.csrf_for(&who);
    if method == Method::POST {
        let fields = form(&request);
        if !csrf::passes(console, &who, request.headers(), field(&fields, csrf::FIELD)) {
            return forbidden();
        }
        return match path.as_str() {
            "/dead/replay" => dead_action(ops, &who, &csrf, dead::Action::Replay, &fields).await,
            "/dead/purge" => dead_action(ops, &who, &csrf, dead::Action::Purge, &fields).await,
            "/plugins/reload" => {
                let (_, outcome) = ops.reload().await;
                let report = serde_json::to_string_pretty(&outcome).unwrap_or_default();
                let views = ops.supervisor.views();
                let body = plugins::body(&views, &ops.journal.pauses(), &csrf, Some(&report));
                html(StatusCode::OK, layout::page("Plugins", &who, &csrf, body))
            }
            "/logout" => {
                if let Who::Session { id, .. } = &who {
                    console.logout(id);
                }
                let mut response = see_other("/");
                response
                    .headers_mut()
                    .insert(SET_COOKIE, HeaderValue::from_static(auth::CLEARED_COOKIE));
                response
            }
            _ => not_found(&who, &csrf),
        };
    }
    if method != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "the console takes GET and POST");
    }
    let page =
        |title: &str, body: Markup| html(StatusCode::OK, layout::page(title, &who, &csrf, body));
    match path.as_str() {
        "/" => page("Overview", overview::body(ops).await),
        "/partials/overview" => html(StatusCode::OK, overview::live(ops).await),
        "/events" => {
            let filter = match events::filter(&query) {
                Ok(filter) => filter,
                Err((name, why)) => return bad_request(&who, &csrf, &name, &why),
            };
            match patient(ops.journal.query(filter.query.clone())).await {
                Ok(found) => {
                    page("Events", events::body(&filter, &found.events, found.next_before))
                }
                Err(e) => unavailable(&who, &csrf, &e.to_string()),
            }
        }
        "/dead" => {
            let plugin = field(&query, "plugin");
            let since = match field(&query, "since").map(when::parse).transpose() {
                Ok(since) => since,
                Err(why) => return bad_request(&who, &csrf, "since", &why),
            };
            let before = match field(&query, "before").map(str::parse::<u64>).transpose() {
                Ok(before) => before,
                Err(_) => return bad_request(&who, &csrf, "before", "not an event id"),
            };
            let wanted = crate::journal::admin::DeadQuery {
                plugin: plugin.map(str::to_owned),
                since_ms: since,
                before_id: before,
                limit: dead::SHOWN,
            };
            match patient(ops.journal.dead_page(wanted)).await {
                Ok(found) => {
                    page("Dead letters", dead::body(&found, plugin, field(&query, "since"), &csrf))
                }
                Err(e) => unavailable(&who, &csrf, &e.to_string()),
            }
        }
        // The confirmation step, read-only, as a link may ask for it: a GET never runs one.
        "/dead/replay" => {
            dead_action(ops, &who, &csrf, dead::Action::Replay, &without_confirm(&query)).await
        }
        "/dead/purge" => {
            dead_action(ops, &who, &csrf, dead::Action::Purge, &without_confirm(&query)).await
        }
        "/plugins" => page(
            "Plugins",
            plugins::body(&ops.supervisor.views(), &ops.journal.pauses(), &csrf, None),
        ),
        "/portals" => page("Portals", portals::body(ops)),
        "/partials/portals" => html(StatusCode::OK, portals::live(ops)),
        _ => {
            if let Some(id) =
                path.strip_prefix("/partials/events/").and_then(|r| r.strip_suffix("/deliveries"))
            {
                return event_page(ops, &who, &csrf, id, true).await;
            }
            if let Some(id) = path.strip_prefix("/events/") {
                return event_page(ops, &who, &csrf, id, false).await;
            }
            not_found(&who, &csrf)
        }
    }
}

/// `fields` without `confirm`.
fn without_confirm(fields: &[(String, String)]) -> Vec<(String, String)> {
    fields.iter().filter(|(k, _)| k != "confirm").cloned().collect()
}

/// An event's page, or only its deliveries (`partial`).
async fn event_page(ops: &Ops, who: &Who, csrf: &str, id: &str, partial: bool) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return bad_request(who, csrf, "id", &format!("{id:?} is not an event id"));
    };
    match patient(crate::operations::show(&ops.journal, id)).await {
        Ok(Some(detail)) if partial => html(StatusCode::OK, event::deliveries(&detail, csrf)),
        Ok(Some(detail)) => html(
            StatusCode::OK,
            layout::page(&format!("Event {id}"), who, csrf, event::body(&detail, csrf)),
        ),
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            layout::message(
                "Not found",
                who,
                csrf,
                &format!("there is no event {id} in the journal"),
            ),
        ),
        Err(e) => unavailable(who, csrf, &e.to_string()),
    }
}

/// `/dead/replay` and `/dead/purge`: the count to confirm, or (with `confirm=1`) the action.
async fn dead_action(
    ops: &Ops,
    who: &Who,
    csrf: &str,
    action: dead::Action,
    fields: &[(String, String)],
) -> Answer {
    let (which, confirmed) = match dead::selection(fields) {
        Ok(found) => found,
        Err((name, why)) => return bad_request(who, csrf, &name, &why),
    };
    let title = "Dead letters";
    if !confirmed {
        return match matching(ops, &which).await {
            Ok((count, rows)) => {
                let body = dead::confirm(action, &which, count, &rows, csrf);
                html(StatusCode::OK, layout::page(title, who, csrf, body))
            }
            Err(e) => unavailable(who, csrf, &e.to_string()),
        };
    }
    let done = match action {
        dead::Action::Replay => ops.journal.replay(which).await,
        dead::Action::Purge => ops.journal.purge(which).await,
    };
    match done {
        Ok(done) => {
            html(StatusCode::OK, layout::page(title, who, csrf, dead::result(action, &done)))
        }
        Err(e) => unavailable(who, csrf, &e.to_string()),
    }
}

/// How long a page waits for a journal read (a shared log may not answer).
const READ_PATIENCE: Duration = Duration::from_secs(5);

/// A journal read, given up after [`READ_PATIENCE`].
async fn patient<T>(
    read: impl std::future::Future<Output = Result<T, crate::journal::StoreError>>,
) -> Result<T, crate::journal::StoreError> {
    tokio::time::timeout(READ_PATIENCE, read).await.unwrap_or_else(|_| {
        Err(crate::journal::StoreError::Storage(format!(
            "no answer within {} s",
            READ_PATIENCE.as_secs()
        )))
    })
}

/// At most this many ids are counted event by event (`show`); more, or a time, read the
/// dead letters.
const COUNT_BY_EVENT: usize = 50;

/// How many dead letters `which` selects now, and (some of) them: a time or a whole plugin is
/// counted by the journal's bounded listing, a few ids are looked up one by one (the event
/// page's replay button), many ids through the whole listing.
async fn matching(
    ops: &Ops,
    which: &crate::journal::Selection,
) -> Result<(u64, Vec<crate::journal::admin::DeadRow>), crate::journal::StoreError> {
    if which.ids.is_empty() {
        let wanted = crate::journal::admin::DeadQuery {
            plugin: which.plugin.clone(),
            since_ms: which.since_ms,
            before_id: None,
            limit: COUNT_BY_EVENT,
        };
        let page = patient(ops.journal.dead_page(wanted)).await?;
        return Ok((page.total, page.rows));
    }
    if which.ids.len() > COUNT_BY_EVENT {
        let mut rows = patient(ops.journal.dead(which.plugin.clone())).await?;
        rows.retain(|r| which.matches(&r.plugin, r.id, r.dead.at_ms));
        return Ok((rows.len() as u64, rows));
    }
    let mut rows = Vec::new();
    for id in &which.ids {
        let Some(detail) = patient(crate::operations::show(&ops.journal, *id)).await? else {
            continue;
        };
        for (plugin, dead) in &detail.dead_state {
            if which.matches(plugin, *id, dead.at_ms) {
                rows.push(crate::journal::admin::DeadRow {
                    plugin: plugin.clone(),
                    id: *id,
                    code: detail.summary.code.clone(),
                    member_id: detail.summary.member_id.clone(),
                    dead: dead.clone(),
                });
            }
        }
    }
    Ok((rows.len() as u64, rows))
}

/// 400 naming the field.
fn bad_request(who: &Who, csrf: &str, name: &str, why: &str) -> Answer {
    let text = format!("{name}: {why}");
    html(StatusCode::BAD_REQUEST, layout::message("Bad request", who, csrf, &text))
}

/// 503: the journal did not answer.
fn unavailable(who: &Who, csrf: &str, why: &str) -> Answer {
    let text = format!("the journal did not answer: {why}");
    html(StatusCode::SERVICE_UNAVAILABLE, layout::message("Journal unavailable", who, csrf, &text))
}

fn not_found(who: &Who, csrf: &str) -> Answer {
    html(
        StatusCode::NOT_FOUND,
        layout::message(
            "Not found",
            who,
            csrf,
            "no such page; the console has /, /events, /dead, /plugins and /portals (and /healthz, /readyz, /metrics, POST /reload)",
        ),
    )
}
