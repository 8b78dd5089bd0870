//! What the backend needs in the cluster before the host accepts its first event: the events
//! stream `S`, the dead letters' stream `S_DEAD`, the attempts' stream `S_ATTEMPTS`, the bucket `S_pending` and one durable pull
//! consumer per enabled plugin. Created when missing, updated to this configuration when
//! present (a stream's retention cannot change: that is refused with the reason).
//!
//! The events stream has `Interest` retention (an event goes once every consumer acked it) and
//! discard `New` (a full stream refuses, it never drops an accepted event): so every consumer
//! must exist before the first publish, which is why `Nats::open` runs this before the spool
//! starts forwarding and before the listener opens.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};

use super::connect::{Link, subject_token};
use crate::config::JournalConfig;
use crate::journal::StoreError;

/// How long a consumer may hold a message without acking or extending it before the server
/// gives it to another host: shorter than the delivery lease (`lease::LEASE_TIME`), so a dead
/// host's messages are redeliverable before another host can take the plugin's lease. A held
/// message is kept alive with `AckKind::Progress` (`deliver.rs`).
pub(super) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Messages a plugin's consumer may have delivered and not acked, across every host. Per-plugin
/// order across hosts comes from the delivery lease (one host pulls at a time), not from
/// this limit; it only has to cover what one host buffers and runs at once.
pub(super) const MAX_ACK_PENDING: i64 = 1024;

/// How long `Nats::open` retries while the cluster is unreachable or electing.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// How long one setup attempt may wait for the log.
const ATTEMPT: Duration = Duration::from_secs(5);

/// The duplicate window when `journal.dedup_window_ms` is 0 (a stream's 0 means the server's
/// 2 min default; the host then sends a per-accept id, see `append.rs`).
const OFF_WINDOW: Duration = Duration::from_secs(120);

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("NATS setup: cannot {what}: {e}"))
}

/// The events stream's subjects filter for `plugin`'s consumer: every event, and the
/// plugin's own replays.
fn filters(link: &Link, plugin: &str) -> Vec<String> {
    let s = &link.names.stream;
    vec![format!("b24.{s}.events.>"), format!("b24.{s}.replay.{}.>", subject_token(plugin))]
}

/// `plugin`'s durable consumer name: `S_<plugin>`.
pub(super) fn consumer_name(link: &Link, plugin: &str) -> String {
    format!("{}_{}", link.names.stream, subject_token(plugin))
}

/// The bucket of retry states and skips.
pub(super) fn pending_bucket(link: &Link) -> String {
    format!("{}_pending", link.names.bucket_prefix)
}

/// Streams, bucket and `plugins`' consumers, retried for up to [`PATIENCE`] while the cluster
/// does not answer (a log line each time), then refused with what to check.
pub(super) async fn run(
    link: &Link,
    config: &JournalConfig,
    replicas: usize,
    plugins: &[String],
) -> Result<(jetstream::stream::Stream, kv::Store), StoreError> {
    patiently(link, replicas, || once(link, config, replicas, plugins)).await
}

