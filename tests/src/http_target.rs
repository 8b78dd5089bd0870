//! A real HTTP/1.1 server for the http plugins' tests (`kind = "http"`): it records every
//! request (headers, body, when it came) and answers as the test says, request by request:
//! a status with a body and headers, no answer at all (hang), or a connection closed at once
//! (reset). Keep-alive as a plain handler has it: one request after another on a connection.
//! It listens on a port chosen by the test, so it can be down first and come up later.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path.
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// When it arrived, from the server's start.
    pub at: Duration,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, with these extra headers and this body.
    Status(u16, Vec<(String, String)>, String),
    /// Keep the connection open and never answer.
    Hang,
    /// Close the connection without an answer.
    Reset,
}

/// How the server answers: given the request and how many came before it.
pub type Behaviour = dyn Fn(&Received, usize) -> Reply + Send + Sync;

struct Shared {
    started: Instant,
    received: Mutex<Vec<Received>>,
    behaviour: Box<Behaviour>,
    stop: AtomicBool,
}

/// The running server; it stops when dropped.
pub struct HttpTarget {
    shared: Arc<Shared>,
    port: u16,
}

impl HttpTarget {
    /// Listens on 127.0.0.1:`port` (0: any free port) and answers as `behaviour` says.
    pub fn start(
        port: u16,
        behaviour: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> HttpTarget {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("cannot listen");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            started: Instant::now(),
            received: Mutex::new(Vec::new()),
            behaviour: Box::new(behaviour),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            while !accepting.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = accepting.clone();
                        std::thread::spawn(move || serve(&shared, stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpTarget { shared, port }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// A 200 with a short body.
pub fn ok() -> Reply {
    Reply::Status(200, Vec::new(), "ok".into())
}

fn serve(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(writer) = stream.try_clone() else { return };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let received = Received { path, headers, body, at: shared.started.elapsed() };
        let reply = {
            let mut all = shared.received.lock().unwrap();
            let n = all.len();
            all.push(received.clone());
            drop(all);
            (shared.behaviour)(&received, n)
        };
        match reply {
            Reply::Status(status, extra, body) => {
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n",
                    body.len()
                );
                for (name, value) in extra {
                    answer.push_str(&format!("{name}: {value}\r\n"));
                }
                answer.push_str("\r\n");
                answer.push_str(&body);
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Reply::Hang => {
                while !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Reply::Reset => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
