//! Bitrix24 REST calls made for plugins (`HostServices::rest`).
//!
//! A plugin asks for `method(params)` while it handles an event; the host calls the event's
//! portal with, in this order, the acting user's token from the event, the portal's stored
//! OAuth tokens (refreshed once on `expired_token`, at the OAuth server chosen at the portal's
//! install), or the portal's configured incoming webhook. Once the portal has a verified
//! install, every call goes to the install's `client_endpoint` (the OAuth server's word after a
//! refresh), never to one a later event names: an event is only as genuine as its application
//! token. A refresh is serialised per portal across every host sharing the journal (the lease
//! `refresh.<member>`), and the new pair is stored by compare-and-set. Every request to a portal
//! passes its leaky bucket; a 503 `QUERY_LIMIT_EXCEEDED` is retried after a back-off; a
//! redirect (a portal's domain changed) is followed with the same POST. Each method's operating
//! time is kept to ([`limits`]): a method blocked for it (429 `OPERATION_TIME_LIMIT`) is not
//! called on that portal before its reset, and paced as it nears the limit. Both limits are
//! temporary: such a failure is `Unavailable` (a plugin's `?` makes it a retry) and the event's
//! [`context::LimitNote`] tells the worker when to deliver it again, without using an attempt.
//! HTTPS only, except to loopback addresses (tests). Every call to a portal whose offline table
//! names an `auth_connector` carries it, so the portal leaves the host's own writes out of
//! that connector's offline queue. [`RestClient::call_as_app`] never uses the webhook (the
//! `event.offline.*` methods and offline `event.bind` refuse webhooks).
//!
//! - [`context`]: which event the calling thread is handling.
//! - [`bucket`]: the per-portal rate limit.
//! - [`limits`]: each method's operating time per portal.
//! - [`oauth`]: the stored install (the installer's pair, where the portal is) and its refresh.
//! - [`metrics`]: calls by method family and outcome, waits for limits.

pub mod bucket;
pub mod context;
pub mod limits;
pub mod metrics;
pub mod oauth;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use b24_plugin_api::{RestError, RestErrorKind, Secret};
use reqwest::{StatusCode, header::LOCATION, redirect::Policy};
use serde_json::{Map, Value};

use crate::{config::RestConfig, journal::State};
use bucket::Bucket;
pub use context::EventContext;
use limits::{Gate, Limits};
use metrics::RestMetrics;
use oauth::{PortalInstall, RefreshAnswer, Stored, StoredTokens};

/// How often a call is retried while the portal answers `QUERY_LIMIT_EXCEEDED`.
const LIMIT_RETRIES: u32 = 4;
/// After those retries, how long the event waits before it is delivered again.
const QUERY_LIMIT_HOLD: Duration = Duration::from_secs(10);
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

fn error(
    kind: RestErrorKind,
    status: u16,
    code: &str,
    description: impl Into<String>,
) -> RestError {
    RestError { kind, status, error: code.into(), description: description.into().into() }
}

/// Which credentials a request carries.
enum Credential {
    /// An OAuth access token, against this REST base URL.
    Token { token: Secret, endpoint: String, stored: bool },
    /// An incoming webhook URL (the secret is in the URL).
    Webhook(Secret),
}

/// The host's REST client, shared by every plugin.
pub struct RestClient {
    http: reqwest::Client,
    config: RestConfig,
    journal: State,
    buckets: Mutex<HashMap<String, Bucket>>,
    refreshing: tokio::sync::Mutex<()>,
    limits: Limits,
    metrics: RestMetrics,
}

