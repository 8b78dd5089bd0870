//! A portal's stored install: the installer's OAuth pair, taken only from a verified
//! `ONAPPINSTALL` (or `ONAPPUPDATE`), kept in the journal (`oauth`), refreshed at the OAuth
//! server chosen at the install when the portal says `expired_token`. A refresh token is
//! single-use: the new one is stored (durably) before it is used.
//!
//! Every other event's `auth[refresh_token]` belongs to whoever caused the event (an
//! `ONOFFLINEEVENT`'s, a bot's, a business process's user) and is never stored: only the
//! install's pair is an administrator's. An `ONAPPUPDATE` replaces the pair but keeps the
//! install's REST endpoint, domain and OAuth server: no later event moves where the host
//! sends the portal's tokens. `ONAPPUNINSTALL` replaces the record with [`Stored::Uninstalled`].

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
    /// The portal's REST base URL, from the verified install (or the OAuth server's answer):
    /// every call with the stored tokens goes here, whatever a later event names.
    #[serde(default)]
    pub client_endpoint: Option<String>,
    /// The OAuth server the install named (`auth[server_endpoint]`).
    #[serde(default)]
    pub server_endpoint: Option<String>,
    /// The configured token URL (one of `rest.oauth_servers`) chosen for this portal at its
    /// install: its refreshes go there. `None` in pairs stored before the choice was kept.
    #[serde(default)]
    pub oauth_url: Option<String>,
    /// The portal's domain at the install.
    #[serde(default)]
    pub domain: Option<String>,
    /// When the install (or update) that stored the pair was accepted, ms since the epoch.
    #[serde(default)]
    pub installed_at_ms: Option<i64>,
    /// The journal's key (hex) of the install or update event that stored the pair: a repeat
    /// of that event (a proxy's retry) must not store its pair again over a refreshed one,
    /// whose refresh token alone is still good. Kept through refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_key: Option<String>,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field("expires", &self.expires)
            .field("client_endpoint", &self.client_endpoint)
            .field("oauth_url", &self.oauth_url)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// What a portal's `oauth` record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The installed app's pair.
    Tokens(StoredTokens),
    /// A verified `ONAPPUNINSTALL` forgot the pair at this time (ms since the epoch): nothing
    /// is refreshed or polled until the app is installed again.
    Uninstalled(i64),
}

/// The record written by an uninstall.
#[derive(Serialize, Deserialize)]
struct Tombstone {
    uninstalled_at_ms: i64,
}

impl Stored {
    /// Reads a stored record; `None` for bytes that are neither (then nothing is stored).
    pub fn parse(bytes: &[u8]) -> Option<Stored> {
        if let Ok(tokens) = serde_json::from_slice::<StoredTokens>(bytes) {
            return Some(Stored::Tokens(tokens));
        }
        serde_json::from_slice::<Tombstone>(bytes)
            .ok()
            .map(|t| Stored::Uninstalled(t.uninstalled_at_ms))
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Stored::Tokens(tokens) => serde_json::to_vec(tokens),
            Stored::Uninstalled(at) => serde_json::to_vec(&Tombstone { uninstalled_at_ms: *at }),
        }
        .unwrap_or_default()
    }

    /// The pair, if the app is installed.
    pub fn tokens(self) -> Option<StoredTokens> {
        match self {
            Stored::Tokens(tokens) => Some(tokens),
            Stored::Uninstalled(_) => None,
        }
    }
}

/// The key that names the install or update `event` in a stored pair
/// ([`StoredTokens::install_key`]): its journal dedup key, in hex.
pub fn install_key(event: &Decoded) -> String {
    crate::record::hex(&crate::decode::dedup_key(event))
}

/// Whether an event of `code` carries the installer's pair: only installs and updates do.
pub fn carries_installer_pair(code: &str) -> bool {
    matches!(code, "ONAPPINSTALL" | "ONAPPUPDATE")
}

impl StoredTokens {
    /// The pair an authenticated `ONAPPINSTALL` or `ONAPPUPDATE` carries, to store as the
    /// portal's; `None` for any other event (its pair is the acting user's, not the
    /// installer's) or one without a refresh token. `oauth_url` is the configured server chosen
    /// for the portal (none when the install's `server_endpoint` fits none). An update keeps
    /// what the install stored about where the portal is (`previous`): its REST endpoint,
    /// OAuth server and domain.
    pub fn from_install(
        event: &Decoded,
        oauth_url: Option<String>,
        previous: Option<&StoredTokens>,
        now_ms: i64,
    ) -> Option<StoredTokens> {
        if !carries_installer_pair(&event.code) {
            return None;
        }
        let refresh = event.auth.refresh_token.as_ref().filter(|t| !t.is_empty())?;
        let user = event.auth.user.as_ref()?;
        let mut tokens = StoredTokens {
            access_token: user.access_token.expose().to_owned(),
            refresh_token: refresh.expose().to_owned(),
            expires: user.expires,
            client_endpoint: event.auth.client_endpoint.clone(),
            server_endpoint: event.auth.server_endpoint.clone(),
            oauth_url,
            domain: Some(event.auth.domain.clone()).filter(|d| !d.is_empty()),
            installed_at_ms: Some(now_ms),
            install_key: Some(install_key(event)),
        };
        if let Some(install) = previous.filter(|_| event.code == "ONAPPUPDATE") {
            tokens.keep_place_of(install);
        }
        Some(tokens)
    }

