//! The HTTP wire: one hyper service for REST and OAuth, the order in which errors are checked,
//! params from the query and a JSON or PHP-form body, the answer envelope.

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde_json::{Map, Value, json};

use super::{
    RequestKind,
    state::{ApiError, Shared, iso_utc, unix_now},
};

/// Largest request body the fake reads; a bigger one is answered 400.
pub(super) const MAX_BODY: usize = 1 << 20;

/// An answer ready to send.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    pub(super) location: Option<String>,
    pub(super) error: Option<String>,
}

impl Reply {
    pub(super) fn json(status: u16, value: &Value) -> Reply {
        Reply { status, body: value.to_string().into_bytes(), location: None, error: None }
    }

    pub(super) fn error(e: &ApiError) -> Reply {
        let mut reply =
            Reply::json(e.status, &json!({ "error": e.error, "error_description": e.description }));
        reply.error = Some(e.error.clone());
        reply
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if let Some(location) = &self.location {
            builder = builder.header(header::LOCATION, location.as_str());
        }
        if !self.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
        }
        builder.body(Full::new(Bytes::from(self.body))).unwrap_or_else(|_| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let started_unix = unix_now();
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map(|b| b.to_bytes());
    let (reply, hold) = respond(&shared, arrived, started_unix, &parts, body);
    if let Some(notify) = hold {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(60), notify.notified()).await;
        shared.lock().held_clear = None;
    }
    Ok(reply.into_response())
}

