//! The HTTP front door: checks method, path, size and content type, decodes the body, verifies
//! the application token and journals the event, answering 200 only once it is on disk.
//!
//! | status | when |
//! |---|---|
//! | 200 | accepted (journaled), or a duplicate of an event journaled within the window |
//! | 400 | the body is not a well-formed event |
//! | 401 | missing, unknown or wrong application token; an install from an unknown portal that the OAuth server did not confirm |
//! | 404 | another path |
//! | 405 | not a POST |
//! | 413 | body over `server.max_body_bytes` |
//! | 415 | content type neither form nor JSON |
//! | 429 | more installs from unknown portals than `auth.unknown_installs_per_minute` |
//! | 503 | the event could not be journaled (storage failure, shutting down), or an install could not be verified now (OAuth server unreachable, `auth.max_learned_portals` reached); nothing is claimed |
//!
//! An install that is not verified is not an accepted event: it is neither journaled nor
//! delivered, since nothing proves it came from the portal (Bitrix24 does not resend it; the
//! log says why, and the app can be reinstalled).

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
};

use crate::{
    auth::{Effect, Verified, Verifier},
    bind::Binder,
    decode::{self, Decoded, Format},
    journal::{Appended, Log, PortalChange, State, now_ms},
    metrics::Metrics,
    offline::Pollers,
    rest::{
        RestClient,
        oauth::{self, StoredTokens},
    },
    route::Router,
};

/// What the front door needs; shared by every connection.
pub struct Ingress {
    /// The POST path events arrive on.
    pub path: String,
    /// The largest body accepted.
    pub max_body_bytes: usize,
    /// Token checks.
    pub verifier: Arc<Verifier>,
    /// Where accepted events go.
    pub log: Log,
    /// The learned tokens as a shared log holds them, and the other hosts' pollers.
    pub state: State,
    /// The plugins: who receives what (changes with reloads).
    pub router: Router,
    /// Request counters and latency.
    pub metrics: Arc<Metrics>,
    /// The offline pollers, woken by `ONOFFLINEEVENT`.
    pub pollers: Arc<Pollers>,
    /// The binder: an install or update binds the portal's events (off the request path).
    pub binder: Arc<Binder>,
    /// Where a verified install's pair is stored (and an uninstall forgets it).
    pub rest: Arc<RestClient>,
    /// Reads of the shared log before a 401 ([`Ingress::verify`]), at most
    /// [`FRESH_READS_PER_MINUTE`]: a flood of unknown member ids must not become a flood of
    /// reads on the log.
    pub fresh_reads: std::sync::Mutex<crate::auth::install::Limiter>,
}

/// How many reads of the shared log a host makes before answering 401, a minute (100 a second
/// on average; the bucket holds a minute's worth): they only cover the few milliseconds before
/// another host's newly learned token reaches this host's watch.
pub const FRESH_READS_PER_MINUTE: u32 = 6_000;

