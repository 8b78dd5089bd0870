//! Helpers of the fake's own unit tests: raw HTTP requests and their answers.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

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

/// One request on a fresh connection (`Connection: close`), read to the end.
pub(super) fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    content_type: &str,
    body: &str,
) -> Raw {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body.as_bytes()).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw { status, headers, json: serde_json::from_str(body).unwrap_or(Value::Null) }
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
