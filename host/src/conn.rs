//! Limits on the event listener's connections, against slow and hostile clients: a cap on open
//! connections (past it a new one is answered 503 and closed), a whole-request read deadline
//! ([`DeadlineIo`]: from a request's first byte until the host starts answering it), and the
//! process's file-descriptor soft limit raised to its hard limit at start.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

/// Raises the soft limit on open files to the hard limit, so that the connection cap, not the
/// kernel, decides when the host stops taking connections. Returns (before, after).
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((before, raised.rlim_cur));
    }
    Ok((before, before))
}

/// Counts open connections against a cap.
#[derive(Clone)]
pub struct Limiter {
    open: Arc<AtomicUsize>,
    max: usize,
    rejecting: Arc<AtomicUsize>,
}

/// One open connection; dropping it frees the slot.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refusals being answered at once at most; beyond, a connection is closed without an answer.
const MAX_REJECTING: usize = 256;

/// The answer past the cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections; try again soon\n";

impl Limiter {
    /// A cap of `max` open connections.
    pub fn new(max: usize) -> Limiter {
        Limiter { open: Arc::default(), max, rejecting: Arc::default() }
    }

    /// A slot for a new connection, or `None` past the cap.
    pub fn try_acquire(&self) -> Option<Slot> {
        let mut now = self.open.load(Ordering::Acquire);
        loop {
            if now >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Slot(self.open.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Answers 503 on a connection past the cap and closes it (in the background, briefly).
    pub fn reject(&self, mut stream: TcpStream) {
        if self.rejecting.fetch_add(1, Ordering::AcqRel) >= MAX_REJECTING {
            self.rejecting.fetch_sub(1, Ordering::AcqRel);
            return; // dropped: closed at once
        }
        let rejecting = self.rejecting.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                stream.write_all(BUSY).await?;
                stream.shutdown().await?;
                // Read what the client sent, so that closing does not reset the connection
                // before it has read the answer.
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            })
            .await;
            rejecting.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A connection whose requests must arrive whole within `limit`: the clock starts at the first
/// byte of a request and stops when the host writes its answer. A client still sending when it
/// runs out gets a read error, and hyper closes the connection.
pub struct DeadlineIo<T> {
    inner: T,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> DeadlineIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> DeadlineIo<T> {
        DeadlineIo { inner, limit, deadline: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request took longer than server.request_read_timeout_ms",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_none() && buf.filled().len() > before {
            let mut sleep = Box::pin(tokio::time::sleep_until(Instant::now() + this.limit));
            // Register the timer with this task, so a silent client is woken at the deadline.
            let _ = sleep.as_mut().poll(cx);
            this.deadline = Some(sleep);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // An answer is going out: the request was read in time.
        self.deadline = None;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.deadline = None;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_open_connections() {
        let limiter = Limiter::new(2);
        let a = limiter.try_acquire().expect("first");
        let _b = limiter.try_acquire().expect("second");
        assert!(limiter.try_acquire().is_none());
        drop(a);
        assert!(limiter.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_request_trickled_past_the_deadline_is_cut_off() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, Duration::from_millis(100));
        let writer = tokio::spawn(async move {
            let mut client = client;
            for _ in 0..100 {
                if client.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client
        });
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let error = loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("the client closed first"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(900));
        drop(io);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn an_answer_stops_the_clock() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, Duration::from_millis(100));
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        io.write_all(b"ok").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"again").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
    }
}