/// The answer to one request.
type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, text: impl Into<String>) -> Answer {
    let mut text = text.into();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl Ingress {
    /// Handles one request; never fails at the HTTP level.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Answer, Infallible> {
        let started = Instant::now();
        let response = self.route(request).await;
        let outcome = match response.status().as_u16() {
            200 => "accepted",
            400 => "malformed",
            401 => "unauthorized",
            404 => "not_found",
            405 => "wrong_method",
            413 => "too_large",
            415 => "unsupported_type",
            429 => "rate_limited",
            _ => "unavailable",
        };
        let code = response.extensions().get::<AcceptedCode>().map_or("-", |c| c.0.as_str());
        let outcome =
            if response.extensions().get::<Duplicate>().is_some() { "duplicate" } else { outcome };
        self.metrics.request(code, outcome, started.elapsed().as_secs_f64());
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request"
        );
        Ok(response)
    }

    async fn route(&self, request: Request<Incoming>) -> Answer {
        if request.uri().path() != self.path {
            return answer(
                StatusCode::NOT_FOUND,
                format!("no event handler at this path; events go to {}", self.path),
            );
        }
        if request.method() != Method::POST {
            let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "events must be POSTed");
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let format = match content_type.and_then(Format::from_content_type) {
            Some(format) => format,
            None => {
                return answer(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content type must be application/x-www-form-urlencoded or application/json",
                );
            }
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return self.too_large();
        }
        let body = match Limited::new(request.into_body(), self.max_body_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return self.too_large(),
            Err(e) => {
                return answer(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"));
            }
        };
        self.accept(body, format).await
    }

    fn too_large(&self) -> Answer {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {} bytes", self.max_body_bytes),
        )
    }

    /// Decode, verify, queue.
    async fn accept(&self, body: Bytes, format: Format) -> Answer {
        let (event, received) = match decode::intake(body, format) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(reason = %e, "malformed event refused");
                return answer(StatusCode::BAD_REQUEST, format!("malformed event: {e}"));
            }
        };
        let mut effect = match self.verify(&event).await {
            Ok(effect) => effect,
            Err(e) if event.code == "ONAPPINSTALL" && e != crate::auth::AuthError::Missing => {
                // An install the host cannot take (learning off, or another token than the one
                // configured: a reinstall's new token): Bitrix24 will not send it again.
                self.install_refused(&event, &crate::auth::InstallError::Auth(e));
                return answer(StatusCode::UNAUTHORIZED, e.to_string());
            }
            Err(e) => {
                tracing::warn!(
                    member_id = %event.auth.member_id,
                    domain = %event.auth.domain,
                    code = %event.code,
                    reason = %e,
                    "event refused: not authenticated"
                );
                return answer(StatusCode::UNAUTHORIZED, e.to_string());
            }
        };
        // An install from an unknown portal is verified at the OAuth server first; the guard
        // it yields is held until the event is applied, so installs are verified one at a time.
        let mut _installing = None;
        let mut exchanged = false;
        if effect == Effect::Verify {
            match self.verify_install(&event).await {
                Ok(verified) => {
                    effect = verified.effect.clone();
                    exchanged = verified.tokens.is_some();
                    _installing = Some(verified);
                }
                Err(refused) => return refused,
            }
        }
        let plugins = self.router.recipients(&event);
        // What the event changes of the portal's stored state is written with it: a learned
        // or forgotten application token, and the install's OAuth pair (or an uninstall's
        // mark); a verified install's exchange stored its new pair already.
        let (_refreshes, oauth) =
            if exchanged { (None, None) } else { self.install_change(&event).await };
        let stores_install = oauth.is_some();
        let change = PortalChange {
            member_id: event.auth.member_id.clone(),
            token: Verifier::token_change(&event, &effect).map(|(_, token)| token),
            oauth,
        };
        // The refresh and application tokens stay here: no plugin, runner or log replica gets
        // them from the journal (the bytes of `decode::strip::without_secrets`).
        let (body, format) = received.without_secrets();
        let key = decode::dedup_key(&event);
        let source = crate::record::Source::Online;
        let record = decode::record(&event, body, format, source, &key, Vec::new(), now_ms());
        match self.log.append(record, key, plugins, Some(change)).await {
            Ok(Appended::New(id)) => {
                let code = AcceptedCode(event.code.clone());
                self.verifier.apply(&event, &effect);
                if stores_install {
                    // Durable in the log already; the portal's readers (the poller woken
                    // below, the binder, the REST client) read the tables behind it.
                    self.log.flush().await;
                }
                if event.code == "ONAPPUNINSTALL" {
                    tracing::info!(
                        member_id = %event.auth.member_id,
                        "the app was uninstalled: the portal's OAuth tokens are forgotten; no refresh or offline poll until it is installed again"
                    );
                    self.pollers.wake(&event.auth.member_id);
                }
                match event.code.as_str() {
                    // Bitrix24 deletes an app's bindings on update: bind again, off this path.
                    "ONAPPINSTALL" | "ONAPPUPDATE" => self.binder.installed(&event.auth.member_id),
                    "ONAPPUNINSTALL" => self.binder.uninstalled(&event.auth.member_id),
                    _ => {}
                }
                if matches!(event.code.as_str(), "ONOFFLINEEVENT" | "ONAPPINSTALL") {
                    // The portal's offline queue has rows, or the host just stored the tokens
                    // to read it: pull now, not at the next interval.
                    self.pollers.wake(&event.auth.member_id);
                    // With several hosts, the portal's poller may be on another one.
                    self.state.announce_offline_rows(&event.auth.member_id).await;
                }
                tracing::info!(event_id = id, member_id = %event.auth.member_id, code = %event.code, "event accepted");
                let mut response = answer(StatusCode::OK, format!("accepted {id}"));
                response.extensions_mut().insert(code);
                response
            }
            Ok(Appended::Duplicate(id)) => {
                if effect == Effect::Learn {
                    tracing::warn!(event_id = id, member_id = %event.auth.member_id, "a verified install repeats an install of this cycle; its token is not learned");
                }
                tracing::info!(event_id = id, member_id = %event.auth.member_id, code = %event.code, "duplicate of a recent event; not delivered again");
                let mut response = answer(StatusCode::OK, format!("duplicate of {id}"));
                response.extensions_mut().insert(AcceptedCode(event.code.clone()));
                response.extensions_mut().insert(Duplicate);
                response
            }
            Err(e) => {
                tracing::error!(member_id = %event.auth.member_id, code = %event.code, "cannot journal the event: {e}");
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot store the event; nothing was accepted",
                )
            }
        }
    }
}

