//! The seam between ingress and dispatch: accepted events go in, each plugin's consumer takes
//! them out in arrival order.
//!
//! This implementation keeps events in memory: an event accepted here is lost if the process
//! dies before every plugin has it. The durable journal replaces this type behind the same
//! methods; ingress, dispatch and plugins do not change.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::decode::Decoded;

/// The host's id for an accepted event: stable for the event's whole life.
pub type EventId = u64;

/// An accepted event as it travels to the plugins.
#[derive(Debug)]
pub struct Envelope {
    /// The host's id for the event.
    pub id: EventId,
    /// When the host accepted it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The body exactly as received.
    pub raw: Bytes,
    /// The decoded event.
    pub event: Decoded,
}

/// Why an event could not be queued; ingress answers 503 and claims nothing.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The host is shutting down.
    #[error("the host is shutting down")]
    Closed,
}

/// The event queue shared by ingress (producer) and the plugin workers (consumers).
#[derive(Clone, Default)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    consumers: Mutex<Option<Vec<mpsc::UnboundedSender<Arc<Envelope>>>>>,
}

impl Queue {
    /// An empty, open queue.
    pub fn new() -> Self {
        let queue = Queue::default();
        *queue.lock() = Some(Vec::new());
        queue
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<mpsc::UnboundedSender<Arc<Envelope>>>>> {
        self.inner.consumers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A consumer that receives every event submitted from now on, in order.
    pub fn consumer(&self) -> Consumer {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(consumers) = self.lock().as_mut() {
            consumers.push(tx);
        }
        Consumer { rx }
    }

    /// Accepts an event: assigns its id and hands it to every consumer. When this returns `Ok`,
    /// the event is the queue's responsibility.
    pub async fn submit(&self, raw: Bytes, event: Decoded) -> Result<Arc<Envelope>, QueueError> {
        let guard = self.lock();
        let consumers = guard.as_ref().ok_or(QueueError::Closed)?;
        let envelope = Arc::new(Envelope {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            received_at_ms: now_ms(),
            raw,
            event,
        });
        for consumer in consumers {
            // A consumer that has gone away no longer wants events.
            let _ = consumer.send(envelope.clone());
        }
        Ok(envelope)
    }

    /// Refuses further submissions; consumers drain what they have, then see the end.
    pub fn close(&self) {
        self.lock().take();
    }
}

/// One plugin's view of the queue.
pub struct Consumer {
    rx: mpsc::UnboundedReceiver<Arc<Envelope>>,
}

impl Consumer {
    /// The next event in arrival order; `None` once the queue is closed and drained.
    pub async fn next(&mut self) -> Option<Arc<Envelope>> {
        self.rx.recv().await
    }

    /// Events waiting for this consumer.
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
