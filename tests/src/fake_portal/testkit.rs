//! Helpers of the fake's own unit tests: raw HTTP requests and their answers.

use std::net::SocketAddr;

use serde_json::Value;

pub(super) use std::time::Duration;

pub(super) use super::{FakePortal, PortalOptions, RequestKind};

/// A raw answer: status, headers (lower-case names), body parsed as JSON (Null if not).
pub(super) struct Raw {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) json: Value,
}

impl Raw {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection, through the tests' one raw client ([`crate::http`]).
pub(super) fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    content_type: &str,
    body: &str,
) -> Raw {
    let headers: &[(&str, &str)] =
        if content_type.is_empty() { &[] } else { &[("Content-Type", content_type)] };
    let r = crate::http::request(&addr.to_string(), method, target, headers, body.as_bytes())
        .expect("an HTTP answer");
    Raw {
        status: r.status,
        headers: r.headers,
        json: serde_json::from_str(&r.body).unwrap_or(Value::Null),
    }
}

pub(super) fn post(portal: &FakePortal, method: &str, params: Value) -> Raw {
    send(portal.addr(), "POST", &format!("/rest/{method}"), "application/json", &params.to_string())
}

pub(super) fn refresh(portal: &FakePortal, secret: &str, token: &str) -> Raw {
    let o = portal.options();
    let target = format!(
        "/oauth/token/?grant_type=refresh_token&client_id={}&client_secret={secret}&refresh_token={token}",
        o.client_id
    );
    send(portal.addr(), "GET", &target, "", "")
}