impl Ingress {
    /// [`Verifier::verify`]; when it would refuse or needs an install verified, the shared log
    /// is read once more first: another host may have learned the portal's token a moment
    /// ago and this host's watch not delivered it yet (nothing to read on the embedded
    /// backend).
    async fn verify(&self, event: &Decoded) -> Result<Effect, crate::auth::AuthError> {
        use crate::auth::AuthError;
        let first = self.verifier.verify(event);
        if !matches!(
            first,
            Err(AuthError::UnknownPortal | AuthError::Mismatch) | Ok(Effect::Verify)
        ) {
            return first;
        }
        let member_id = event.auth.member_id.as_str();
        if !self.state.is_shared() {
            return first;
        }
        let admitted = self
            .fresh_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(FRESH_READS_PER_MINUTE, std::time::Instant::now());
        if !admitted {
            tracing::debug!(member_id, "no fresh read of the shared log: too many this minute");
            return first;
        }
        match self.state.shared_token(member_id).await {
            Ok(Some(token)) => {
                self.verifier.set_learned(member_id, Some(token));
                self.verifier.verify(event)
            }
            Ok(None) => first,
            Err(e) => {
                tracing::warn!(
                    member_id,
                    "cannot read the portal's token from the shared log: {e}"
                );
                first
            }
        }
    }

