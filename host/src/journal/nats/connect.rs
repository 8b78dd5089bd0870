//! `[journal.nats]` -> a connection and a JetStream context, and the names derived from
//! `journal.nats.stream`.

use std::time::Duration;

use async_nats::jetstream;

use crate::config::{NatsAuth, NatsConfig};
use crate::journal::StoreError;

/// The connection every part of the backend uses (cheap to clone).
#[derive(Clone)]
pub(super) struct Link {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
    /// This host's id (host name, process id): consumers' client names, lease holders.
    pub host_id: String,
    /// How long a publish waits for the log's acknowledgement (`ack_timeout_ms`).
    pub ack_timeout: Duration,
}

/// The names of everything the backend keeps in the cluster.
#[derive(Clone, Debug)]
pub(super) struct Names {
    /// The events stream (`journal.nats.stream`).
    pub stream: String,
    /// The dead letters' stream.
    pub dead: String,
    /// The delivery attempts' stream (the console's history).
    pub attempts: String,
    /// Prefix of every bucket of this host group (`<stream>_tokens`, ...).
    pub bucket_prefix: String,
}

impl Names {
    fn of(stream: &str) -> Names {
        Names {
            stream: stream.to_owned(),
            dead: format!("{stream}_DEAD"),
            attempts: format!("{stream}_ATTEMPTS"),
            bucket_prefix: stream.to_owned(),
        }
    }
}

impl Link {
    /// Connects to `config.urls`. The first connection is retried in the background when no
    /// server answers (the host starts and spools); the JetStream context's API timeout is the
    /// ack timeout's and at least 2 s.
    pub async fn connect(config: &NatsConfig) -> Result<Link, StoreError> {
        let host_id = format!(
            "{}-{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into()),
            std::process::id()
        );
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("b24-host {host_id}"))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    other => tracing::debug!("NATS: {other}"),
                }
            });
        options = match &config.auth {
            NatsAuth::None => options,
            NatsAuth::Token(t) => options.token(t.expose().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::NkeySeed(seed) => options.nkey(seed.expose().to_owned()),
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                StoreError::Refused(format!(
                    "journal.nats.creds_file {}: cannot read it: {e}",
                    path.display()
                ))
            })?,
        };
        if config.tls.required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options.connect(config.urls.clone()).await.map_err(|e| {
            StoreError::Storage(format!("cannot connect to NATS at {:?}: {e}", config.urls))
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout.max(Duration::from_secs(2)))
            .build(client.clone());
        Ok(Link {
            client,
            js,
            names: Names::of(&config.stream),
            host_id,
            ack_timeout: config.ack_timeout,
        })
    }

    /// Sends what the client still buffers (acks, publishes) to the server.
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!("cannot flush the NATS connection: {e}");
        }
    }
}

/// `s` as one NATS subject token (a portal's `member_id`, an event code, a plugin name): keeps
/// ASCII letters, digits, `-` and `_`; anything else (`.`, `*`, `>`, whitespace, non-ASCII)
/// becomes `_`; an empty string becomes `_`. Two values may share a token: the subject only
/// routes and filters, the payload carries the real values.
pub(crate) fn subject_token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::subject_token;

    #[test]
    fn subject_tokens_keep_safe_characters_and_replace_the_rest() {
        assert_eq!(subject_token("ONCRMDEALADD"), "ONCRMDEALADD");
        assert_eq!(subject_token("a1-b_2"), "a1-b_2");
        assert_eq!(subject_token("a.b*c>d e"), "a_b_c_d_e");
        assert_eq!(subject_token("пример"), "______");
        assert_eq!(subject_token(""), "_");
    }
}