/// The answer to one request, and the hold its reply must wait for, if any.
fn respond(
    shared: &Shared,
    arrived: Instant,
    started_unix: f64,
    parts: &hyper::http::request::Parts,
    body: Result<Bytes, Box<dyn std::error::Error + Send + Sync>>,
) -> (Reply, Option<Arc<tokio::sync::Notify>>) {
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut state = shared.lock();

    // Params: the query, then the body on top of it.
    let params = match &body {
        Ok(bytes) => parse_params(&query, &content_type, bytes),
        Err(_) => Err("request body too large or unreadable".to_owned()),
    };
    let token = match &params {
        Ok(p) => p.get("auth").map(value_text),
        Err(_) => parse_form(&query).get("auth").map(value_text),
    };

    if path == "/oauth/token/" || path == "/oauth/token" {
        let reply = match &params {
            Ok(p) => state.oauth(p, arrived),
            Err(e) => Reply::error(&ApiError::new(400, "invalid_request", e)),
        };
        let refresh = params.as_ref().ok().and_then(|p| p.get("refresh_token")).map(value_text);
        state.record(arrived, RequestKind::OAuth, &parts.method, "oauth/token", refresh, &reply);
        return (reply, None);
    }

    let (raw_method, moved_path) = if let Some(m) = path.strip_prefix("/rest/") {
        (m, false)
    } else if let Some(m) = path.strip_prefix("/moved/rest/") {
        (m, true)
    } else {
        let reply =
            Reply::error(&ApiError::new(404, "NOT_FOUND", "No such path on the fake portal"));
        state.record(arrived, RequestKind::Other, &parts.method, &path, None, &reply);
        return (reply, None);
    };
    // An incoming webhook: `/rest/<user>/<code>/<method>`.
    let mut parts_of = raw_method.splitn(3, '/');
    let (webhook, raw_method) = match (parts_of.next(), parts_of.next(), parts_of.next()) {
        (Some(user), Some(code), Some(rest))
            if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (Some(state.webhooks.iter().any(|c| c == code)), rest)
        }
        _ => (None, raw_method),
    };
    let method = normalize_method(raw_method);

    if state.moved && !moved_path {
        let mut location = format!("{}/moved/rest/{raw_method}", state.base);
        if !query.is_empty() {
            location.push('?');
            location.push_str(&query);
        }
        let reply = Reply { status: 302, body: Vec::new(), location: Some(location), error: None };
        state.record(arrived, RequestKind::Redirect, &parts.method, &method, token, &reply);
        return (reply, None);
    }

    let outcome = if !state.take_bucket(arrived) {
        state.violations += 1;
        Err(ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"))
    } else if parts.method != Method::POST {
        Err(ApiError::new(400, "INVALID_REQUEST", "POST expected"))
    } else {
        match &params {
            Err(e) => Err(ApiError::new(400, "INVALID_REQUEST", e)),
            Ok(p) => match webhook {
                Some(true) => Ok(()),
                Some(false) => {
                    Err(ApiError::new(401, "INVALID_CREDENTIALS", "Invalid request credentials"))
                }
                None => state.check_token(token.as_deref(), Instant::now()),
            }
            .and_then(|()| {
                if method.is_empty() {
                    Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                state.operating_check(&method, started_unix).map_err(|()| {
                    ApiError::new(
                        429,
                        "OPERATION_TIME_LIMIT",
                        "Method is blocked due to operation time limit.",
                    )
                })
            })
            .and_then(|()| state.call(&method, p, webhook.is_some())),
        }
    };
    let reply = match outcome {
        Ok((result, extra)) => {
            let (operating, operating_reset_at) = state.operating_answer(&method, started_unix);
            let finished = unix_now();
            let mut envelope = Map::new();
            envelope.insert("result".into(), result);
            for (key, value) in extra {
                envelope.insert(key.into(), value);
            }
            envelope.insert(
                "time".into(),
                json!({
                    "start": started_unix,
                    "finish": finished,
                    "duration": finished - started_unix,
                    "processing": finished - started_unix,
                    "date_start": iso_utc(started_unix as i64),
                    "date_finish": iso_utc(finished as i64),
                    "operating_reset_at": operating_reset_at,
                    "operating": operating,
                }),
            );
            Reply::json(200, &Value::Object(envelope))
        }
        Err(e) => Reply::error(&e),
    };
    let mut reply = reply;
    let mut hold = None;
    let handed_out = || {
        serde_json::from_slice::<Value>(&reply.body).ok().is_some_and(|a| {
            a["result"]["events"].as_array().is_some_and(|events| !events.is_empty())
        })
    };
    if method == "event.offline.get" && reply.status == 200 && state.lost_gets > 0 && handed_out() {
        // Reserved on the portal; the answer never reaches the caller.
        state.lost_gets -= 1;
        reply = Reply {
            status: 502,
            body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
            location: None,
            error: Some("lost".into()),
        };
    }
    if method == "event.offline.clear" && reply.status == 200 {
        if state.garbled_clears > 0 {
            state.garbled_clears -= 1;
            reply = Reply {
                status: 502,
                body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
                location: None,
                error: Some("garbled".into()),
            };
        } else if let Some(notify) = state.hold_clear.take() {
            state.held_clear = Some(notify.clone());
            hold = Some(notify);
        }
    }
    state.record(arrived, RequestKind::Rest, &parts.method, &method, token, &reply);
    (reply, hold)
}

/// `crm.deal.userfield.get.json/` -> `crm.deal.userfield.get`.
pub(super) fn normalize_method(raw: &str) -> String {
    let m = raw.trim_end_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json").map(str::to_owned).unwrap_or(m)
}

/// Query params, overlaid with the body's (a JSON object, or a form).
pub(super) fn parse_params(
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut params = parse_form(query);
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(params);
    }
    let looks_json =
        content_type.contains("json") || trimmed.starts_with('{') || trimmed.starts_with('[');
    if looks_json {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(m)) => params.extend(m),
            Ok(_) => return Err("the JSON body must be an object of parameters".to_owned()),
            Err(e) => return Err(format!("the body is not valid JSON: {e}")),
        }
    } else {
        params.extend(parse_form(trimmed));
    }
    Ok(params)
}

/// A form or query string into nested objects, PHP-style (`filter[LANG]=en`, `id[]=1`).
pub(super) fn parse_form(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let value = percent_decode(value);
        let (base, segments) = split_key(&key);
        if base.is_empty() {
            continue;
        }
        if segments.is_empty() {
            out.insert(base, Value::String(value));
        } else {
            let node = out.entry(base).or_insert_with(|| Value::Object(Map::new()));
            insert_nested(node, &segments, value);
        }
    }
    out
}

