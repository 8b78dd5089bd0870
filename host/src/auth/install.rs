//! Verifying an `ONAPPINSTALL` before its token is learned.
//!
//! A portal's `member_id` is not secret, so an install event proves nothing by itself: anyone
//! could post one first with a token of their own. What only the real portal (and the OAuth
//! server) knows is the install's `auth[refresh_token]`. The host exchanges it at one of the
//! OAuth servers of its own config (`rest.oauth_servers`: the one at the origin the event's
//! `server_endpoint` names; an address not on the list is never asked) with the application's
//! `rest.client_id`/`client_secret`, and trusts the install only if the answer names the
//! event's `member_id`. The exchange spends the refresh token; the new pair it yields, with the
//! server chosen, becomes the portal's stored install.
//!
//! Installs from unknown portals are rate-limited (`auth.unknown_installs_per_minute`, all
//! portals together) and verified one at a time; at most `auth.max_learned_portals` portals are
//! learned.

use std::{sync::Mutex, time::Instant};

use b24_plugin_api::Secret;
use reqwest::redirect::Policy;
use serde_json::Value;

use super::AuthError;
use crate::{
    config::{AuthConfig, RestConfig},
    decode::Decoded,
    rest::{
        check_scheme,
        oauth::{RefreshAnswer, StoredTokens},
        without_url,
    },
};

/// Why an install was not verified. The text is safe to show and to log (no token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The event does not authenticate (the portal is no longer unknown, or learning is off).
    #[error("{0}")]
    Auth(AuthError),
    /// More installs from unknown portals than `auth.unknown_installs_per_minute`.
    #[error("too many installs from unknown portals; try again in a minute")]
    RateLimited,
    /// `rest.client_id`/`client_secret` are not set: nothing to verify with.
    #[error(
        "cannot verify the install: rest.client_id and rest.client_secret are not set, so its token is not learned"
    )]
    NoCredentials,
    /// `auth.max_learned_portals` portals are learned already.
    #[error("the host has learned its limit of {0} portals (auth.max_learned_portals)")]
    TooManyPortals(usize),
    /// The event has no `auth[refresh_token]`.
    #[error("the install carries no auth[refresh_token] to verify")]
    NoRefreshToken,
    /// The OAuth server refused the refresh token (its `error` code).
    #[error("the OAuth server refused the install's refresh token ({0})")]
    Refused(String),
    /// The OAuth server answered for another portal (its `member_id`, if any).
    #[error("the OAuth server answered for another portal ({0:?})")]
    OtherPortal(String),
    /// The install names an OAuth server that `rest.oauth_servers` does not list (or none
    /// where several are configured).
    #[error("cannot verify the install: {0}")]
    UnknownOauthServer(String),
    /// The OAuth server could not be asked or gave no usable answer.
    #[error("cannot verify the install now: {0}")]
    Unavailable(String),
}

impl InstallError {
    /// The reason label of `b24_installs_refused_total{reason}`: a small fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            InstallError::Auth(_) => "not_authenticated",
            InstallError::RateLimited => "rate_limited",
            InstallError::NoCredentials => "no_credentials",
            InstallError::TooManyPortals(_) => "too_many_portals",
            InstallError::NoRefreshToken => "no_refresh_token",
            InstallError::Refused(_) => "oauth_refused",
            InstallError::OtherPortal(_) => "other_portal",
            InstallError::UnknownOauthServer(_) => "unknown_oauth_server",
            InstallError::Unavailable(_) => "unavailable",
        }
    }

    /// Every reason label, for documentation and tests.
    pub const REASONS: [&'static str; 9] = [
        "not_authenticated",
        "rate_limited",
        "no_credentials",
        "too_many_portals",
        "no_refresh_token",
        "oauth_refused",
        "other_portal",
        "unknown_oauth_server",
        "unavailable",
    ];

    /// What the operator can do about it, for the log line; `None` when waiting is all (the
    /// reason says it).
    pub fn remedy(&self, member_id: &str) -> Option<String> {
        match self {
            InstallError::Auth(AuthError::Mismatch) => Some(format!(
                "the install carries another application token than [auth.portals] has for \"{member_id}\": if the app was installed anew there, put its new token in [auth.portals] (or {{ env = \"VAR\" }}), reload and reinstall; if not, someone else posted it (the token is not logged)"
            )),
            InstallError::Auth(AuthError::UnknownPortal) => Some(format!(
                "the portal is not in [auth.portals] and auth.learn_tokens_on_install is off: list it there (\"{member_id}\" = its application token) or turn learning on (with rest.client_id/client_secret), then reinstall the app"
            )),
            InstallError::NoRefreshToken => Some(format!(
                "Bitrix24 will not send this install again: to accept the portal, list it in [auth.portals] of host.toml (\"{member_id}\" = its application token, or {{ env = \"VAR\" }}) and reload"
            )),
            InstallError::NoCredentials => Some(
                "set rest.client_id and rest.client_secret (the app's OAuth credentials), or list the portal in [auth.portals]; then reinstall the app on the portal".to_owned(),
            ),
            InstallError::UnknownOauthServer(_) => Some(
                "add the portal's OAuth server to rest.oauth_servers (https://oauth.bitrix.info/oauth/token/ or https://oauth.bitrix24.tech/oauth/token/), or list the portal in [auth.portals]; then reinstall the app".to_owned(),
            ),
            InstallError::TooManyPortals(_) => Some(
                "raise auth.max_learned_portals or list the portal in [auth.portals]; then reinstall the app".to_owned(),
            ),
            _ => None,
        }
    }

    /// The HTTP status ingress answers: 401 when the install is not proven (or cannot be by
    /// configuration), 429 past the rate limit, 503 when it could not be checked now.
    pub fn status(&self) -> u16 {
        match self {
            InstallError::RateLimited => 429,
            InstallError::TooManyPortals(_) | InstallError::Unavailable(_) => 503,
            _ => 401,
        }
    }
}

