//! Publishing an accepted event to the log: `Nats-Msg-Id` = the duplicate key, the quorum's
//! acknowledgement awaited at most `ack_timeout_ms`, else the spool (`spool.rs`).
//!
//! The message: subject `b24.<S>.events.<member>.<code>` (each a `subject_token`), payload
//! the sealed record (`checksum::seal(b"b24-event", record.encode())`), headers `Nats-Msg-Id`
//! and `B24-Plugins` (the recipients, comma-separated). Every request publishes on the one
//! shared connection and awaits its own acknowledgement under a `tokio::time::timeout` started
//! at send (the client's own timeout starts only when the ack future is first polled): many
//! requests are in flight at once and none waits for another's round trip.
//!
//! ANY failure within the timeout goes to the spool: during a leader election the log answers
//! "no responders" at once (async-nats: `StreamNotFound`), a publish sent to a dying leader
//! times out. A spooled event's `Appended` is `New(0)`: the log numbers it (its
//! `delivery.event_id`) when the forwarder publishes it, and ingress and the offline pollers
//! only log the id they get.
//!
//! While the host spools and the spool cannot be written (its disk full), an append tries the
//! log again instead of being refused at once: the event gets 503 only when neither takes it,
//! and an acknowledgement sends appends back to the log. `last_write_error` is that state
//! (spooling, and the spool refusing): `/readyz` is 503 exactly then.
//!
//! With `journal.dedup_window_ms = 0` (duplicates not suppressed) the `Nats-Msg-Id` is made
//! unique per accept (`<key>-<host id>-<n>`) and kept as the record's `dedup_key`, so a
//! spooled event forwarded twice is still stored once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{message::PublishMessage, publish::PublishAck};
use bytes::Bytes;

use super::{
    connect::{Link, subject_token},
    spool::{Spool, Status},
};
use crate::config::JournalConfig;
use crate::journal::{Appended, StoreError, checksum, dedup::DedupKey, record::EventRecord};

/// The checksum key of an event's payload on the log (and of replays and dead letters).
pub(super) const PAYLOAD_KEY: &[u8] = b"b24-event";

/// The append path's state.
pub(super) struct Appender {
    /// `None` for a `journal` command (no spool: a failure is an error).
    spool: Option<Spool>,
    status: Arc<Status>,
    ack_timeout: Duration,
    /// Per-accept ids when the duplicate window is off.
    unique: Option<AtomicU64>,
}

/// How long a publish waits for the log's acknowledgement.
pub(super) fn ack_timeout(link: &Link) -> Duration {
    link.ack_timeout
}

/// The subject of an event on the log.
pub(super) fn subject(stream: &str, record: &EventRecord) -> String {
    format!(
        "b24.{stream}.events.{}.{}",
        subject_token(&record.meta.member_id),
        subject_token(&record.meta.code)
    )
}

/// The payload of an event on the log.
pub(super) fn seal(record: &EventRecord) -> Bytes {
    Bytes::from(checksum::seal(PAYLOAD_KEY, &record.encode()))
}

/// Publishes one message and waits for the log's acknowledgement, at most `timeout` from the
/// send; any failure as one line.
pub(super) async fn publish(
    link: &Link,
    timeout: Duration,
    subject: &str,
    msg_id: &str,
    plugins: &str,
    payload: Bytes,
) -> Result<PublishAck, String> {
    let message =
        PublishMessage::build().payload(payload).message_id(msg_id).header("B24-Plugins", plugins);
    let sent = async {
        let ack =
            link.js.send_publish(subject.to_owned(), message).await.map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no acknowledgement within {} ms", timeout.as_millis())),
    }
}

impl Appender {
    /// Opens the spool in `state_dir` and starts forwarding what it holds.
    pub async fn open(
        state_dir: &std::path::Path,
        config: &JournalConfig,
        link: &Link,
    ) -> Result<(Appender, std::thread::JoinHandle<()>), StoreError> {
        let status = Arc::new(Status::default());
        let (spool, thread) = Spool::open(state_dir, config, link, status.clone()).await?;
        Ok((
            Appender {
                spool: Some(spool),
                status,
                ack_timeout: ack_timeout(link),
                unique: config.dedup_window.is_zero().then(|| AtomicU64::new(0)),
            },
            thread,
        ))
    }

    /// No spool: for a `journal` command.
    pub fn for_command(link: &Link) -> (Appender, std::thread::JoinHandle<()>) {
        let appender = Appender {
            spool: None,
            status: Arc::default(),
            ack_timeout: ack_timeout(link),
            unique: None,
        };
        (appender, std::thread::spawn(|| {}))
    }

    /// Why the log is not acknowledging (while the host spools), if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.status.last_error()
    }

    /// Events in the spool not yet forwarded to the log.
    pub fn spooled_events(&self) -> u64 {
        self.status.outstanding()
    }

    /// The spool's size on this host.
    pub fn spool_bytes(&self) -> Option<u64> {
        self.spool.as_ref().and_then(Spool::size_bytes)
    }

    /// Why an event would be refused now, the log not acknowledging (for `why`): when the
    /// spool cannot be written either.
    pub fn refusing(&self, why: &str) -> Option<String> {
        let spool = self.spool.as_ref()?.write_error()?;
        Some(format!(
            "the NATS log does not acknowledge ({why}) and the local spool cannot be written ({spool})"
        ))
    }

    /// See `Journal::append`. `permanent` (an offline row's key) is the log's duplicate window
    /// like any other key: NATS cannot keep an id forever.
    pub async fn append(
        &self,
        link: &Link,
        mut record: Box<EventRecord>,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
        permanent: bool,
    ) -> Result<Appended, StoreError> {
        let _ = permanent;
        if let Some(counter) = &self.unique {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            record.meta.dedup_key = format!("{}-{}-{n}", record.meta.dedup_key, link.host_id);
        }
        let plugins = plugins.iter().map(|p| &**p).collect::<Vec<_>>().join(",");
        // Spooling, the spool refusing too: the log may be back, try it rather than refuse.
        let spool_refusing = self.spool.as_ref().is_some_and(|spool| spool.write_error().is_some());
        let why = match &self.spool {
            Some(spool) if self.status.is_spooling() && !spool_refusing => {
                return spool.append(record, key, &plugins, None).await;
            }
            _ => {
                let subject = subject(&link.names.stream, &record);
                let sent = publish(
                    link,
                    self.ack_timeout,
                    &subject,
                    &record.meta.dedup_key,
                    &plugins,
                    seal(&record),
                )
                .await;
                match sent {
                    Ok(ack) => {
                        if !self.status.is_spooling() {
                            self.status.set_error(None);
                        } else if spool_refusing {
                            self.status.acknowledged();
                        }
                        return Ok(if ack.duplicate {
                            Appended::Duplicate(ack.sequence)
                        } else {
                            Appended::New(ack.sequence)
                        });
                    }
                    Err(why) => why,
                }
            }
        };
        match &self.spool {
            Some(spool) => spool.append(record, key, &plugins, Some(why)).await,
            None => Err(StoreError::Storage(format!("the NATS log did not take the event: {why}"))),
        }
    }

    /// Waits for the spool's writes so far.
    pub async fn flush(&self) {
        if let Some(spool) = &self.spool {
            spool.flush().await;
        }
    }

    /// Closes the spool.
    pub async fn finish(&self, link: &Link) {
        let _ = link;
        if let Some(spool) = &self.spool {
            spool.finish().await;
        }
    }
}
