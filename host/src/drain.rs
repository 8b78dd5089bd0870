//! The event listener's connections at shutdown. hyper's own graceful shutdown closes a
//! connection at once when no request is in progress on it, which includes one just accepted
//! whose request has not been read yet: its client, already past `connect`, would get no
//! answer (Bitrix24 never sends that event again). Here a connection finishes the request in
//! progress, and one that has not begun its first request is served that request; only then
//! is keep-alive turned off, so it closes after the answer.

use std::{
    future::Future,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use hyper::{body::Incoming, server::conn::http1, service::HttpService};
use tokio::sync::{Notify, watch};

/// Tells the connections that the host is stopping, and waits for them.
pub struct Drain {
    stop: watch::Sender<bool>,
    /// Kept so that `stop` always has a receiver until [`Drain::stop`].
    watching: watch::Receiver<bool>,
}

/// Set once a connection's first request has begun.
#[derive(Default)]
pub struct Started {
    begun: AtomicBool,
    notify: Notify,
}

impl Started {
    /// Notes that a request began (call it from the service).
    pub fn begin(&self) {
        if !self.begun.swap(true, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.begun.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

impl Default for Drain {
    fn default() -> Drain {
        let (stop, watching) = watch::channel(false);
        Drain { stop, watching }
    }
}

impl Drain {
    /// A new, running drain.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Runs `connection` (whose service calls `started.begin()` for each request) until it ends;
    /// at shutdown it ends after its first request, or after the one in progress.
    pub fn watch<I, S>(
        &self,
        connection: http1::Connection<I, S>,
        started: Arc<Started>,
    ) -> impl Future<Output = hyper::Result<()>> + use<I, S>
    where
        S: HttpService<Incoming>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
        S::ResBody: 'static,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut stop = self.watching.clone();
        async move {
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return result,
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            tokio::select! {
                result = connection.as_mut() => return result,
                () = started.wait() => {}
            }
            // From here hyper finishes what is in progress and then closes.
            connection.as_mut().graceful_shutdown();
            let result = connection.await;
            drop(stop);
            result
        }
    }

    /// Tells every connection to finish, then waits until all have.
    pub async fn stop(self) {
        let Drain { stop, watching } = self;
        drop(watching);
        let _ = stop.send(true);
        stop.closed().await;
    }
}
