//! The stored record of a decoded event, built once where the event enters (ingress, the
//! offline poller): its metadata, its duplicate-suppression key and the body.

use std::io::Write;

use bytes::Bytes;

use super::{Decoded, EventKind};
use crate::record::{DedupKey, EventMeta, EventRecord, Format, KeyHasher, Source, hex};

/// The duplicate-suppression key of `event` (see `journal::dedup`): the portal, the code,
/// `ts` and the whole `data` block, in order; never `event_handler_id` or `auth`. The parts of
/// [`key_of`](crate::record::key_of): member id, code, `ts` in decimal (empty when absent), then
/// each data pair's key and value.
pub fn dedup_key(event: &Decoded) -> DedupKey {
    let mut key = KeyHasher::new();
    key.part(event.auth.member_id.as_bytes());
    key.part(event.code.as_bytes());
    match event.ts {
        Some(ts) => {
            // An i64 in decimal is at most 20 bytes.
            let mut digits = [0u8; 20];
            let mut cursor = std::io::Cursor::new(&mut digits[..]);
            let _ = write!(cursor, "{ts}");
            let len = cursor.position() as usize;
            key.part(&digits[..len]);
        }
        None => key.part(b""),
    }
    for (k, v) in &event.data {
        key.part(k.as_bytes());
        key.part(v.as_bytes());
    }
    key.finish()
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

    /// Keys computed before the key was built part by part (main at 681faf6): journaled keys
    /// and the duplicate window depend on them staying as they are.
    #[test]
    fn keys_stay_as_they_were() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (name, format, key) in [
            ("ONCRMDEALUSERFIELDUPDATE.form", Format::Form, "fb1037f7721b0ad5e707d5a3c3359a3f"),
            ("ONCRMDEALUSERFIELDUPDATE.json", Format::Json, "fb1037f7721b0ad5e707d5a3c3359a3f"),
            ("ONAPPINSTALL.form", Format::Form, "395924419fdae69f565d1dd4d460f5a8"),
            ("smart-process.form", Format::Form, "af2c2039da28b86957e4730cb88854c4"),
            ("odd-values.form", Format::Form, "12400e0d0d162413dcb52bef4cdededd"),
            ("legacy-invoice.form", Format::Form, "38b8cf64b1ff92631a3b60bb53e988a6"),
        ] {
            let body = std::fs::read(dir.join(name)).expect("fixture");
            let event = super::super::decode(&body, format).expect("decodes");
            assert_eq!(hex(&dedup_key(&event)), key, "{name}");
        }
        // No `ts`, a negative one, the extremes: the same parts as `ts.to_string()` made.
        for ts in [None, Some(-5), Some(i64::MIN), Some(i64::MAX)] {
            let body = match ts {
                Some(ts) => format!("event=E&ts={ts}&data[a]=1&auth[member_id]=m"),
                None => "event=E&data[a]=1&auth[member_id]=m".to_owned(),
            };
            let event = super::super::decode(body.as_bytes(), Format::Form).expect("decodes");
            assert_eq!(event.ts, ts);
            let ts = ts.map(|ts| ts.to_string()).unwrap_or_default();
            let parts: [&[u8]; 5] = [b"m", b"E", ts.as_bytes(), b"a", b"1"];
            assert_eq!(dedup_key(&event), crate::record::key_of(&parts), "{ts}");
        }
    }
}