/// Runs `attempt` until it succeeds, for up to [`PATIENCE`] while the cluster does not answer
/// or cannot place a stream yet (a fresh cluster's peers, an election: "no suitable peers"),
/// then refuses with what to check. A refusal (a configuration matter) ends it at once.
pub(super) async fn patiently<T, F, Fut>(
    link: &Link,
    replicas: usize,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        // An attempt waits at most ATTEMPT (a request to a server not connected yet can
        // wait much longer) and never past the patience.
        let budget = ATTEMPT.min(PATIENCE.saturating_sub(started.elapsed())).max(delay);
        let result = tokio::time::timeout(budget, attempt()).await.unwrap_or_else(|_| {
            Err(StoreError::Storage(format!("no answer within {} ms", budget.as_millis())))
        });
        match result {
            Ok(done) => return Ok(done),
            // A stream whose retention differs is a configuration matter: no retry helps.
            Err(StoreError::Refused(why)) => return Err(StoreError::Refused(why)),
            Err(e) if started.elapsed() + delay < PATIENCE => {
                tracing::warn!(
                    "the NATS log is not ready yet ({e}); retrying for up to {}s",
                    PATIENCE.saturating_sub(started.elapsed()).as_secs()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => {
                return Err(StoreError::Refused(format!(
                    "cannot set up the NATS log (stream {}) within {}s: {e}. Check that \
                     journal.nats.urls reach the servers, that they run with JetStream enabled, \
                     that a majority of the cluster is up (a stream of {replicas} replicas needs \
                     {} nodes), and the credentials; `b24-host check` reports what it sees",
                    link.names.stream,
                    PATIENCE.as_secs(),
                    replicas / 2 + 1
                )));
            }
        }
    }
}

async fn once(
    link: &Link,
    config: &JournalConfig,
    replicas: usize,
    plugins: &[String],
) -> Result<(jetstream::stream::Stream, kv::Store), StoreError> {
    let s = &link.names.stream;
    let window = if config.dedup_window.is_zero() { OFF_WINDOW } else { config.dedup_window };
    let events = stream::Config {
        name: s.clone(),
        description: Some("b24-host: accepted events and replays".into()),
        subjects: vec![format!("b24.{s}.events.>"), format!("b24.{s}.replay.>")],
        retention: stream::RetentionPolicy::Interest,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: window,
        ..Default::default()
    };
    ensure_stream(link, events).await?;
    let dead = stream::Config {
        name: link.names.dead.clone(),
        description: Some("b24-host: dead letters".into()),
        subjects: vec![format!("b24.{s}.dead.>")],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: window,
        ..Default::default()
    };
    ensure_stream(link, dead).await?;
    // History, not data: limits retention, the latest attempts per (plugin, event) subject,
    // gone with the completed events' keep time.
    let attempts = stream::Config {
        name: link.names.attempts.clone(),
        description: Some("b24-host: delivery attempts, for the console".into()),
        subjects: vec![format!("b24.{s}.attempts.>")],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: crate::journal::admin::MAX_ATTEMPTS_KEPT as i64,
        max_age: config.keep_completed_for.max(Duration::from_secs(3600)),
        ..Default::default()
    };
    ensure_stream(link, attempts).await?;
    let pending = open_bucket(link, replicas).await?;
    let stream =
        link.js.get_stream(s).await.map_err(|e| storage(&format!("open stream {s}"), e))?;
    for plugin in plugins {
        ensure_consumer(link, &stream, plugin).await?;
    }
    Ok((stream, pending))
}

/// Creates the stream, or updates it to `config` (a retention change is refused).
async fn ensure_stream(link: &Link, config: stream::Config) -> Result<(), StoreError> {
    let name = config.name.clone();
    let retention = config.retention;
    match link.js.get_stream(&name).await {
        Ok(mut existing) => {
            let info =
                existing.info().await.map_err(|e| storage(&format!("read stream {name}"), e))?;
            if info.config.retention != retention {
                return Err(StoreError::Refused(format!(
                    "the NATS stream {name} exists with retention {:?}, b24-host needs {retention:?}: \
                     use another journal.nats.stream, or move the events and delete it",
                    info.config.retention
                )));
            }
            link.js
                .update_stream(config)
                .await
                .map_err(|e| storage(&format!("update stream {name}"), e))?;
        }
        Err(_) => {
            link.js
                .create_stream(config)
                .await
                .map_err(|e| storage(&format!("create stream {name}"), e))?;
        }
    }
    Ok(())
}

async fn open_bucket(link: &Link, replicas: usize) -> Result<kv::Store, StoreError> {
    let bucket = pending_bucket(link);
    match link.js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => link
            .js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "b24-host: plugins' retry states and skips".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| storage(&format!("create bucket {bucket}"), e)),
    }
}

/// Creates `plugin`'s durable consumer, or updates it to this configuration. A new consumer
/// starts at the first event the stream holds (`DeliverPolicy::All`): at a first start that is
/// every event; for a plugin enabled later (a reload, or a host with a longer plugin list) it
/// is every event still kept for some consumer, and those not addressed to the plugin
/// (`B24-Plugins`) are acked at once without a delivery.
pub(super) async fn ensure_consumer(
    link: &Link,
    stream: &jetstream::stream::Stream,
    plugin: &str,
) -> Result<(), StoreError> {
    let name = consumer_name(link, plugin);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("b24-host: deliveries to plugin {plugin}")),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // The host counts attempts and crashes and buries (pitfall 4); no server backoff,
        // which would override ack_wait (pitfall 3).
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subjects: filters(link, plugin),
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| storage(&format!("create consumer {name}"), e))?;
    Ok(())
}
