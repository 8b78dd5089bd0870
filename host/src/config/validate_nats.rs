//! Checks `[journal.nats]`: the shared log's servers, credentials, TLS and stream settings.

use std::{env::VarError, path::Path, time::Duration};

use b24_plugin_api::Secret;
use toml::Spanned;

use super::{
    ConfigError,
    error::Source,
    model::{
        DEFAULT_NATS_ACK_TIMEOUT, DEFAULT_NATS_REPLICAS, DEFAULT_NATS_STREAM, NatsAuth, NatsConfig,
        NatsSync, NatsTls,
    },
    raw::RawNats,
    validate::{count, millis, secret},
};

/// Most replicas JetStream allows.
const MAX_REPLICAS: u64 = 5;
/// The shortest ack timeout: less than one round trip at R3 would spool everything.
const MIN_ACK_TIMEOUT_MS: u64 = 10;

pub(super) fn nats(
    src: &Source<'_>,
    base_dir: &Path,
    raw: Spanned<RawNats>,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<NatsConfig, ConfigError> {
    let table = raw.span();
    let mut raw = raw.into_inner();
    let Some(urls) = raw.urls.take() else {
        return Err(src.invalid(
            table,
            "journal.nats.urls",
            "is missing: list the NATS servers, e.g. urls = [\"nats://10.0.0.1:4222\"]",
        ));
    };
    let urls_span = urls.span();
    let urls = urls.into_inner();
    if urls.is_empty() {
        return Err(src.invalid(urls_span, "journal.nats.urls", "must name at least one server"));
    }
    let mut tls = NatsTls { required: raw.tls_required.unwrap_or(false), ..NatsTls::default() };
    let mut checked = Vec::with_capacity(urls.len());
    for url in urls {
        let text = url.get_ref().trim();
        let scheme = text.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("nats") | None => {}
            Some("tls") => tls.required = true,
            Some(other) => {
                return Err(src.invalid(
                    url.span(),
                    "journal.nats.urls",
                    format!("{other:?} is not a NATS url scheme: use nats://host:port or tls://host:port"),
                ));
            }
        }
        let rest = text.split_once("://").map_or(text, |(_, r)| r);
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
        if host_port.is_empty() || host_port.contains(['/', ' ']) {
            return Err(src.invalid(
                url.span(),
                "journal.nats.urls",
                format!("{:?} is not a server address like nats://10.0.0.1:4222", url.get_ref()),
            ));
        }
        if rest.contains('@') {
            return Err(src.invalid(
                url.span(),
                "journal.nats.urls",
                "must not carry credentials: use token, user and password, nkey_seed or creds_file",
            ));
        }
        checked.push(text.to_owned());
    }
    let auth = auth(src, base_dir, table.clone(), &raw, env)?;
    let file = |value: &Option<Spanned<String>>, key: &str| -> Result<_, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) if v.get_ref().is_empty() => {
                Err(src.invalid(v.span(), format!("journal.nats.{key}"), "must not be empty"))
            }
            Some(v) => Ok(Some(base_dir.join(v.get_ref()))),
        }
    };
    tls.ca_file = file(&raw.tls_ca_file, "tls_ca_file")?;
    tls.cert_file = file(&raw.tls_cert_file, "tls_cert_file")?;
    tls.key_file = file(&raw.tls_key_file, "tls_key_file")?;
    match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(v), None) => {
            return Err(src.invalid(
                v.span(),
                "journal.nats.tls_cert_file",
                "needs tls_key_file too (the certificate's private key)",
            ));
        }
        (None, Some(v)) => {
            return Err(src.invalid(
                v.span(),
                "journal.nats.tls_key_file",
                "needs tls_cert_file too (the certificate it belongs to)",
            ));
        }
        _ => {}
    }
    let stream = match raw.stream {
        None => DEFAULT_NATS_STREAM.to_owned(),
        Some(s) => {
            let name = s.get_ref();
            let ok = !name.is_empty()
                && name.len() <= 32
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(src.invalid(
                    s.span(),
                    "journal.nats.stream",
                    format!(
                        "{name:?} is not a stream name: 1 to 32 of A-Z, a-z, 0-9, _ and - (the dead-letter stream and the buckets are named after it)"
                    ),
                ));
            }
            name.clone()
        }
    };
    let replicas = match raw.replicas {
        None => DEFAULT_NATS_REPLICAS,
        Some(n) => count(src, &n, "journal.nats.replicas", MAX_REPLICAS)? as usize,
    };
    let sync = match raw.sync {
        None => NatsSync::default(),
        Some(s) => match s.get_ref().as_str() {
            "server" => NatsSync::Server,
            "always" => NatsSync::Always,
            other => {
                return Err(src.invalid(
                    s.span(),
                    "journal.nats.sync",
                    format!("{other:?}: use \"server\" (the servers' sync_interval) or \"always\""),
                ));
            }
        },
    };
    let ack_timeout = match raw.ack_timeout_ms {
        None => DEFAULT_NATS_ACK_TIMEOUT,
        Some(ms) => millis(src, &ms, "journal.nats.ack_timeout_ms", MIN_ACK_TIMEOUT_MS)?,
    };
    Ok(NatsConfig {
        urls: checked,
        auth,
        tls,
        stream,
        replicas,
        sync,
        ack_timeout: cap(ack_timeout),
    })
}

