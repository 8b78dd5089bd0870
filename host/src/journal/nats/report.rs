//! What `b24-host check` and `/readyz` say about the shared log: whether it answers, the
//! events stream (messages, bytes, replicas and how current each is, its leader), the dead
//! letters' stream, and each plugin's consumer.

use std::time::{Duration, Instant};

use async_nats::connection::State;

use super::{admin, connect::Link};
use crate::config::NatsConfig;
use crate::journal::{
    StoreError,
    admin::{ConsumerReport, LogReport, LogState, PeerReport, StreamReport},
};

/// How long `check` waits for a first connection.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

/// Whether appends reach the log now (connected) or go to the spool.
pub(super) fn state(link: &Link) -> LogState {
    match link.client.connection_state() {
        State::Connected => LogState::Acknowledging,
        State::Pending => LogState::Spooling { reason: "connecting to NATS".into() },
        State::Disconnected => LogState::Spooling { reason: "disconnected from NATS".into() },
    }
}

/// Waits until `link` is connected, at most [`CONNECT_PATIENCE`] (and the ack timeout).
pub(super) async fn connected(link: &Link, config: &NatsConfig) -> Result<(), StoreError> {
    let patience = CONNECT_PATIENCE.max(config.ack_timeout);
    let started = Instant::now();
    while link.client.connection_state() != State::Connected {
        if started.elapsed() >= patience {
            return Err(StoreError::Storage(format!(
                "cannot reach NATS at {}: no server answered within {} s (is the cluster up, and \
                 are journal.nats.urls, credentials and TLS right?)",
                config.urls.join(", "),
                patience.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Connects and reports the log, for the enabled `plugins`.
pub(super) async fn report(
    config: &NatsConfig,
    plugins: &[String],
) -> Result<LogReport, StoreError> {
    let link = Link::connect(config).await?;
    connected(&link, config).await?;
    let info = link.client.server_info();
    let mut report = LogReport {
        server: format!("{} (nats-server {})", info.server_name, info.version),
        dead: (link.names.dead.clone(), None),
        ..LogReport::default()
    };
    if let Some(mut stream) = admin::stream(&link, &link.names.stream).await? {
        let info =
            stream.info().await.map_err(|e| admin::storage("read the stream's info", e))?.clone();
        let cluster = info.cluster.unwrap_or_default();
        report.cluster = cluster.name;
        report.stream = Some(StreamReport {
            name: info.config.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            replicas: info.config.num_replicas,
            leader: cluster.leader,
            peers: cluster
                .replicas
                .into_iter()
                .map(|p| PeerReport {
                    name: p.name,
                    current: p.current,
                    offline: p.offline,
                    lag: p.lag,
                    active_ms: p.active.as_millis() as u64,
                })
                .collect(),
        });
        let mut names = admin::plugins_with_consumers(&link, &stream).await?;
        names.extend(plugins.iter().cloned());
        names.sort();
        names.dedup();
        for plugin in names {
            let line = match admin::consumer_info(&link, &stream, &plugin).await? {
                Some(c) => ConsumerReport {
                    plugin,
                    exists: true,
                    pending: c.num_pending,
                    ack_pending: c.num_ack_pending as u64,
                    redelivered: c.num_redelivered as u64,
                    leader: c.cluster.and_then(|c| c.leader),
                },
                None => ConsumerReport { plugin, ..ConsumerReport::default() },
            };
            report.consumers.push(line);
        }
    }
    if let Some(mut dead) = admin::stream(&link, &link.names.dead).await? {
        let messages = dead
            .info()
            .await
            .map_err(|e| admin::storage("read the dead letters' info", e))?
            .state
            .messages;
        report.dead.1 = Some(messages);
    }
    Ok(report)
}
