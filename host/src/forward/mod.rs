//! http plugins (`kind = "http"`): each event POSTed to a handler the user already has.
//!
//! The worker calls an [`HttpTarget`] through `dispatch::instance` like any plugin, one request
//! at a time per lane (so in order), on the lane's thread: the journal, order, retries with
//! back-off, dead letters, replay and metrics are the worker's. What is the target's:
//!
//! - **The body.** `format = "form"`: the journaled body (what Bitrix24 sent, with
//!   `auth[refresh_token]` and `auth[application_token]` blanked by `decode::strip`) with the
//!   portal's application token put back, so a classic handler checking
//!   `$_REQUEST['auth']['application_token']` works unchanged; the refresh token stays blank (the
//!   host keeps the installer's pair). A body that came as JSON was journaled as its equivalent
//!   form and goes as that form. `format = "json"`: the exec protocol's event object
//!   (`runner::lines::EventJson`), its `id` the event id.
//! - **Headers** (Standard Webhooks): `webhook-id` (the event id: the same for every attempt),
//!   `webhook-timestamp` (Unix seconds), with a `secret` `webhook-signature` ([`sign`]), and
//!   `webhook-attempt` (1-based).
//! - **The answer.** 2xx is done. 408, 429 and 5xx are retried (an attempt used), no sooner than
//!   their `Retry-After` (seconds or an HTTP date); so is a request that timed out
//!   (`timeout_ms`) or whose connection broke. A target that cannot be reached at all
//!   (connection refused, no route, DNS, TLS handshake) uses no attempt: its events wait in the
//!   journal, with back-off, however long it is down. Any other status is a rejection: the dead
//!   letter keeps the status and the first 1 KiB of the answer.
//! - **The connection.** rustls with the system's root certificates, redirects not followed,
//!   keep-alive (a 2xx answer's body is read, up to 64 KiB, so the connection is kept).

pub mod sign;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use b24_plugin_api::{Outcome, PluginError};
use bytes::Bytes;

use crate::{
    auth::Verifier,
    call::{CallError, Envelope},
    config::{ForwardFormat, HttpConfig},
    decode::{self, Format},
    journal::now_ms,
    runner::lines::EventJson,
};
use sign::SigningKey;

/// How much of a rejecting answer the dead letter keeps.
const KEPT_ANSWER: usize = 1024;

/// The most of a 2xx answer read (to keep the connection); a longer one closes it.
const DRAINED_ANSWER: usize = 64 * 1024;

/// How often a request waiting for its answer checks whether delivery stops.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// One http plugin's target.
pub struct HttpTarget {
    plugin: String,
    url: String,
    format: ForwardFormat,
    key: Option<SigningKey>,
    client: reqwest::Client,
    json: Arc<EventJson>,
    tokens: Arc<Verifier>,
    runtime: tokio::runtime::Handle,
}