/// A verified (or meanwhile authenticated) install; holding it keeps other installs waiting.
pub struct Verified<'a> {
    /// What accepting the event does: `Learn`, or what [`super::Verifier::verify`] says now.
    pub effect: super::Effect,
    /// The portal's new OAuth tokens from the exchange (the event's refresh token is spent).
    pub tokens: Option<StoredTokens>,
    pub(super) _guard: tokio::sync::MutexGuard<'a, ()>,
}

/// The OAuth side of install verification.
pub(super) struct Installs {
    http: reqwest::Client,
    rest: RestConfig,
    credentials: Option<(Secret, Secret)>,
    limiter: Mutex<Limiter>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Installs {
    pub(super) fn new(rest: &RestConfig) -> Result<Installs, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(rest.timeout)
            .user_agent(concat!("b24-host/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let credentials = match (&rest.client_id, &rest.client_secret) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
            _ => None,
        };
        Ok(Installs {
            http,
            rest: rest.clone(),
            credentials,
            limiter: Mutex::new(Limiter::default()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Takes one install from the rate limit.
    pub(super) fn admit(&self, per_minute: u32) -> Result<(), InstallError> {
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.take(per_minute, Instant::now()) {
            Ok(())
        } else {
            Err(InstallError::RateLimited)
        }
    }

    pub(super) async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.one_at_a_time.lock().await
    }

    /// Exchanges the event's refresh token; the new tokens if the answer names its portal.
    pub(super) async fn exchange(&self, event: &Decoded) -> Result<StoredTokens, InstallError> {
        let Some((client_id, client_secret)) = &self.credentials else {
            return Err(InstallError::NoCredentials);
        };
        let Some(refresh) = event.auth.refresh_token.as_ref().filter(|t| !t.is_empty()) else {
            return Err(InstallError::NoRefreshToken);
        };
        let oauth_url = self
            .rest
            .oauth_server_for(event.auth.server_endpoint.as_deref())
            .map_err(InstallError::UnknownOauthServer)?
            .to_owned();
        check_scheme(&oauth_url).map_err(|e| {
            InstallError::Unavailable(format!("rest.oauth_servers: {}", e.description.as_str()))
        })?;
        let response = self
            .http
            .get(&oauth_url)
            .query(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id.expose()),
                ("client_secret", client_secret.expose()),
                ("refresh_token", refresh.expose()),
            ])
            .send()
            .await
            .map_err(|e| {
                InstallError::Unavailable(format!(
                    "cannot reach the OAuth server: {}",
                    without_url(&e)
                ))
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_server_error() {
            return Err(InstallError::Unavailable(format!("the OAuth server answered {status}")));
        }
        if let Some(code) = body.get("error") {
            let code = code.as_str().unwrap_or("error").chars().take(64).collect();
            return Err(InstallError::Refused(code));
        }
        if !status.is_success() {
            return Err(InstallError::Refused(format!("HTTP {}", status.as_u16())));
        }
        let answer: RefreshAnswer = serde_json::from_value(body).map_err(|e| {
            InstallError::Unavailable(format!("unreadable answer of the OAuth server: {e}"))
        })?;
        let named = answer.member_id.clone().unwrap_or_default();
        if named != event.auth.member_id {
            return Err(InstallError::OtherPortal(named.chars().take(64).collect()));
        }
        // Where the portal is comes from the OAuth server's answer where it says.
        Ok(StoredTokens {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            expires: answer
                .expires
                .or(answer.expires_in.map(|s| crate::journal::now_ms() / 1000 + s)),
            client_endpoint: answer.client_endpoint.or(event.auth.client_endpoint.clone()),
            server_endpoint: event.auth.server_endpoint.clone().or(answer.server_endpoint),
            oauth_url: Some(oauth_url),
            domain: answer.domain.or(Some(event.auth.domain.clone()).filter(|d| !d.is_empty())),
            installed_at_ms: Some(crate::journal::now_ms()),
            install_key: Some(crate::rest::oauth::install_key(event)),
        })
    }
}

/// What is wrong with `auth` given whether the OAuth credentials are set.
pub(super) fn warnings(auth: &AuthConfig, credentials: bool) -> Vec<String> {
    let mut out = Vec::new();
    if auth.learn_tokens_on_install && !credentials {
        out.push(
            "auth.learn_tokens_on_install is on, but rest.client_id and rest.client_secret are not set: installs cannot be verified, so no token will be learned"
                .to_owned(),
        );
    }
    out
}

/// A token bucket of `per_minute` takes a minute, holding as many; it starts full.
#[derive(Default)]
pub struct Limiter {
    used: f64,
    at: Option<Instant>,
}

impl Limiter {
    /// Takes one; `false` when the bucket is empty.
    pub fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        let capacity = f64::from(per_minute.max(1));
        if let Some(at) = self.at {
            let drained = now.saturating_duration_since(at).as_secs_f64() * capacity / 60.0;
            self.used = (self.used - drained).max(0.0);
        }
        self.at = Some(now);
        if self.used + 1.0 <= capacity {
            self.used += 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_limiter_lets_a_burst_through_then_one_per_interval() {
        let start = Instant::now();
        let mut limiter = Limiter::default();
        assert!((0..3).all(|_| limiter.take(3, start)));
        assert!(!limiter.take(3, start));
        // 3 a minute: one more every 20 s.
        assert!(!limiter.take(3, start + Duration::from_secs(19)));
        assert!(limiter.take(3, start + Duration::from_secs(21)));
        assert!(!limiter.take(3, start + Duration::from_secs(21)));
    }

    #[test]
    fn statuses_tell_refused_from_not_now() {
        assert_eq!(InstallError::RateLimited.status(), 429);
        assert_eq!(InstallError::NoCredentials.status(), 401);
        assert_eq!(InstallError::OtherPortal("x".into()).status(), 401);
        assert_eq!(InstallError::UnknownOauthServer("x".into()).status(), 401);
        assert_eq!(InstallError::Refused("invalid_grant".into()).status(), 401);
        assert_eq!(InstallError::Unavailable("down".into()).status(), 503);
        assert_eq!(InstallError::TooManyPortals(3).status(), 503);
    }

    #[test]
    fn reasons_are_a_fixed_set_and_the_unverifiable_install_says_what_to_do() {
        let all = [
            InstallError::Auth(AuthError::UnknownPortal),
            InstallError::RateLimited,
            InstallError::NoCredentials,
            InstallError::TooManyPortals(1),
            InstallError::NoRefreshToken,
            InstallError::Refused("x".into()),
            InstallError::OtherPortal("x".into()),
            InstallError::UnknownOauthServer("x".into()),
            InstallError::Unavailable("x".into()),
        ];
        let reasons: Vec<_> = all.iter().map(InstallError::reason).collect();
        assert_eq!(reasons, InstallError::REASONS);
        let remedy = InstallError::NoRefreshToken.remedy("m1").unwrap();
        assert!(remedy.contains("[auth.portals]") && remedy.contains("\"m1\""), "{remedy}");
    }

    #[test]
    fn learning_without_credentials_is_warned_about() {
        let auth = AuthConfig { learn_tokens_on_install: true, ..AuthConfig::default() };
        assert_eq!(warnings(&auth, false).len(), 1);
        assert!(warnings(&auth, true).is_empty());
        assert!(warnings(&AuthConfig::default(), false).is_empty());
    }
}