impl RestClient {
    /// A client with `config`, storing refreshed tokens in `journal`.
    pub fn new(config: RestConfig, journal: State) -> Result<RestClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("b24-host/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RestClient {
            http,
            config,
            journal,
            buckets: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            limits: Limits::default(),
            metrics: RestMetrics::default(),
        })
    }

    /// Counts calls and waits in `metrics` (the host's registry holds them).
    pub fn with_metrics(mut self, metrics: RestMetrics) -> RestClient {
        self.metrics = metrics;
        self
    }

    /// Calls `method` with `params` on the portal of `ctx`; returns the answer's `result`.
    pub async fn call(
        &self,
        ctx: &EventContext,
        method: &str,
        params: Value,
    ) -> Result<Value, RestError> {
        self.call_with(ctx, method, params, true).await
    }

    /// Like [`Self::call`], with the application's OAuth tokens only, never the webhook.
    pub async fn call_as_app(
        &self,
        ctx: &EventContext,
        method: &str,
        params: Value,
    ) -> Result<Value, RestError> {
        self.call_with(ctx, method, params, false).await
    }

    /// The configured OAuth token URL an install naming `server_endpoint` is verified and
    /// refreshed at (see [`crate::config::RestConfig::oauth_server_for`]).
    pub fn oauth_server_for(&self, server_endpoint: Option<&str>) -> Result<String, String> {
        self.config.oauth_server_for(server_endpoint).map(str::to_owned)
    }

    /// The `auth_connector` of a portal (`rest.portals."<m>".offline.auth_connector`).
    pub fn connector(&self, member_id: &str) -> Option<&str> {
        self.config
            .portals
            .get(member_id)
            .and_then(|p| p.offline.as_ref())
            .and_then(|o| o.auth_connector.as_deref())
    }

    async fn call_with(
        &self,
        ctx: &EventContext,
        method: &str,
        params: Value,
        webhook: bool,
    ) -> Result<Value, RestError> {
        if method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        {
            return Err(error(
                RestErrorKind::Usage,
                0,
                "INVALID_METHOD",
                format!("{method:?} is not a REST method name"),
            ));
        }
        let Value::Object(mut params) = params else {
            return Err(error(
                RestErrorKind::Usage,
                0,
                "INVALID_PARAMS",
                "params must be a JSON object",
            ));
        };
        if let Some(connector) = self.connector(&ctx.member_id) {
            // So the portal leaves this change out of the host's own offline queue.
            params.entry("auth_connector").or_insert_with(|| Value::from(connector));
        }
        let mut last = None;
        for credential in self.credentials(ctx, webhook).await? {
            let stored = matches!(credential, Credential::Token { stored: true, .. });
            let result = match credential {
                Credential::Token { token, endpoint, .. } => {
                    let first = self.post(ctx, &endpoint, method, &params, Some(&token)).await;
                    match first {
                        Err(e) if stored && e.error.as_str() == "expired_token" => {
                            match self.refresh(ctx, &token).await {
                                Ok((fresh, endpoint)) => {
                                    self.post(ctx, &endpoint, method, &params, Some(&fresh)).await
                                }
                                Err(refresh_error) => Err(refresh_error),
                            }
                        }
                        other => other,
                    }
                }
                Credential::Webhook(url) => {
                    self.post(ctx, url.expose(), method, &params, None).await
                }
            };
            match result {
                Err(e)
                    if matches!(
                        e.error.as_str(),
                        "expired_token" | "invalid_token" | "NO_AUTH_FOUND"
                    ) =>
                {
                    // This credential is spent; the next one may still work.
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| {
            error(
                RestErrorKind::Credentials,
                0,
                "NO_CREDENTIALS",
                "no usable credentials for the portal",
            )
        }))
    }

    /// The credentials to try for `ctx`, in order. Once the portal has a verified install, every
    /// call goes to the install's REST endpoint (the event's user token too): an event's
    /// `client_endpoint` is only as trustworthy as the application token it came with, and a
    /// leaked one must not redirect the portal's tokens.
    async fn credentials(
        &self,
        ctx: &EventContext,
        webhook: bool,
    ) -> Result<Vec<Credential>, RestError> {
        let mut out = Vec::new();
        let stored = self.stored(&ctx.member_id).await?;
        let installed_at = stored.as_ref().and_then(|t| t.client_endpoint.clone());
        if let Some(token) = ctx.user_token()
            && let Some(endpoint) = installed_at.clone().or_else(|| ctx.client_endpoint().cloned())
        {
            out.push(Credential::Token { token: token.clone(), endpoint, stored: false });
        }
        if let Some(stored) = stored
            && let Some(endpoint) = installed_at
        {
            out.push(Credential::Token { token: stored.access(), endpoint, stored: true });
        }
        if let Some(hook) = self.config.portals.get(&ctx.member_id).and_then(|p| p.webhook.clone())
            && webhook
        {
            out.push(Credential::Webhook(hook));
        }
        if out.is_empty() && !webhook {
            return Err(error(
                RestErrorKind::Credentials,
                0,
                "NO_CREDENTIALS",
                format!(
                    "no OAuth tokens stored for portal {}: this call needs the application's OAuth (a webhook is refused); install the app while the host runs",
                    ctx.member_id
                ),
            ));
        }
        if out.is_empty() {
            return Err(error(
                RestErrorKind::Credentials,
                0,
                "NO_CREDENTIALS",
                format!(
                    "no credentials for portal {}: no user token in the event, no stored OAuth tokens (from ONAPPINSTALL), no webhook in rest.portals",
                    ctx.member_id
                ),
            ));
        }
        Ok(out)
    }

    /// The REST and OAuth endpoints stored with a portal's tokens, for calls no event carries
    /// (the offline poller's).
    pub async fn stored_endpoints(&self, member_id: &str) -> (Option<String>, Option<String>) {
        match self.install(member_id).await {
            Some(install) => (install.client_endpoint, install.server_endpoint),
            None => (None, None),
        }
    }

    /// The portal's verified install (where it is, which OAuth server refreshes its pair),
    /// without its tokens; `None` while the app is not installed (never, or uninstalled since)
    /// or the journal cannot be read.
    pub async fn install(&self, member_id: &str) -> Option<PortalInstall> {
        self.stored(member_id).await.ok().flatten().map(|t| t.install(member_id))
    }

    /// Whether the portal's app was uninstalled (a verified `ONAPPUNINSTALL`) and not installed
    /// again: the time it was, ms since the epoch.
    pub async fn uninstalled_at(&self, member_id: &str) -> Option<i64> {
        let raw = self.journal.oauth(member_id).await.ok().flatten()?;
        match Stored::parse(&raw)? {
            Stored::Uninstalled(at) => Some(at),
            Stored::Tokens(_) => None,
        }
    }

    /// Stores the installer's pair of a verified `ONAPPINSTALL`/`ONAPPUPDATE` as the portal's
    /// (after a refresh in progress on this host, so that it cannot overwrite it).
    pub async fn store_install(
        &self,
        member_id: &str,
        tokens: &StoredTokens,
    ) -> Result<(), crate::journal::StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.journal.save_oauth(member_id, Stored::Tokens(tokens.clone()).to_bytes()).await
    }

    /// Holds off the portals' token refreshes while the caller writes a stored install
    /// through the journal itself (an install's pair, written with its event: see ingress).
    pub async fn hold_refreshes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.refreshing.lock().await
    }

    /// The portal's pair as stored (for an update, which keeps the install's place).
    pub async fn stored_tokens(&self, member_id: &str) -> Option<StoredTokens> {
        self.stored(member_id).await.ok().flatten()
    }

    async fn stored(&self, member_id: &str) -> Result<Option<StoredTokens>, RestError> {
        let raw = self
            .journal
            .oauth(member_id)
            .await
            .map_err(|e| error(RestErrorKind::Unavailable, 0, "STORAGE", e.to_string()))?;
        Ok(raw.and_then(|bytes| Stored::parse(&bytes)).and_then(Stored::tokens))
    }

    /// The configured token URL that refreshes `stored`: the one chosen at its install, if it
    /// is still configured; else the one its OAuth server names; never another address.
    fn oauth_url_for(&self, stored: &StoredTokens) -> Result<String, String> {
        if let Some(url) =
            stored.oauth_url.as_ref().filter(|u| self.config.oauth_servers.contains(u))
        {
            return Ok(url.clone());
        }
        self.config.oauth_server_for(stored.server_endpoint.as_deref()).map(str::to_owned)
    }

    /// Refreshes the portal's stored tokens after `spent` was refused; returns the new access
    /// token and the REST base URL to use. One refresh per portal at a time, on this host (a
    /// mutex) and across every host on a shared log (the lease `refresh.<member>`): a caller
    /// that waited finds, read fresh from the journal, the tokens another caller already
    /// refreshed, and never spends the single-use refresh token a second time.
    async fn refresh(
        &self,
        ctx: &EventContext,
        spent: &Secret,
    ) -> Result<(Secret, String), RestError> {
        let _one_at_a_time = self.refreshing.lock().await;
        // The holder may be in the middle of its OAuth call: wait for it, or for its lease to
        // age out if it died.
        let patience = self.config.timeout.saturating_add(Duration::from_secs(15));
        let storage = |e: crate::journal::StoreError| {
            error(RestErrorKind::Unavailable, 0, "STORAGE", e.to_string())
        };
        let lease = self
            .journal
            .lease(&format!("refresh.{}", ctx.member_id), patience)
            .await
            .map_err(storage)?
            .ok_or_else(|| {
                error(
                    RestErrorKind::Unavailable,
                    0,
                    "REFRESH_BUSY",
                    "another host is refreshing the portal's OAuth tokens and did not finish in time",
                )
            })?;
        let result = self.refresh_leased(ctx, spent, &lease).await;
        lease.release().await;
        result
    }

    /// [`Self::refresh`] with the lease held.
    async fn refresh_leased(
        &self,
        ctx: &EventContext,
        spent: &Secret,
        lease: &crate::journal::Held,
    ) -> Result<(Secret, String), RestError> {
        let no_refresh = || {
            error(
                RestErrorKind::Credentials,
                401,
                "expired_token",
                "the stored token expired and there is no refresh token",
            )
        };
        // Read now, not from a cache: another host may have refreshed a moment ago.
        let (raw, revision) = self
            .journal
            .oauth_entry(&ctx.member_id)
            .await
            .map_err(|e| error(RestErrorKind::Unavailable, 0, "STORAGE", e.to_string()))?
            .ok_or_else(no_refresh)?;
        let stored = Stored::parse(&raw).and_then(Stored::tokens).ok_or_else(no_refresh)?;
        let endpoint_of = |t: &StoredTokens| t.client_endpoint.clone().unwrap_or_default();
        if stored.access_token != spent.expose() {
            return Ok((stored.access(), endpoint_of(&stored)));
        }
        let (Some(client_id), Some(client_secret)) =
            (&self.config.client_id, &self.config.client_secret)
        else {
            return Err(error(
                RestErrorKind::Credentials,
                401,
                "expired_token",
                "the stored token expired; set rest.client_id and rest.client_secret so the host can refresh it",
            ));
        };
        if !lease.is_held() {
            return Err(error(
                RestErrorKind::Unavailable,
                0,
                "REFRESH_LEASE_LOST",
                "the lease on the portal's token refresh was lost (the log did not answer); not refreshing",
            ));
        }
        // The client secret goes only to an OAuth server the operator configured, the one
        // chosen at the portal's install: never to the `server_endpoint` an event brings (an
        // on-premise portal writes its own events).
        let url = self.oauth_url_for(&stored).map_err(|why| {
            tracing::error!(member_id = %ctx.member_id, "cannot refresh the portal's OAuth tokens: {why}");
            error(
                RestErrorKind::Credentials,
                401,
                "expired_token",
                format!("the stored token expired and cannot be refreshed: {why}"),
            )
        })?;
        check_scheme(&url)?;
        let response = self
            .http
            .get(&url)
            .query(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id.expose()),
                ("client_secret", client_secret.expose()),
                ("refresh_token", stored.refresh_token.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                error(
                    RestErrorKind::Unavailable,
                    0,
                    "OAUTH_UNREACHABLE",
                    format!("cannot reach the OAuth server: {}", without_url(&e)),
                )
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() || body.get("error").is_some() {
            let code =
                body.get("error").and_then(Value::as_str).unwrap_or("oauth_error").to_owned();
            let kind = if status.is_server_error() {
                RestErrorKind::Unavailable
            } else {
                RestErrorKind::Credentials
            };
            tracing::error!(member_id = %ctx.member_id, status = status.as_u16(), error = %code, "token refresh refused");
            return Err(error(
                kind,
                status.as_u16(),
                &code,
                "the OAuth server refused the refresh; the app may need reinstalling",
            ));
        }
        let answer: RefreshAnswer = serde_json::from_value(body).map_err(|e| {
            error(
                RestErrorKind::Unavailable,
                status.as_u16(),
                "OAUTH_ANSWER",
                format!("unreadable refresh answer: {e}"),
            )
        })?;
        // The OAuth server is trusted for where the portal is now (a moved portal); the server
        // chosen at the install stays the portal's.
        let fresh = StoredTokens {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            expires: answer
                .expires
                .or(answer.expires_in.map(|s| crate::journal::now_ms() / 1000 + s)),
            client_endpoint: answer.client_endpoint.or(stored.client_endpoint),
            server_endpoint: stored.server_endpoint,
            oauth_url: Some(url),
            domain: answer.domain.or(stored.domain),
            installed_at_ms: stored.installed_at_ms,
            install_key: stored.install_key,
        };
        // The old refresh token is spent: store the new one before anything else, only over
        // the pair it replaces (a host whose lease lapsed must not overwrite a newer pair).
        let bytes = Stored::Tokens(fresh.clone()).to_bytes();
        match self.journal.replace_oauth(&ctx.member_id, bytes, revision).await {
            Ok(true) => {
                tracing::info!(member_id = %ctx.member_id, "refreshed the portal's OAuth tokens");
            }
            Ok(false) => {
                // Another host stored a pair after ours was read: its lease outlived ours.
                // Ours works for this call; the stored one stays.
                tracing::error!(
                    member_id = %ctx.member_id,
                    "refreshed the portal's OAuth tokens, but another host stored newer ones meanwhile (this host's refresh lease had lapsed); keeping the stored pair, this host's new pair is used for this call only"
                );
            }
            Err(e) => {
                tracing::error!(
                    member_id = %ctx.member_id,
                    "the OAuth server issued new tokens but they cannot be stored ({e}): the portal's old refresh token is spent and the new one is lost unless a retry stores it; if REST calls keep failing with invalid_grant, reinstall the app on the portal"
                );
                return Err(error(
                    RestErrorKind::Unavailable,
                    0,
                    "STORAGE",
                    format!("cannot store the refreshed tokens: {e}"),
                ));
            }
        }
        Ok((fresh.access(), endpoint_of(&fresh)))
    }

    /// Waits for room in the portal's bucket (counted as a `rate_limit` wait).
    async fn wait_turn(&self, member_id: &str) {
        let wait = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let portal = self.config.portals.get(member_id);
            let rate = portal.and_then(|p| p.rate_per_sec).unwrap_or(self.config.rate_per_sec);
            let burst = portal.and_then(|p| p.burst).unwrap_or(self.config.burst);
            buckets
                .entry(member_id.to_owned())
                .or_insert_with(|| Bucket::new(rate, burst))
                .reserve(Instant::now())
        };
        if !wait.is_zero() {
            self.metrics.wait("rate_limit", wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
    }

    /// POSTs one call, following redirects and retrying while the portal is over its limit.
    async fn post(
        &self,
        ctx: &EventContext,
        base: &str,
        method: &str,
        params: &Map<String, Value>,
        token: Option<&Secret>,
    ) -> Result<Value, RestError> {
        let mut body = params.clone();
        if let Some(token) = token {
            body.insert("auth".into(), Value::String(token.expose().to_owned()));
        }
        let mut url = format!("{}/{method}", base.trim_end_matches('/'));
        let key = method.to_ascii_lowercase();
        match self.limits.gate(&ctx.member_id, &key, crate::journal::now_ms()) {
            Gate::Go => {}
            Gate::Sleep(wait) => {
                self.metrics.wait("operating_pace", wait.as_secs_f64());
                tracing::debug!(member_id = %ctx.member_id, %method, wait_ms = wait.as_millis() as u64, "the method's operating time nears its limit; pacing");
                tokio::time::sleep(wait).await;
            }
            Gate::Hold { until_ms, reason } => return Err(self.held(ctx, method, until_ms, reason)),
        }
        let mut limit_retries = 0;
        let mut redirects = 0;
        loop {
            check_scheme(&url)?;
            self.wait_turn(&ctx.member_id).await;
            let started = Instant::now();
            self.limits.sent(&ctx.member_id, &key, crate::journal::now_ms());
            let response = self.http.post(&url).json(&body).send().await.map_err(|e| {
                self.metrics.call(method, "unreachable");
                error(
                    RestErrorKind::Unavailable,
                    0,
                    "UNREACHABLE",
                    format!("cannot reach the portal: {}", without_url(&e)),
                )
            })?;
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = response.headers().get(LOCATION).and_then(|v| v.to_str().ok())
                else {
                    return Err(error(
                        RestErrorKind::Unavailable,
                        status.as_u16(),
                        "BAD_REDIRECT",
                        "a redirect without a Location",
                    ));
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(error(
                        RestErrorKind::Unavailable,
                        status.as_u16(),
                        "TOO_MANY_REDIRECTS",
                        "too many redirects",
                    ));
                }
                // Resolve relative locations; keep POST and the body (a moved portal).
                url = reqwest::Url::parse(&url)
                    .and_then(|u| u.join(location))
                    .map(|u| u.to_string())
                    .map_err(|_| {
                        error(
                            RestErrorKind::Unavailable,
                            status.as_u16(),
                            "BAD_REDIRECT",
                            "an unreadable Location",
                        )
                    })?;
                tracing::info!(member_id = %ctx.member_id, %method, "the portal moved; following its redirect");
                continue;
            }
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            tracing::debug!(member_id = %ctx.member_id, %method, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "REST call");
            let code = answer.get("error").and_then(Value::as_str);
            self.metrics.call(method, outcome(status, code));
            if let Some(code) = code {
                let description = answer
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if code == "QUERY_LIMIT_EXCEEDED" && limit_retries < LIMIT_RETRIES {
                    limit_retries += 1;
                    let wait = Duration::from_millis(500 << limit_retries);
                    tracing::warn!(member_id = %ctx.member_id, %method, wait_ms = wait.as_millis() as u64, "portal over its rate limit; retrying");
                    self.metrics.wait("query_limit_exceeded", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let now = crate::journal::now_ms();
                if code == "OPERATION_TIME_LIMIT" || status == StatusCode::TOO_MANY_REQUESTS {
                    // The method is blocked for its operating time: it lifts by itself. No
                    // call of it on this portal until then.
                    let until = self.limits.blocked(&ctx.member_id, &key, now);
                    ctx.limit.hold_until(until);
                    self.metrics.wait("operating_block", (until - now) as f64 / 1000.0);
                    tracing::warn!(member_id = %ctx.member_id, %method, until_ms = until, "the portal blocked the method for its operating time; not calling it again before it lifts");
                    return Err(error(
                        RestErrorKind::Unavailable,
                        status.as_u16(),
                        code,
                        description,
                    ));
                }
                if code == "QUERY_LIMIT_EXCEEDED" {
                    // Still over after the retries: the event waits, it is not given up.
                    let until = now + QUERY_LIMIT_HOLD.as_millis() as i64;
                    ctx.limit.hold_until(until);
                    self.metrics.wait("query_limit_exceeded", QUERY_LIMIT_HOLD.as_secs_f64());
                }
                let kind = if code == "QUERY_LIMIT_EXCEEDED" || status.is_server_error() {
                    RestErrorKind::Unavailable
                } else {
                    RestErrorKind::Api
                };
                return Err(error(kind, status.as_u16(), code, description));
            }
            if status == StatusCode::OK || status.is_success() {
                self.limits.answered(
                    &ctx.member_id,
                    &key,
                    answer.get("time"),
                    crate::journal::now_ms(),
                );
                return match answer.get("result") {
                    Some(result) => Ok(result.clone()),
                    None => Err(error(
                        RestErrorKind::Api,
                        status.as_u16(),
                        "NO_RESULT",
                        "the answer has no result",
                    )),
                };
            }
            let kind = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                RestErrorKind::Unavailable
            } else {
                RestErrorKind::Api
            };
            return Err(error(kind, status.as_u16(), "HTTP_ERROR", format!("HTTP {status}")));
        }
    }

    /// The error of a call the host holds back for a limit (not sent), noted on the event.
    fn held(&self, ctx: &EventContext, method: &str, until_ms: i64, reason: &str) -> RestError {
        ctx.limit.hold_until(until_ms);
        let wait = (until_ms - crate::journal::now_ms()).max(0);
        self.metrics.wait(reason, wait as f64 / 1000.0);
        tracing::info!(member_id = %ctx.member_id, %method, wait_ms = wait, reason, "holding the call for Bitrix24's operating-time limit");
        error(
            RestErrorKind::Unavailable,
            429,
            "OPERATION_TIME_LIMIT",
            format!(
                "not sent: {method} is held for {} s more by Bitrix24's limit on its operating time on this portal ({})",
                (wait + 999) / 1000,
                if reason == "operating_pace" {
                    "pacing as it nears the limit"
                } else {
                    "blocked until its operating time resets"
                }
            ),
        )
    }
}

/// The `status` label of a call's answer ([`metrics::OUTCOMES`]).
fn outcome(status: StatusCode, code: Option<&str>) -> &'static str {
    match code {
        Some("expired_token") => "expired_token",
        Some("QUERY_LIMIT_EXCEEDED") => "query_limit_exceeded",
        Some("OPERATION_TIME_LIMIT") => "operation_time_limit",
        _ if status == StatusCode::TOO_MANY_REQUESTS => "operation_time_limit",
        _ if status.is_server_error() => "server_error",
        Some(_) => "error",
        None if status.is_success() => "ok",
        None => "error",
    }
}

