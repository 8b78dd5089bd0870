//! Dead letters on the log: the stream `<stream>_DEAD`, one message per (plugin, event), on
//! `b24.<stream>.dead.<plugin>.<member>.<code>`. The payload is the event's sealed record as
//! the events stream held it; the headers say whose, which event and why (see the contract):
//! `B24-Event-Id`, `B24-Plugin`, `B24-Reason` (one line), `B24-Attempts`, `B24-At-Ms`, and
//! `Nats-Msg-Id` = `dead:<plugin>:<event id>`, so the same burial twice (a host that died
//! between the publish and its ack, and the next host that redoes it) is stored once.
//!
//! [`read`] turns a stored dead letter back into plain data for `admin.rs`.

use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use bytes::Bytes;

use super::{
    append::PAYLOAD_KEY,
    connect::{Link, subject_token},
};
use crate::journal::{
    StoreError, checksum,
    record::{DeadLetter, EventRecord},
};

/// Header: the original event id (the events stream's sequence).
pub(super) const EVENT_ID: &str = "B24-Event-Id";
/// Header: the plugin that gave up.
pub(super) const PLUGIN: &str = "B24-Plugin";
/// Header: the recipients of an event or a replay, comma-separated.
pub(super) const PLUGINS: &str = "B24-Plugins";
/// Header: why, one line.
pub(super) const REASON: &str = "B24-Reason";
/// Header: attempts made.
pub(super) const ATTEMPTS: &str = "B24-Attempts";
/// Header: when it was given up, ms since the epoch.
pub(super) const AT_MS: &str = "B24-At-Ms";
/// Longest reason kept in a header (a plugin's error text can be long).
const REASON_LIMIT: usize = 2000;

/// The subject of `plugin`'s dead letter of an event from `member` with `code`.
pub(super) fn subject(link: &Link, plugin: &str, member: &str, code: &str) -> String {
    format!(
        "b24.{}.dead.{}.{}.{}",
        link.names.stream,
        subject_token(plugin),
        subject_token(member),
        subject_token(code)
    )
}

/// The subjects of `plugin`'s dead letters (all plugins' when `None`).
pub(super) fn filter(link: &Link, plugin: Option<&str>) -> String {
    match plugin {
        Some(p) => format!("b24.{}.dead.{}.>", link.names.stream, subject_token(p)),
        None => format!("b24.{}.dead.>", link.names.stream),
    }
}

/// A reason as a header value: one line, no control characters, bounded.
fn one_line(reason: &str) -> String {
    let mut out: String =
        reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(REASON_LIMIT).collect();
    out.truncate(out.trim_end().len());
    out
}

/// The headers of `plugin`'s dead letter of event `id`.
pub(super) fn headers(plugin: &str, id: u64, dead: &DeadLetter) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("dead:{plugin}:{id}").as_str());
    headers.insert(EVENT_ID, id.to_string().as_str());
    headers.insert(PLUGIN, plugin);
    headers.insert(REASON, one_line(&dead.reason).as_str());
    headers.insert(ATTEMPTS, dead.attempts.to_string().as_str());
    headers.insert(AT_MS, dead.at_ms.to_string().as_str());
    headers
}

/// Publishes `plugin`'s dead letter of event `id` (its sealed `payload`, from portal `member`,
/// event `code`) and waits for the log's acknowledgement. Idempotent: the same (plugin, id)
/// published twice is stored once (`Nats-Msg-Id` = `dead:<plugin>:<id>`).
pub(super) async fn bury(
    link: &Link,
    plugin: &str,
    id: u64,
    payload: Bytes,
    member: &str,
    code: &str,
    dead: &DeadLetter,
) -> Result<(), StoreError> {
    publish(link, subject(link, plugin, member, code), headers(plugin, id, dead), payload)
        .await
        .map(|_| ())
        .map_err(|e| {
            StoreError::Storage(format!("cannot store {plugin}'s dead letter of event {id}: {e}"))
        })
}

/// Publishes one message with `headers` and waits for the log's acknowledgement; the
/// stream's sequence (of the original, for a suppressed duplicate).
pub(super) async fn publish(
    link: &Link,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<u64, String> {
    let ack = link
        .js
        .send_publish(subject, PublishMessage::build().payload(payload).headers(headers))
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|ack| ack.sequence).map_err(|e| e.to_string())
}

/// A header's value, if present.
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

/// A stored dead letter, read back.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    /// Its sequence in the dead letters' stream.
    pub seq: u64,
    /// The plugin.
    pub plugin: String,
    /// The event id.
    pub id: u64,
    /// Why, attempts, when.
    pub dead: DeadLetter,
    /// The event's record, if its payload passes the check.
    pub record: Option<EventRecord>,
    /// The sealed payload as stored (replay publishes it unchanged).
    pub payload: Bytes,
    /// Portal and code tokens of the subject (the record's own when it is readable).
    pub member_id: String,
    /// The event code.
    pub code: String,
}

/// The record in a sealed payload; `None` if it fails its checksum or does not parse.
pub(super) fn open_payload(payload: &[u8]) -> Option<EventRecord> {
    let body = checksum::unseal(PAYLOAD_KEY, payload).ok()?;
    EventRecord::decode(body)
}

/// Reads a stored dead letter (`subject` `b24.<S>.dead.<plugin>.<member>.<code>`); `None` for
/// a message that is not one (no event id).
pub(super) fn read(seq: u64, subject: &str, headers: &HeaderMap, payload: Bytes) -> Option<Stored> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let id = header(headers, EVENT_ID)?.parse().ok()?;
    let plugin = header(headers, PLUGIN)
        .map(str::to_owned)
        .or_else(|| tokens.get(3).map(|s| (*s).to_owned()))?;
    let dead = DeadLetter {
        reason: header(headers, REASON).unwrap_or_default().to_owned(),
        attempts: header(headers, ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
        at_ms: header(headers, AT_MS).and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    let record = open_payload(&payload);
    let (member_id, code) = match &record {
        Some(r) => (r.meta.member_id.clone(), r.meta.code.clone()),
        None => (
            tokens.get(4).copied().unwrap_or_default().to_owned(),
            tokens.get(5).copied().unwrap_or_default().to_owned(),
        ),
    };
    Some(Stored { seq, plugin, id, dead, record, payload, member_id, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_reads_back_from_its_headers() {
        let dead =
            DeadLetter { reason: "gave up\r\nafter 3\tattempts ".into(), attempts: 3, at_ms: 42 };
        let headers = headers("probe", 17, &dead);
        assert_eq!(header(&headers, "Nats-Msg-Id"), Some("dead:probe:17"));
        assert_eq!(header(&headers, REASON), Some("gave up  after 3 attempts"));
        let stored = read(5, "b24.S.dead.probe.m1.ONX", &headers, Bytes::from_static(b"junk"))
            .expect("a dead letter");
        assert_eq!((stored.seq, stored.id, stored.plugin.as_str()), (5, 17, "probe"));
        assert_eq!((stored.dead.attempts, stored.dead.at_ms), (3, 42));
        assert!(stored.record.is_none(), "a payload failing its check is not read");
        assert_eq!((stored.member_id.as_str(), stored.code.as_str()), ("m1", "ONX"));
        assert!(read(1, "b24.S.dead.p.m.c", &HeaderMap::new(), Bytes::new()).is_none());
    }
}