/// An ack timeout longer than a minute would hold Bitrix24's request past its own timeout.
fn cap(d: Duration) -> Duration {
    d.min(Duration::from_secs(60))
}

fn auth(
    src: &Source<'_>,
    base_dir: &Path,
    table: std::ops::Range<usize>,
    raw: &RawNats,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<NatsAuth, ConfigError> {
    let given = [
        raw.token.as_ref().map(|t| ("token", t.span())),
        raw.user.as_ref().map(|t| ("user", t.span())),
        raw.nkey_seed.as_ref().map(|t| ("nkey_seed", t.span())),
        raw.creds_file.as_ref().map(|t| ("creds_file", t.span())),
    ];
    let given: Vec<_> = given.into_iter().flatten().collect();
    if given.len() > 1 {
        let names: Vec<&str> = given.iter().map(|(n, _)| *n).collect();
        return Err(src.invalid(
            given[1].1.clone(),
            format!("journal.nats.{}", given[1].0),
            format!("give one way to authenticate, not {}", names.join(" and ")),
        ));
    }
    if let (Some(p), None) = (&raw.password, &raw.user) {
        return Err(src.invalid(p.span(), "journal.nats.password", "needs user too"));
    }
    let clone_token = |t: &Spanned<super::raw::RawToken>| {
        Spanned::new(
            t.span(),
            match t.get_ref() {
                super::raw::RawToken::Literal(s) => super::raw::RawToken::Literal(s.clone()),
                super::raw::RawToken::Env(e) => super::raw::RawToken::Env(e.clone()),
            },
        )
    };
    if let Some(t) = &raw.token {
        let value = secret(src, &["journal", "nats", "token"], clone_token(t), env)?;
        return Ok(NatsAuth::Token(Secret::new(value)));
    }
    if let Some(user) = &raw.user {
        let Some(password) = &raw.password else {
            return Err(src.invalid(user.span(), "journal.nats.user", "needs password too"));
        };
        let password = secret(src, &["journal", "nats", "password"], clone_token(password), env)?;
        return Ok(NatsAuth::UserPassword {
            user: user.get_ref().clone(),
            password: Secret::new(password),
        });
    }
    if let Some(seed) = &raw.nkey_seed {
        let value = secret(src, &["journal", "nats", "nkey_seed"], clone_token(seed), env)?;
        if !value.starts_with("SU") {
            return Err(src.invalid(
                seed.span(),
                "journal.nats.nkey_seed",
                "is not a user nkey seed (it starts with SU)",
            ));
        }
        return Ok(NatsAuth::NkeySeed(Secret::new(value)));
    }
    if let Some(path) = &raw.creds_file {
        if path.get_ref().is_empty() {
            return Err(src.invalid(path.span(), "journal.nats.creds_file", "must not be empty"));
        }
        return Ok(NatsAuth::CredsFile(base_dir.join(path.get_ref())));
    }
    let _ = table;
    Ok(NatsAuth::None)
}
