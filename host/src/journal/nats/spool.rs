//! The local spool: an embedded journal in `state_dir/spool/` that takes an event the log did
//! not acknowledge within `ack_timeout_ms`, and forwards it later with the same `Nats-Msg-Id`.
//!
//! The spool is `journal::embedded::Embedded` with one pseudo-plugin, [`FORWARDER`]: an append
//! returns once the event is fsynced (the same group commit as the embedded backend), so the
//! host can answer 200 during a leader election. The forwarder task reads the spool in id
//! order, republishes each event to its subject with its `Nats-Msg-Id` and `B24-Plugins`
//! (kept in the spooled record as the fact [`PLUGINS_FACT`], removed before publishing), and
//! completes it only after the log's acknowledgement; unacknowledged ones are retried first,
//! with back-off. It drains at start too: events spooled before a crash or restart go out
//! once the log answers.
//!
//! Once an append has gone to the spool, the next ones go there too without trying the log
//! (each would wait up to `ack_timeout_ms` while the log does not answer), until the forwarder
//! gets an acknowledgement: then appends go to the log again while the forwarder drains the
//! rest. So an event spooled during an outage is stored (and numbered) after events accepted
//! later, as an event accepted by another host may be: per-plugin order is the log's order.
//! An earlier design kept spooling until the spool was empty (one host's order kept), but
//! under a steady load the spool then never emptied and every event paid the local fsync and
//! the second hop. A batch the log acknowledged only in part is resent from its first
//! unacknowledged event (the ones already stored are suppressed by `Nats-Msg-Id`).
//!
//! "Drained" means empty: once the forwarder has caught up, it waits for the spool's writes
//! (its completions) and counts what the spool still holds. Only a count of 0 is logged as
//! drained. Anything else (completions lost while the spool's disk was full, events the spool
//! could not be read for) is said with its count, and the forwarder reads the spool again from
//! its start (what the log already has is suppressed by `Nats-Msg-Id`).
//!
//! A spool that cannot be written (a full disk) refuses the event (503): `last_write_error`
//! says so while the log does not acknowledge either, and `/readyz` is then 503 (append.rs
//! tries the log first in that state, so the log coming back is noticed by the next event).
//!
//! Guarantee and its limit: a spooled event is on this host's disk; a host that dies for good
//! with spooled events keeps them there until it starts again (with the same `state_dir`).