    /// What an authenticated event means for the portal's stored install, as the bytes to
    /// store with it, and the guard that holds off token refreshes until it is written: an
    /// `ONAPPINSTALL`/`ONAPPUPDATE` brings the installer's pair (an update keeps the
    /// install's endpoint and OAuth server); an `ONAPPUNINSTALL` forgets it (and idles the
    /// portal's offline poller once accepted). No other event's pair is stored: it is the
    /// acting user's (an `ONOFFLINEEVENT`'s may be anyone's), and storing it would replace the
    /// administrator's.
    async fn install_change(
        &self,
        event: &Decoded,
    ) -> (Option<tokio::sync::MutexGuard<'_, ()>>, Option<Vec<u8>>) {
        let member_id = event.auth.member_id.as_str();
        if event.code == "ONAPPUNINSTALL" {
            let gone = oauth::Stored::Uninstalled(now_ms()).to_bytes();
            return (Some(self.rest.hold_refreshes().await), Some(gone));
        }
        if !oauth::carries_installer_pair(&event.code) {
            return (None, None);
        }
        let oauth_url = match self.rest.oauth_server_for(event.auth.server_endpoint.as_deref()) {
            Ok(url) => Some(url),
            Err(why) => {
                tracing::warn!(member_id, code = %event.code, "the portal's OAuth tokens are kept but cannot be refreshed: {why}; add its server to rest.oauth_servers");
                None
            }
        };
        let refreshes = self.rest.hold_refreshes().await;
        let previous = self.rest.stored_tokens(member_id).await;
        // A repeat of the event that stored the pair (a proxy's retry) stores nothing: the
        // pair may have been refreshed since, and the repeat's refresh token is spent. The
        // embedded journal drops a repeat's pair with the repeat; NATS stores the pair before
        // its log can tell a repeat, and its window is minutes: the stored key tells at once.
        if previous.as_ref().and_then(|p| p.install_key.as_deref())
            == Some(oauth::install_key(event).as_str())
        {
            tracing::info!(member_id, code = %event.code, "a repeat of the install that stored the portal's OAuth pair: the stored pair is kept");
            return (None, None);
        }
        match StoredTokens::from_install(event, oauth_url, previous.as_ref(), now_ms()) {
            Some(tokens) => (Some(refreshes), Some(oauth::Stored::Tokens(tokens).to_bytes())),
            None => {
                tracing::warn!(member_id, code = %event.code, "the event carries no OAuth pair to store (auth[access_token], auth[refresh_token])");
                (None, None)
            }
        }
    }

    /// Says that an install was refused (Bitrix24 will not send it again): a log line with
    /// what to do, `b24_installs_refused_total{reason}`, and the console's list.
    fn install_refused(&self, event: &Decoded, e: &crate::auth::InstallError) {
        let member_id = event.auth.member_id.as_str();
        let domain = event.auth.domain.as_str();
        self.metrics
            .installs_refused
            .get_or_create(&crate::metrics::Reason { reason: e.reason().to_owned() })
            .inc();
        self.verifier.refused.record(member_id, domain, e, crate::journal::now_ms());
        let status = e.status();
        match e.remedy(member_id) {
            Some(remedy) => {
                tracing::error!(member_id, domain, status, reason = %e, "install refused: not verified. {remedy}")
            }
            None => {
                tracing::warn!(member_id, domain, status, reason = %e, "install refused: not verified")
            }
        }
    }

    /// Verifies an install ([`Verifier::verify_install`]) and stores the OAuth tokens its
    /// exchange yielded; the answer to give when it is not verified.
    async fn verify_install<'a>(&'a self, event: &Decoded) -> Result<Verified<'a>, Answer> {
        let member_id = event.auth.member_id.as_str();
        let domain = event.auth.domain.as_str();
        let verified = match self.verifier.verify_install(event).await {
            Ok(verified) => verified,
            Err(e) => {
                let status =
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                self.install_refused(event, &e);
                return Err(answer(status, format!("install not verified: {e}")));
            }
        };
        if let Some(tokens) = &verified.tokens {
            // The exchange spent the event's refresh token: keep the new pair, even if the
            // event itself is not journaled after all.
            if let Err(e) = self.rest.store_install(member_id, tokens).await {
                tracing::error!(
                    member_id,
                    "cannot store the OAuth tokens of a verified install: {e}"
                );
                return Err(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot store the install's tokens; nothing was accepted",
                ));
            }
            tracing::info!(member_id, domain, "install verified at the OAuth server");
        }
        Ok(verified)
    }
}

/// The code of an authenticated event, for the metrics' `code` label.
#[derive(Clone)]
struct AcceptedCode(String);

/// Marks a duplicate's answer, for the metrics.
#[derive(Clone)]
struct Duplicate;