impl HttpTarget {
    /// The target of plugin `plugin`: requests time out after `timeout`.
    pub fn new(
        plugin: &str,
        config: &HttpConfig,
        timeout: Duration,
        json: Arc<EventJson>,
        tokens: Arc<Verifier>,
        runtime: tokio::runtime::Handle,
    ) -> Result<HttpTarget, String> {
        let key = match &config.secret {
            Some(secret) => Some(
                SigningKey::new(secret.expose())
                    .map_err(|e| format!("plugin `{plugin}`: secret: {e}"))?,
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .tls_built_in_webpki_certs(false)
            .tls_built_in_native_certs(true)
            .pool_max_idle_per_host(4)
            .user_agent(concat!("b24-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("plugin `{plugin}`: cannot make its HTTP client: {e}"))?;
        Ok(HttpTarget {
            plugin: plugin.to_owned(),
            url: config.url.clone(),
            format: config.format,
            key,
            client,
            json,
            tokens,
            runtime,
        })
    }

    /// The URL as the console and the log show it: no user name or password, no query.
    pub fn shown_url(&self) -> String {
        shown_url(&self.url)
    }

    /// The request body and its content type for `envelope`.
    fn body(&self, envelope: &Envelope, attempt: u32) -> (Bytes, &'static str) {
        let record = &envelope.record;
        match self.format {
            ForwardFormat::Json => {
                let id = envelope.id.to_string();
                let object = self.json.object(&id, envelope, attempt);
                (Bytes::from(object), "application/json")
            }
            ForwardFormat::Form => {
                let token = self.tokens.application_token(&record.meta.member_id);
                let token = token.as_ref().map(|t| t.expose()).unwrap_or("");
                let form = match record.meta.format {
                    Format::Form => decode::strip::with_application_token(&record.raw, token),
                    // Kept as JSON (it did not read back as a form): its tree as a form.
                    Format::Json => {
                        let mut tree = decode::decode_tree(&record.raw, Format::Json)
                            .map(|p| p.map)
                            .unwrap_or_default();
                        decode::strip::blank_tree(&mut tree);
                        let form = crate::decode::encode::http_build_query(&tree);
                        decode::strip::with_application_token(form.as_bytes(), token)
                    }
                };
                (Bytes::from(form), "application/x-www-form-urlencoded")
            }
        }
    }

    /// POSTs `envelope` (attempt `attempt`), waiting for the answer unless `stop` says delivery
    /// stops (then the request is dropped and the event stays pending).
    pub fn call(
        &self,
        envelope: &Envelope,
        attempt: u32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, CallError> {
        if self.format == ForwardFormat::Json
            && let Err(reason) = self.json.of(envelope)
        {
            return Err(CallError::Plugin(PluginError::reject(reason)));
        }
        let (body, content_type) = self.body(envelope, attempt);
        let id = envelope.id.to_string();
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", content_type)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-attempt", attempt.to_string());
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", key.sign(&id, timestamp, &body));
        }
        let request = request.body(body);
        self.runtime.block_on(async {
            let exchange = async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after_ms);
                let keep = if (200..300).contains(&status) { DRAINED_ANSWER } else { KEPT_ANSWER };
                let answer = read_some(response, keep).await;
                Ok::<_, reqwest::Error>((status, retry_after, answer))
            };
            tokio::pin!(exchange);
            let result = loop {
                tokio::select! {
                    result = &mut exchange => break result,
                    () = tokio::time::sleep(STOP_CHECK) => {
                        if stop() {
                            return Err(CallError::Abandoned);
                        }
                    }
                }
            };
            match result {
                Ok((status, retry_after, answer)) => judge(status, retry_after, &answer),
                Err(e) => Err(failed(&e)),
            }
        })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }
}

/// Up to `limit` bytes of the answer's body (the rest is not read).
async fn read_some(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    kept.truncate(KEPT_ANSWER.max(limit.min(kept.len())));
    kept
}

/// What an answer means for the event.
fn judge(status: u16, retry_after: Option<i64>, answer: &[u8]) -> Result<Outcome, CallError> {
    if (200..300).contains(&status) {
        return Ok(Outcome::Done);
    }
    let start = &answer[..answer.len().min(KEPT_ANSWER)];
    let text = String::from_utf8_lossy(start);
    let text = text.trim();
    let message =
        if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") };
    if status == 408 || status == 429 || (500..600).contains(&status) {
        let not_before_ms = retry_after.map(|ms| now_ms() + ms);
        return Err(CallError::Retry { message, not_before_ms, counted: true });
    }
    Err(CallError::Plugin(b24_plugin_api::PluginError {
        kind: b24_plugin_api::ErrorKind::Reject,
        message: message.into(),
    }))
}

/// A request that got no answer: a target that could not be reached waits uncounted; a
/// timeout or a broken connection is retried as an attempt.
fn failed(e: &reqwest::Error) -> CallError {
    let cause = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
    let detail = if cause.is_empty() { e.to_string() } else { cause };
    if e.is_connect() {
        CallError::Retry {
            message: format!("cannot reach the target: {detail}"),
            not_before_ms: None,
            counted: false,
        }
    } else if e.is_timeout() {
        CallError::Retry {
            message: "no answer within timeout_ms".to_owned(),
            not_before_ms: None,
            counted: true,
        }
    } else {
        CallError::Retry {
            message: format!("the request failed: {detail}"),
            not_before_ms: None,
            counted: true,
        }
    }
}

/// A `Retry-After` value in milliseconds from now: delay-seconds or an HTTP date (at most a
/// day; a date in the past is now).
pub fn retry_after_ms(value: &str) -> Option<i64> {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some((seconds.min(86_400) as i64) * 1000);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let ms = match at.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_millis() as i64,
        Err(_) => 0,
    };
    Some(ms.min(DAY_MS))
}

/// `url` without its user name, password and query, for showing.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            let query = parsed.query().is_some();
            parsed.set_query(None);
            if query { format!("{parsed}?…") } else { parsed.to_string() }
        }
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after_ms("3"), Some(3000));
        assert_eq!(retry_after_ms(" 0 "), Some(0));
        assert_eq!(retry_after_ms("999999999"), Some(86_400_000));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let ms = retry_after_ms(&soon).unwrap();
        assert!((28_000..=30_000).contains(&ms), "{ms}");
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(retry_after_ms("soon"), None);
    }

    #[test]
    fn answers_are_done_retried_or_rejected() {
        assert!(matches!(judge(204, None, b""), Ok(Outcome::Done)));
        for status in [408, 429, 500, 503] {
            assert!(matches!(
                judge(status, Some(1000), b"busy"),
                Err(CallError::Retry { counted: true, not_before_ms: Some(_), .. })
            ));
        }
        let long = vec![b'x'; 5000];
        let Err(CallError::Plugin(e)) = judge(404, None, &long) else { panic!() };
        assert_eq!(e.kind, b24_plugin_api::ErrorKind::Reject);
        assert!(e.message.starts_with("HTTP 404: xxx"));
        assert_eq!(e.message.len(), "HTTP 404: ".len() + KEPT_ANSWER);
        let Err(CallError::Plugin(e)) = judge(301, None, b"") else { panic!() };
        assert_eq!(e.message, "HTTP 301");
    }

    #[test]
    fn shown_urls_hide_credentials_and_queries() {
        assert_eq!(
            shown_url("https://user:pw@app.example.com/h.php?key=s3cret"),
            "https://app.example.com/h.php?…"
        );
        assert_eq!(shown_url("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/x");
    }
}