pub(super) fn split_key(key: &str) -> (String, Vec<String>) {
    let Some(open) = key.find('[') else { return (key.to_owned(), Vec::new()) };
    if open == 0 || !key[open..].contains(']') {
        return (key.to_owned(), Vec::new());
    }
    let mut segments = Vec::new();
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else { break };
        segments.push(inner[..close].to_owned());
        rest = &inner[close + 1..];
    }
    (key[..open].to_owned(), segments)
}

pub(super) fn insert_nested(node: &mut Value, segments: &[String], value: String) {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Some(map) = node.as_object_mut() else { return };
    let Some((first, rest)) = segments.split_first() else { return };
    let key = if first.is_empty() { map.len().to_string() } else { first.clone() };
    if rest.is_empty() {
        map.insert(key, Value::String(value));
    } else {
        let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        insert_nested(child, rest, value);
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON value as the text PHP would see: strings as they are, numbers printed, else JSON.
pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::testkit::*;

    #[test]
    fn fake_portal_rate_limit_after_burst() {
        let portal =
            FakePortal::start(PortalOptions { rate_per_sec: 0.1, burst: 5, ..Default::default() });
        let id = portal.add_field("CRM_COMPANY", "UF_CRM_Y", "string", vec![]);
        let token = portal.issue_access_token();
        for _ in 0..5 {
            let a = post(&portal, "crm.company.userfield.get", json!({"id": id, "auth": token}));
            assert_eq!(a.status, 200);
        }
        let a = post(&portal, "crm.company.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 503);
        assert_eq!(a.json["error"], "QUERY_LIMIT_EXCEEDED");
        assert_eq!(a.json["error_description"], "Too many requests");
        assert_eq!(portal.violations(), 1);
        assert_eq!(portal.requests().last().unwrap().status, 503);
        // Six requests within a few seconds.
        let peak = portal.peak_rate(Duration::from_secs(60));
        assert!((peak - 6.0 / 60.0).abs() < 1e-9, "{peak}");
        assert_eq!(portal.peak_rate(Duration::ZERO), 0.0);
        // OAuth is not limited.
        let (_, r) = portal.initial_oauth();
        assert_eq!(refresh(&portal, &portal.options().client_secret, &r).status, 200);
    }

    #[test]
    fn fake_portal_moved_redirects_and_wants_post() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_QUOTE", "UF_CRM_Z", "string", vec![]);
        let token = portal.issue_access_token();
        portal.set_moved(true);
        let body = json!({"id": id, "auth": token}).to_string();
        let a =
            send(portal.addr(), "POST", "/rest/crm.quote.userfield.get", "application/json", &body);
        assert_eq!(a.status, 302);
        let location = a.header("location").unwrap().to_owned();
        assert_eq!(location, format!("{}crm.quote.userfield.get", portal.moved_endpoint()));
        let target = location.trim_start_matches(&portal.base_url()).to_owned();

        // A client that turns the POST into a GET loses the body.
        let a = send(portal.addr(), "GET", &target, "", "");
        assert_eq!(a.status, 400);
        assert_eq!(
            a.json,
            json!({"error": "INVALID_REQUEST", "error_description": "POST expected"})
        );
        // Re-POSTing works.
        let a = send(portal.addr(), "POST", &target, "application/json", &body);
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["FIELD_NAME"], "UF_CRM_Z");

        // The query survives the redirect; a refresh names the new endpoint.
        let a = send(portal.addr(), "POST", "/rest/x.y?auth=abc", "", "");
        assert!(a.header("location").unwrap().ends_with("/moved/rest/x.y?auth=abc"));
        let (_, r) = portal.initial_oauth();
        let a = refresh(&portal, &portal.options().client_secret, &r);
        assert_eq!(a.json["client_endpoint"], portal.moved_endpoint());

        let kinds: Vec<_> = portal.requests().iter().map(|r| (r.kind, r.status)).collect();
        assert_eq!(
            kinds,
            [
                (RequestKind::Redirect, 302),
                (RequestKind::Rest, 400),
                (RequestKind::Rest, 200),
                (RequestKind::Redirect, 302),
                (RequestKind::OAuth, 200),
            ]
        );
        portal.set_moved(false);
        let a =
            send(portal.addr(), "POST", "/rest/crm.quote.userfield.get", "application/json", &body);
        assert_eq!(a.status, 200);
    }
}
