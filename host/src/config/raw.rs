//! The serde-facing shape of `host.toml`: every key optional, unknown keys rejected, values that
//! are checked later wrapped in [`Spanned`] so their errors can name a line.
//!
//! Map keys are plain `String`s so that `serde_path_to_error` can put them in key paths; their
//! spans are looked up in the parsed document when needed. Nothing here applies defaults or
//! range checks; `validate.rs` turns a [`RawConfig`] into a [`Config`](super::Config). A few
//! value types have hand-written visitors, for messages that say what is expected (`an integer
//! (milliseconds)`) and so that a token is never echoed back in an error. No type here is
//! `Debug`: they hold tokens and plugin settings.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Unexpected, Visitor, value::MapAccessDeserializer},
};
use toml::Spanned;

/// The whole file.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub state_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub rest: RawRest,
    #[serde(default)]
    pub plugins: RawPlugins,
    #[serde(default)]
    pub plugin: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    pub bind: RawBind,
}

/// `[bind]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBind {
    pub handler: Option<Spanned<String>>,
    pub prune: Option<bool>,
    pub nudge_min_timeout_s: Option<Spanned<Seconds>>,
}

/// `[rest]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRest {
    pub client_id: Option<Spanned<RawToken>>,
    pub client_secret: Option<Spanned<RawToken>>,
    pub oauth_url: Option<Spanned<String>>,
    pub oauth_servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout_ms: Option<Spanned<Millis>>,
    pub rate_per_sec: Option<Spanned<f64>>,
    pub burst: Option<Spanned<Count>>,
    #[serde(default)]
    pub portals: BTreeMap<String, RawRestPortal>,
}

/// `[rest.portals."<member_id>"]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestPortal {
    pub rate_per_sec: Option<Spanned<f64>>,
    pub burst: Option<Spanned<Count>>,
    pub webhook: Option<Spanned<RawToken>>,
    pub offline: Option<RawOffline>,
}

/// `[rest.portals."<member_id>".offline]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOffline {
    pub enabled: Option<bool>,
    pub poll_interval_ms: Option<Spanned<Millis>>,
    pub batch: Option<Spanned<Count>>,
    pub auth_connector: Option<Spanned<String>>,
    pub resume_lost_after_ms: Option<Spanned<Millis>>,
}

/// `[admin]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<RawToken>>,
    pub max_connections: Option<Spanned<Count>>,
}

/// `[journal]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJournal {
    pub backend: Option<Spanned<String>>,
    pub commit_window_ms: Option<Spanned<Millis>>,
    pub dedup_window_ms: Option<Spanned<Millis>>,
    pub keep_completed_hours: Option<Spanned<Count>>,
    pub keep_completed_events: Option<Spanned<Count>>,
    pub nats: Option<Spanned<RawNats>>,
}

/// `[journal.nats]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNats {
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub token: Option<Spanned<RawToken>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<RawToken>>,
    pub nkey_seed: Option<Spanned<RawToken>>,
    pub creds_file: Option<Spanned<String>>,
    pub tls_required: Option<bool>,
    pub tls_ca_file: Option<Spanned<String>>,
    pub tls_cert_file: Option<Spanned<String>>,
    pub tls_key_file: Option<Spanned<String>>,
    pub stream: Option<Spanned<String>>,
    pub replicas: Option<Spanned<Count>>,
    pub sync: Option<Spanned<String>>,
    pub ack_timeout_ms: Option<Spanned<Millis>>,
}

/// `[server]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<Bytes>>,
    pub header_read_timeout_ms: Option<Spanned<Millis>>,
    pub request_read_timeout_ms: Option<Spanned<Millis>>,
    pub max_connections: Option<Spanned<Count>>,
    pub max_connections_per_address: Option<Spanned<Count>>,
    pub shutdown_grace_ms: Option<Spanned<Millis>>,
}

/// `[log]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub plugin_max_line_bytes: Option<Spanned<Bytes>>,
    pub plugin_lines_per_second: Option<Spanned<Count>>,
    pub plugin_log_burst: Option<Spanned<Count>>,
}

/// `[auth]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub learn_tokens_on_install: Option<bool>,
    pub max_learned_portals: Option<Spanned<Count>>,
    pub unknown_installs_per_minute: Option<Spanned<Count>>,
    #[serde(default)]
    pub portals: RawPortals,
}

/// `[plugins]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugins {
    pub dir: Option<Spanned<String>>,
    pub enabled: Option<Vec<Spanned<String>>>,
    pub start_timeout_ms: Option<Spanned<Millis>>,
}