use std::{
    collections::VecDeque,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt;

use super::{append, connect::Link};
use crate::config::JournalConfig;
use crate::journal::{
    Appended, Delivery, StoreError, dedup::DedupKey, embedded::Embedded, record::EventRecord,
};

/// The spool's one pseudo-plugin: the forwarder.
pub(super) const FORWARDER: &str = "log";

/// The spooled record's fact holding the recipients (`B24-Plugins`); never published.
pub(super) const PLUGINS_FACT: &str = "\u{0}b24-plugins";

/// How many spooled events the forwarder has in flight at once.
const BATCH: usize = 64;

/// What the append path and the forwarder share.
#[derive(Default)]
pub(super) struct Status {
    /// Why the log does not acknowledge (while spooling); cleared by the next ack.
    last_error: Mutex<Option<String>>,
    /// Events in the spool not yet forwarded (may be briefly off by the ones being appended;
    /// made exact by the forwarder's count once it has caught up).
    outstanding: AtomicI64,
    /// Appends go to the spool without trying the log (it did not acknowledge the last try).
    spooling: AtomicBool,
}

impl Status {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The log acknowledged: appends go to it again.
    pub fn acknowledged(&self) {
        self.set_error(None);
        self.spooling.store(false, Ordering::SeqCst);
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub fn is_spooling(&self) -> bool {
        self.spooling.load(Ordering::SeqCst)
    }

    /// Events in the spool not yet forwarded.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::SeqCst).max(0) as u64
    }
}

/// The spool of a running host.
pub(super) struct Spool {
    journal: Embedded,
    status: Arc<Status>,
}

impl Spool {
    /// Opens the spool in `state_dir/spool/` and starts its forwarder (which drains what an
    /// earlier run left). The thread is the spool's writer, to join at exit.
    pub async fn open(
        state_dir: &Path,
        config: &JournalConfig,
        link: &Link,
        status: Arc<Status>,
    ) -> Result<(Spool, std::thread::JoinHandle<()>), StoreError> {
        let dir = state_dir.join("spool");
        std::fs::create_dir_all(&dir).map_err(|e| {
            StoreError::Storage(format!("cannot create the spool folder {}: {e}", dir.display()))
        })?;
        // Duplicates are the log's to suppress (by Nats-Msg-Id); forwarded events go at once.
        let local = JournalConfig {
            dedup_window: Duration::ZERO,
            keep_completed_for: Duration::ZERO,
            keep_completed_events: 0,
            ..config.clone()
        };
        let (journal, thread) = Embedded::open(&dir, &local, &[FORWARDER.to_owned()], true)?;
        let left = journal
            .stats(vec![FORWARDER.to_owned()])
            .await?
            .plugins
            .iter()
            .find(|p| p.plugin == FORWARDER)
            .map_or(0, |p| p.backlog);
        if left > 0 {
            tracing::warn!(
                events = left,
                "the spool holds events not yet forwarded to the NATS log (from an earlier run); forwarding them"
            );
            status.outstanding.store(left as i64, Ordering::SeqCst);
            status.spooling.store(true, Ordering::SeqCst);
        }
        let forwarder = Forwarder {
            link: link.clone(),
            status: status.clone(),
            ack_timeout: append::ack_timeout(link),
            forwarded: 0,
            already_there: 0,
        };
        tokio::spawn(forwarder.run(journal.clone()));
        Ok((Spool { journal, status }, thread))
    }

    /// Why the spool cannot be written now (a full disk, say), if it cannot.
    pub fn write_error(&self) -> Option<String> {
        self.journal.last_write_error()
    }

    /// Spools `record` (fsynced when this returns). `why`: the log's failure, for the log line
    /// and `last_write_error`.
    pub async fn append(
        &self,
        mut record: Box<EventRecord>,
        key: DedupKey,
        plugins: &str,
        why: Option<String>,
    ) -> Result<Appended, StoreError> {
        record.meta.extra.push((PLUGINS_FACT.to_owned(), plugins.to_owned()));
        self.status.outstanding.fetch_add(1, Ordering::SeqCst);
        if !self.status.spooling.swap(true, Ordering::SeqCst) {
            let why = why.clone().unwrap_or_else(|| "unknown".into());
            tracing::warn!(
                "the NATS log did not acknowledge an event ({why}); spooling accepted events on this host until it does"
            );
        }
        if let Some(why) = why {
            self.status.set_error(Some(why));
        }
        let answer =
            self.journal.append(record, key, vec![Arc::from(FORWARDER)], None, false).await;
        match answer {
            // The log numbers the event when the forwarder publishes it: 0 until then.
            Ok(_) => Ok(Appended::New(0)),
            Err(e) => {
                self.status.outstanding.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// The spool's size on disk.
    pub fn size_bytes(&self) -> Option<u64> {
        self.journal.size_bytes()
    }

    /// Waits for the spool's writes so far.
    pub async fn flush(&self) {
        self.journal.flush().await;
    }

    /// Closes the spool (what is not forwarded stays on disk for the next start).
    pub async fn finish(&self) {
        self.journal.close();
        self.journal.finish().await;
    }
}

/// The forwarder task.
struct Forwarder {
    link: Link,
    status: Arc<Status>,
    ack_timeout: Duration,
    /// Spooled events published (acknowledged) since the spool was last drained.
    forwarded: u64,
    /// ... of which the log had already (suppressed by `Nats-Msg-Id`).
    already_there: u64,
}

/// A spooled event ready to publish.
struct Ready {
    local: u64,
    subject: String,
    msg_id: String,
    plugins: String,
    payload: bytes::Bytes,
}

impl Forwarder {
    async fn run(mut self, spool: Embedded) {
        let mut consumer = spool.consumer(FORWARDER);
        let reporter = consumer.reporter();
        let mut retry: VecDeque<Ready> = VecDeque::new();
        let mut delay = Duration::from_millis(100);
        // The last pass could not tell that the spool is drained (it could not be read, or
        // rows were left): with nothing more to read, it is asked again every second, so that
        // "drained" is said once it is, even if no event is spooled after.
        let mut unsure = false;
        loop {
            if retry.is_empty() {
                let next = if unsure {
                    match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            match self.left(&spool).await {
                                Ok(0) => {
                                    self.drained();
                                    unsure = false;
                                }
                                _ => consumer = spool.consumer(FORWARDER),
                            }
                            continue;
                        }
                    }
                } else {
                    consumer.next().await
                };
                match next {
                    Some(delivery) => retry.push_back(ready(&self.link, delivery)),
                    None => return,
                }
            }
            // Whatever else is spooled already, without waiting for more.
            let mut caught_up = false;
            while retry.len() < BATCH {
                match consumer.next().now_or_never() {
                    Some(Some(delivery)) => retry.push_back(ready(&self.link, delivery)),
                    Some(None) => return,
                    None => {
                        caught_up = true;
                        break;
                    }
                }
            }
            let batch: Vec<&Ready> = retry.iter().take(BATCH).collect();
            let results = futures_util::future::join_all(batch.iter().map(|r| {
                append::publish(
                    &self.link,
                    self.ack_timeout,
                    &r.subject,
                    &r.msg_id,
                    &r.plugins,
                    r.payload.clone(),
                )
            }))
            .await;
            let (mut acked, mut repeats) = (0, 0);
            let mut error = None;
            for result in results {
                match result {
                    Ok(ack) if error.is_none() => {
                        acked += 1;
                        // Sent before (read again after a lost completion): not counted twice.
                        repeats += usize::from(ack.duplicate);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            for done in retry.drain(..acked) {
                reporter.complete(done.local);
            }
            self.forwarded += acked as u64;
            self.already_there += repeats as u64;
            self.status.outstanding.fetch_sub((acked - repeats) as i64, Ordering::SeqCst);
            match error {
                None => {
                    delay = Duration::from_millis(100);
                    // The log acknowledges again: appends go to it directly; the forwarder
                    // drains the rest meanwhile.
                    self.status.acknowledged();
                    // A batch filled to BATCH may have taken the last spooled event: whether
                    // it did is asked now (a spool holding a multiple of BATCH was otherwise
                    // never checked, and "drained" never said: CI, nats_multi).
                    if retry.is_empty() && !caught_up {
                        match consumer.next().now_or_never() {
                            Some(Some(delivery)) => retry.push_back(ready(&self.link, delivery)),
                            Some(None) => return,
                            None => caught_up = true,
                        }
                    }
                    if caught_up && retry.is_empty() && self.forwarded > 0 {
                        match self.left(&spool).await {
                            Ok(0) => {
                                self.drained();
                                unsure = false;
                            }
                            left => {
                                let left = match left {
                                    Ok(n) => format!("{n} events are still in the spool"),
                                    Err(e) => format!(
                                        "the spool cannot be read or written now ({e}); what is \
                                         still in the spool goes once it can be"
                                    ),
                                };
                                tracing::warn!(
                                    forwarded = self.forwarded - self.already_there,
                                    "forwarded spooled events to the NATS log, but not all: \
                                     {left}; reading the spool again from the start"
                                );
                                // Rows behind the cursor (their completion lost with a failed
                                // write) or not readable then: a fresh consumer reads them all.
                                consumer = spool.consumer(FORWARDER);
                                unsure = true;
                            }
                        }
                    }
                }
                Some(e) => {
                    self.status.set_error(Some(e.clone()));
                    tracing::debug!("forwarding spooled events: {e}; again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Forwarder {
    /// Says the spool is drained, with what this pass forwarded.
    fn drained(&mut self) {
        tracing::info!(
            forwarded = self.forwarded - self.already_there,
            already_there = self.already_there,
            "the spool is drained: every spooled event is on the NATS log"
        );
        self.forwarded = 0;
        self.already_there = 0;
    }

    /// How many events the spool still holds, once its writes so far (the completions) are
    /// done; an error when it cannot tell, or when a write failed (a completion may be lost).
    async fn left(&self, spool: &Embedded) -> Result<u64, StoreError> {
        spool.flush().await;
        if let Some(e) = spool.last_write_error() {
            return Err(StoreError::Storage(e));
        }
        let stats = spool.stats(vec![FORWARDER.to_owned()]).await?;
        let left = stats.plugins.iter().find(|p| p.plugin == FORWARDER).map_or(0, |p| p.backlog);
        self.status.outstanding.store(left as i64, Ordering::SeqCst);
        Ok(left)
    }
}

/// A spooled delivery as the message to publish.
fn ready(link: &Link, delivery: Delivery) -> Ready {
    let Delivery { id, mut record, .. } = delivery;
    let mut plugins = String::new();
    record.meta.extra.retain(|(k, v)| {
        if k == PLUGINS_FACT {
            plugins = v.clone();
            false
        } else {
            true
        }
    });
    Ready {
        local: id,
        subject: append::subject(&link.names.stream, &record),
        msg_id: record.meta.dedup_key.clone(),
        plugins,
        payload: append::seal(&record),
    }
}
