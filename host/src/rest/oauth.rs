//! A portal's stored OAuth tokens: captured from `ONAPPINSTALL`/`ONAPPUPDATE`, kept in the
//! journal, refreshed through the portal's OAuth server when the portal says `expired_token`.
//! A refresh token is single-use: the new one is stored (durably) before it is used.

use b24_plugin_api::Secret;
use serde::{Deserialize, Serialize};

use crate::decode::Decoded;

/// What the host keeps to call a portal on the application's behalf.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    /// The access token (valid about an hour).
    pub access_token: String,
    /// The refresh token (single-use, valid 180 days).
    pub refresh_token: String,
    /// Unix time at which the access token expires, when known.
    #[serde(default)]
    pub expires: Option<i64>,
    /// The portal's REST base URL.
    #[serde(default)]
    pub client_endpoint: Option<String>,
    /// The OAuth server that issued the tokens.
    #[serde(default)]
    pub server_endpoint: Option<String>,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field("expires", &self.expires)
            .field("client_endpoint", &self.client_endpoint)
            .finish_non_exhaustive()
    }
}

impl StoredTokens {
    /// The tokens an install/update event carries (it has a refresh token), if any.
    pub fn from_event(event: &Decoded) -> Option<StoredTokens> {
        let refresh = event.auth.refresh_token.as_ref()?;
        let user = event.auth.user.as_ref()?;
        Some(StoredTokens {
            access_token: user.access_token.expose().to_owned(),
            refresh_token: refresh.expose().to_owned(),
            expires: user.expires,
            client_endpoint: event.auth.client_endpoint.clone(),
            server_endpoint: event.auth.server_endpoint.clone(),
        })
    }

    /// The access token as a secret.
    pub fn access(&self) -> Secret {
        Secret::new(self.access_token.as_str())
    }
}

/// The answer of `GET {oauth}/oauth/token/?grant_type=refresh_token...`.
#[derive(Deserialize)]
pub struct RefreshAnswer {
    /// The new access token.
    pub access_token: String,
    /// The new refresh token; the old one is spent.
    pub refresh_token: String,
    /// Unix expiry of the access token.
    #[serde(default)]
    pub expires: Option<i64>,
    /// Seconds until it expires.
    #[serde(default)]
    pub expires_in: Option<i64>,
    /// The portal's REST base URL (it may have moved).
    #[serde(default)]
    pub client_endpoint: Option<String>,
    /// The OAuth server.
    #[serde(default)]
    pub server_endpoint: Option<String>,
    /// The portal the tokens belong to: what an install's verification compares.
    #[serde(default)]
    pub member_id: Option<String>,
}