/// HTTPS only; plain HTTP to loopback addresses (tests, local proxies).
pub(crate) fn check_scheme(url: &str) -> Result<(), RestError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| error(RestErrorKind::Usage, 0, "INVALID_URL", "not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(error(
            RestErrorKind::Usage,
            0,
            "INSECURE_URL",
            "refusing a non-HTTPS portal address",
        )),
    }
}

/// A reqwest error's text without its URL (a webhook URL holds a secret).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// Makes a plugin's synchronous call on the host's runtime.
pub fn call_blocking(
    client: &Arc<RestClient>,
    handle: &tokio::runtime::Handle,
    method: &str,
    params: &str,
) -> Result<String, RestError> {
    let Some(ctx) = context::current() else {
        return Err(error(
            RestErrorKind::Usage,
            0,
            "NO_EVENT",
            "REST calls are bound to the event being handled; call during on_user_field/on_event",
        ));
    };
    let params: Value = serde_json::from_str(if params.trim().is_empty() { "{}" } else { params })
        .map_err(|e| {
            error(RestErrorKind::Usage, 0, "INVALID_PARAMS", format!("params are not JSON: {e}"))
        })?;
    let result = handle.block_on(client.call(&ctx, method, params))?;
    Ok(result.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_a_fixed_set_of_outcomes() {
        let cases = [
            (StatusCode::OK, None, "ok"),
            (StatusCode::UNAUTHORIZED, Some("expired_token"), "expired_token"),
            (StatusCode::SERVICE_UNAVAILABLE, Some("QUERY_LIMIT_EXCEEDED"), "query_limit_exceeded"),
            (StatusCode::TOO_MANY_REQUESTS, Some("OPERATION_TIME_LIMIT"), "operation_time_limit"),
            (StatusCode::TOO_MANY_REQUESTS, None, "operation_time_limit"),
            (StatusCode::BAD_GATEWAY, None, "server_error"),
            (StatusCode::BAD_REQUEST, Some("ERROR_NOT_FOUND"), "error"),
            (StatusCode::NOT_FOUND, None, "error"),
        ];
        for (status, code, want) in cases {
            let got = outcome(status, code);
            assert_eq!(got, want, "{status} {code:?}");
            assert!(metrics::OUTCOMES.contains(&got));
        }
    }
}
