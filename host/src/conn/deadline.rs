//! The whole-request read deadline ([`DeadlineIo`]): from a request's first byte until the host
//! answers it, or until the service says it has read the request whole ([`RequestRead`]), so a
//! request whose handling takes long (a reload on the admin listener) is not cut off by it.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// A connection whose requests must arrive whole within `limit`: the clock starts at the first
/// byte of a request and stops when the host writes its answer (or when [`RequestRead::done`]
/// says the request was read). A client still sending when it runs out gets a read error, and
/// hyper closes the connection.
pub struct DeadlineIo<T> {
    inner: T,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    read: Arc<AtomicBool>,
}

/// Tells a [`DeadlineIo`] that the request in progress has been read whole: its clock stops
/// until the answer is written (a byte read after that starts the next request's clock).
#[derive(Clone)]
pub struct RequestRead(Arc<AtomicBool>);

impl RequestRead {
    /// The request is read: handling it may take as long as it takes.
    pub fn done(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl<T> DeadlineIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> DeadlineIo<T> {
        DeadlineIo { inner, limit, deadline: None, read: Arc::default() }
    }

    /// The handle a service uses to stop the clock once it has read its request.
    pub fn request_read(&self) -> RequestRead {
        RequestRead(self.read.clone())
    }

    /// An answer is going out: the request was read in time.
    fn answering(&mut self) {
        self.deadline = None;
        self.read.store(false, Ordering::Release);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let stopped = this.read.load(Ordering::Acquire);
        if stopped {
            this.deadline = None;
        } else if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request took longer than server.request_read_timeout_ms",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !stopped && this.deadline.is_none() && buf.filled().len() > before {
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
        self.answering();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.answering();
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

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

    #[tokio::test]
    async fn a_request_read_whole_is_not_cut_off_while_it_is_handled() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, Duration::from_millis(100));
        client.write_all(b"POST").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        io.request_read().done();
        // Handling takes longer than the deadline; hyper keeps reading to notice a hang-up.
        let waiting = tokio::time::timeout(Duration::from_millis(300), io.read(&mut buf)).await;
        assert!(waiting.is_err(), "the read ended: {waiting:?}");
        io.write_all(b"done").await.unwrap();
        // The next request has its own clock again.
        client.write_all(b"x").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let late = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
        let error = late.expect("cut off in time").expect_err("a timeout");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
