//! The one raw HTTP/1.1 client of the tests: a request on a fresh connection
//! (`Connection: close`), read to the end. Used by the harness ([`crate::RunningHost`]), the
//! fake portal's own tests and the e2e suite, so that what is sent is exactly what is written
//! here (no client library adding or normalising headers).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and the header lines, as received.
    pub head: String,
    /// The headers, names lower-case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, as text (lossy).
    pub body: String,
}

impl Response {
    /// The first header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `method target` with `headers` (plus `Host`, `Connection: close` and
/// `Content-Length`) and `body` to `addr`, and reads the answer. An error when there is no
/// HTTP answer (nothing listening, or the server died mid-request).
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    request_on(stream, addr, method, target, headers, body)
}

/// [`request`] from the local address `source` (any of 127.0.0.0/8 reaches a loopback server
/// on Linux: a way to be several clients on one machine).
pub fn request_from(
    source: std::net::IpAddr,
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let stream = connect_from(source, addr)?;
    request_on(stream, addr, method, target, headers, body)
}

/// A connection to `addr` from the local address `source`.
pub fn connect_from(source: std::net::IpAddr, addr: &str) -> Result<TcpStream, String> {
    let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| e.to_string())?;
        socket.bind((source, 0).into()).map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket.connect(target).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let stream = stream.into_std().map_err(|e| e.to_string())?;
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        Ok(stream)
    })
}

/// [`request`] on a connection already open to `addr`.
pub fn request_on(
    mut stream: TcpStream,
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    // A server may answer (413) before reading everything; ignore a reset while writing.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let response = parse(&raw);
    if response.status == 0 {
        return Err("no HTTP answer".into());
    }
    Ok(response)
}

fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
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
    Response { status, head: head.to_owned(), headers, body: body.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_headers_and_body() {
        let r =
            parse(b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Type: text/plain\r\n\r\nno\r\n");
        assert_eq!(r.status, 415);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.body, "no\r\n");
        assert_eq!(parse(b"garbage").status, 0);
    }
}
