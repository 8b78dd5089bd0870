//! Accepting connections without spinning: when `accept` fails for want of a resource (out of
//! file descriptors, kernel buffers or memory), the loop sleeps, 5 ms at first and twice as long
//! after each failure in a row, up to half a second, and says so in a WARN line at most every
//! 10 s. A connection the client aborted before it was accepted is skipped at once.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::throttle::Throttled;

/// The first sleep after a failed accept.
const FIRST: Duration = Duration::from_millis(5);
/// The longest sleep between two tries.
const LONGEST: Duration = Duration::from_millis(500);
/// How often the WARN line may repeat.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A listener and its back-off.
pub struct Acceptor {
    listener: TcpListener,
    /// `event` or `admin`, for the log line.
    name: &'static str,
    delay: Duration,
    warn: Throttled,
}

impl Acceptor {
    /// Accepts on `listener`, named `name` in log lines.
    pub fn new(listener: TcpListener, name: &'static str) -> Acceptor {
        Acceptor { listener, name, delay: FIRST, warn: Throttled::new(WARN_EVERY) }
    }

    /// The next connection. Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.delay = FIRST;
                    return accepted;
                }
                Err(e) if gone_before_accepted(&e) => {
                    tracing::debug!(
                        listener = self.name,
                        "a connection went before it was accepted: {e}"
                    );
                }
                Err(e) => {
                    if let Some(held_back) = self.warn.allow() {
                        tracing::warn!(
                            listener = self.name,
                            held_back,
                            "cannot accept connections: {e}{}; trying again in {} ms",
                            hint(&e),
                            self.delay.as_millis()
                        );
                    }
                    tokio::time::sleep(self.delay).await;
                    self.delay = (self.delay * 2).min(LONGEST);
                }
            }
        }
    }
}

/// Whether `e` concerns one connection only (the client gave up before it was accepted).
fn gone_before_accepted(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// What an operator can do about `e`.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            " (the process is out of file descriptors: raise its hard limit, LimitNOFILE= in \
             the systemd unit, or lower server.max_connections)"
        }
        Some(libc::ENFILE) => " (the system is out of file descriptors)",
        Some(libc::ENOBUFS | libc::ENOMEM) => " (the kernel is out of memory for sockets)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_connection_errors_skip_the_back_off() {
        assert!(gone_before_accepted(&io::Error::from(io::ErrorKind::ConnectionAborted)));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(!gone_before_accepted(&e), "{e}");
            assert!(!hint(&e).is_empty(), "{e}");
        }
    }
}