    /// Keeps `install`'s REST endpoint, OAuth server and domain (where it has them).
    pub fn keep_place_of(&mut self, install: &StoredTokens) {
        if install.client_endpoint.is_some() {
            self.client_endpoint = install.client_endpoint.clone();
        }
        if install.oauth_url.is_some() {
            self.oauth_url = install.oauth_url.clone();
            self.server_endpoint = install.server_endpoint.clone();
        }
        if install.domain.is_some() {
            self.domain = install.domain.clone();
        }
        if install.installed_at_ms.is_some() {
            self.installed_at_ms = install.installed_at_ms;
        }
    }

    /// The access token as a secret.
    pub fn access(&self) -> Secret {
        Secret::new(self.access_token.as_str())
    }

    /// What others may know of the install: everything but the tokens.
    pub fn install(&self, member_id: &str) -> PortalInstall {
        PortalInstall {
            member_id: member_id.to_owned(),
            domain: self.domain.clone(),
            client_endpoint: self.client_endpoint.clone(),
            server_endpoint: self.server_endpoint.clone(),
            oauth_url: self.oauth_url.clone(),
            installed_at_ms: self.installed_at_ms,
        }
    }
}

/// A portal's verified install, without its tokens: where the host calls it and refreshes
/// its pair ([`super::RestClient::install`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalInstall {
    /// The portal.
    pub member_id: String,
    /// Its domain at the install.
    pub domain: Option<String>,
    /// Its REST base URL: where calls with the stored tokens go.
    pub client_endpoint: Option<String>,
    /// The OAuth server the install named.
    pub server_endpoint: Option<String>,
    /// The configured token URL its refreshes go to.
    pub oauth_url: Option<String>,
    /// When the install was accepted, ms since the epoch.
    pub installed_at_ms: Option<i64>,
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
    /// The portal's domain.
    #[serde(default)]
    pub domain: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Format, decode};

    fn event(code: &str, endpoint: &str) -> Decoded {
        let body = format!(
            "event={code}&auth[access_token]=AT&auth[refresh_token]=RT&auth[expires]=1700000000\
             &auth[domain]=p.bitrix24.com&auth[client_endpoint]={endpoint}\
             &auth[server_endpoint]=https://oauth.bitrix.info/rest/&auth[member_id]=m\
             &auth[user_id]=7&auth[application_token]=app"
        );
        decode(body.as_bytes(), Format::Form).unwrap()
    }

    #[test]
    fn only_installs_and_updates_give_the_portal_its_pair() {
        for code in ["ONOFFLINEEVENT", "ONIMBOTMESSAGEADD", "ONCRMDEALUPDATE", "ONAPPUNINSTALL"] {
            assert!(
                StoredTokens::from_install(&event(code, "https://x/rest/"), None, None, 1)
                    .is_none(),
                "{code}"
            );
        }
        let install = StoredTokens::from_install(
            &event("ONAPPINSTALL", "https://p/rest/"),
            Some("o".into()),
            None,
            5,
        )
        .unwrap();
        assert_eq!(install.refresh_token, "RT");
        assert_eq!(install.client_endpoint.as_deref(), Some("https://p/rest/"));
        assert_eq!(install.domain.as_deref(), Some("p.bitrix24.com"));
        assert_eq!((install.oauth_url.as_deref(), install.installed_at_ms), (Some("o"), Some(5)));
        // An update brings a new pair but not a new place: the install's endpoint stays.
        let update = StoredTokens::from_install(
            &event("ONAPPUPDATE", "https://elsewhere/rest/"),
            None,
            Some(&install),
            9,
        )
        .unwrap();
        assert_eq!(update.client_endpoint.as_deref(), Some("https://p/rest/"));
        assert_eq!((update.oauth_url.as_deref(), update.installed_at_ms), (Some("o"), Some(5)));
        // An update with nothing stored before is taken as it is.
        let alone =
            StoredTokens::from_install(&event("ONAPPUPDATE", "https://u/rest/"), None, None, 9)
                .unwrap();
        assert_eq!(alone.client_endpoint.as_deref(), Some("https://u/rest/"));
    }

    #[test]
    fn records_read_back_and_tombstones_hold_no_pair() {
        let tokens =
            StoredTokens::from_install(&event("ONAPPINSTALL", "https://p/rest/"), None, None, 5)
                .unwrap();
        let stored = Stored::Tokens(tokens.clone());
        assert_eq!(Stored::parse(&stored.to_bytes()), Some(stored));
        let gone = Stored::Uninstalled(42);
        assert_eq!(Stored::parse(&gone.to_bytes()), Some(gone.clone()));
        assert_eq!(gone.tokens(), None);
        assert_eq!(Stored::parse(b"garbage"), None);
        // Pairs stored before the install record grew read as they are.
        let old =
            br#"{"access_token":"a","refresh_token":"r","client_endpoint":"https://p/rest/"}"#;
        let Some(Stored::Tokens(old)) = Stored::parse(old) else { panic!("not read") };
        assert_eq!((old.oauth_url, old.domain), (None, None));
        assert!(!format!("{tokens:?}").contains("RT"), "Debug shows a token");
    }
}