/// `[plugin.<name>]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    pub events: Option<Vec<Spanned<String>>>,
    pub entities: Option<Vec<Spanned<String>>>,
    pub fields: Option<Vec<Spanned<String>>>,
    pub timeout_ms: Option<Spanned<Millis>>,
    pub concurrency: Option<Spanned<Count>>,
    pub isolation: Option<Spanned<String>>,
    pub memory_limit_mb: Option<Spanned<Count>>,
    pub kill_after_ms: Option<Spanned<Millis>>,
    pub max_crashes: Option<Spanned<Count>>,
    pub pause_after_failures: Option<Spanned<Count>>,
    #[serde(default)]
    pub retry: RawRetry,
    /// Any TOML at all; only required to be a table.
    pub settings: Option<Spanned<toml::Table>>,
    pub kind: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<Spanned<RawEnv>>,
    pub window: Option<Spanned<Count>>,
    pub url: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub secret: Option<Spanned<RawToken>>,
}

/// `[plugin.<name>] env`: name → value, in file order; a value is a string or `{ env = "VAR" }`
/// (the [`RawToken`] forms: values are never echoed in errors).
#[derive(Default)]
pub(crate) struct RawEnv(pub Vec<(String, Spanned<RawToken>)>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(PortalsVisitor(
                r#"a table of NAME = "value" or NAME = { env = "VARIABLE" }"#,
            ))
            .map(|p| RawEnv(p.0))
    }
}

/// `[plugin.<name>.retry]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: Option<Spanned<Count>>,
    pub base_ms: Option<Spanned<Millis>>,
    pub cap_ms: Option<Spanned<Millis>>,
}

/// A non-negative integer, with a visitor whose "expected" text names the unit.
struct UIntVisitor(&'static str);

impl<'de> Visitor<'de> for UIntVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(Unexpected::Other("a too large integer"), &self))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(Unexpected::Other("an out-of-range integer"), &self))
    }
}

macro_rules! uint_newtype {
    ($(#[$doc:meta])* $name:ident, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct $name(pub u64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_u64(UIntVisitor($expecting)).map($name)
            }
        }
    };
}

uint_newtype!(
    /// A `*_ms` value.
    Millis,
    "an integer (milliseconds)"
);
uint_newtype!(
    /// A `*_s` value.
    Seconds,
    "an integer (seconds)"
);
uint_newtype!(
    /// A size in bytes.
    Bytes,
    "an integer (bytes)"
);
uint_newtype!(
    /// A count (attempts, concurrency).
    Count,
    "a positive integer"
);

/// `[auth.portals]`: member_id → token, in file order. TOML itself rejects a key given twice.
#[derive(Default)]
pub(crate) struct RawPortals(pub Vec<(String, Spanned<RawToken>)>);

/// One portal's token: a literal, or the name of an environment variable holding it.
pub(crate) enum RawToken {
    /// `"member" = "token"`.
    Literal(String),
    /// `"member" = { env = "NAME" }`.
    Env(Spanned<String>),
}

/// The `{ env = "NAME" }` form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvRef {
    env: Spanned<String>,
}

/// Implements the scalar `visit_*` methods so that they fail without echoing the value: the
/// value may be a token written in the wrong place.
macro_rules! reject_scalars_quietly {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::invalid_type(Unexpected::Other("boolean"), &self))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::invalid_type(Unexpected::Other("integer"), &self))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::invalid_type(Unexpected::Other("integer"), &self))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::invalid_type(Unexpected::Other("float"), &self))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::invalid_type(Unexpected::Seq, &self))
        }
    };
}

/// A table of name → [`RawToken`]; the text says what the names are.
struct PortalsVisitor(&'static str);

impl<'de> Visitor<'de> for PortalsVisitor {
    type Value = RawPortals;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPortals, A::Error> {
        let mut portals = Vec::new();
        while let Some(member) = map.next_key::<String>()? {
            let token = map.next_value::<Spanned<RawToken>>()?;
            portals.push((member, token));
        }
        Ok(RawPortals(portals))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawPortals, E> {
        Err(E::invalid_type(Unexpected::Other("string"), &self))
    }

    reject_scalars_quietly!();
}

impl<'de> Deserialize<'de> for RawPortals {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PortalsVisitor("a table of member_id = token"))
    }
}

struct TokenVisitor;

impl<'de> Visitor<'de> for TokenVisitor {
    type Value = RawToken;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a token string or { env = "VARIABLE" }"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawToken, E> {
        Ok(RawToken::Literal(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawToken, E> {
        Ok(RawToken::Literal(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawToken, A::Error> {
        EnvRef::deserialize(MapAccessDeserializer::new(map)).map(|r| RawToken::Env(r.env))
    }

    reject_scalars_quietly!();
}

impl<'de> Deserialize<'de> for RawToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TokenVisitor)
    }
}
