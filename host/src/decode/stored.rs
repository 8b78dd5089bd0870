//! The stored record of a decoded event, built once where the event enters (ingress, the
//! offline poller): its metadata, its duplicate-suppression key and the body.

use bytes::Bytes;

use super::{Decoded, EventKind};
use crate::record::{DedupKey, EventMeta, EventRecord, Format, Source, hex, key_of};

/// The duplicate-suppression key of `event` (see `journal::dedup`): the portal, the code,
/// `ts` and the whole `data` block, in order; never `event_handler_id` or `auth`.
pub fn dedup_key(event: &Decoded) -> DedupKey {
    let ts = event.ts.map(|ts| ts.to_string()).unwrap_or_default();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + 2 * event.data.len());
    parts.extend([event.auth.member_id.as_bytes(), event.code.as_bytes(), ts.as_bytes()]);
    for (k, v) in &event.data {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    key_of(&parts)
}

/// The record of `event`, received as `raw` in `format` at `received_at_ms`.
pub fn record(
    event: &Decoded,
    raw: Bytes,
    format: Format,
    source: Source,
    key: &DedupKey,
    extra: Vec<(String, String)>,
    received_at_ms: i64,
) -> EventRecord {
    let user_field = match &event.kind {
        EventKind::UserField(field) => {
            Some((field.entity_id.to_ascii_uppercase(), field.field_name.to_ascii_uppercase()))
        }
        EventKind::Other => None,
    };
    EventRecord {
        meta: EventMeta {
            received_at_ms,
            format,
            source,
            code: event.code.clone(),
            member_id: event.auth.member_id.clone(),
            domain: event.auth.domain.clone(),
            dedup_key: hex(key),
            extra,
            user_field,
        },
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_leaves_out_the_handler_and_the_tokens_and_the_record_names_the_field() {
        let body = |handler: &str, token: &str, id: &str| {
            format!(
                "event=ONCRMDEALUSERFIELDUPDATE&event_handler_id={handler}&data%5BFIELDS%5D%5BID%5D={id}\
                 &data%5BFIELDS%5D%5BFIELD_NAME%5D=uf_crm_1&ts=5&auth%5Bmember_id%5D=m\
                 &auth%5Bapplication_token%5D={token}"
            )
        };
        let decode = |b: String| super::super::decode(b.as_bytes(), Format::Form).unwrap();
        let one = decode(body("1", "a", "7"));
        assert_eq!(dedup_key(&one), dedup_key(&decode(body("2", "b", "7"))));
        assert_ne!(dedup_key(&one), dedup_key(&decode(body("1", "a", "8"))));
        let record =
            record(&one, Bytes::new(), Format::Form, Source::Online, &dedup_key(&one), vec![], 3);
        assert_eq!(record.meta.user_field, Some(("CRM_DEAL".to_owned(), "UF_CRM_1".to_owned())));
        assert_eq!(record.meta.dedup_key, hex(&dedup_key(&one)));
    }
}
