//! Micro-benchmark of [`b24_host::decode::decode`]: request body bytes to the typed
//! [`Decoded`](b24_host::decode::Decoded) view, the first step of every request after the HTTP
//! layer.
//!
//! Three bodies, all read from `host/tests/fixtures` (made by the PHP reference encoder, byte for
//! byte what Bitrix24 sends):
//!
//! - `decode/form/user_field`: `ONCRMDEALUSERFIELDUPDATE.form`, a user-field event with a user's
//!   OAuth block (access token, expiry, scope, user id), as `application/x-www-form-urlencoded`.
//! - `decode/form/system`: `system-ONCRMDEALUSERFIELDUPDATE.form`, the same event as sent to an
//!   app-level (system) handler: no user tokens, so a shorter `auth` block.
//! - `decode/json/user_field`: the same payload as JSON, built from the fixture's reference
//!   decode `ONCRMDEALUSERFIELDUPDATE.json` (PHP's own `parse_str` of the form body).
//!
//! **Target**: under 5 µs for the user-field form body.
//!
//! `decode/form/user_field` takes the fast path for plain form bodies (`decode::fast`);
//! `decode_full/form/user_field` decodes the same body through the PHP-like tree
//! (`decode::decode_full`), as every form body was decoded before the fast path.
//!
//! `strip/form/user_field`: what ingress adds before journaling that body, blanking its
//! application token (`decode::strip::without_secrets`); compare it with the decode.
//!
//! `request_path/{before,after}`: the whole step ingress takes for that body before the
//! append, same run: decode, the body without its secrets, the duplicate key and the record.
//! `before` is the path as it was until the fast path (`decode_full`, then
//! `strip::without_secrets`'s second scan, the key over a `Vec` of parts with `ts` formatted
//! into a `String`, the key's hex one `format!` a byte; copied below as `before`); `after` is
//! `decode::intake`, `Received::without_secrets`, `decode::dedup_key` and `decode::record`.
//!
//! Run: `cargo bench -p b24-host --bench decode`.

use std::{hint::black_box, path::Path};

use b24_host::decode::{self, Format, decode, decode_full, strip::without_secrets};
use b24_host::record::{EventRecord, Source};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Reads a fixture from `host/tests/fixtures`.
fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Decodes the user-field body as form and as JSON, and the system body as form.
fn bench_decode(c: &mut Criterion) {
    let user_field = fixture("ONCRMDEALUSERFIELDUPDATE.form");
    let system = fixture("system-ONCRMDEALUSERFIELDUPDATE.form");
    let json = fixture("ONCRMDEALUSERFIELDUPDATE.json");

    // The JSON body must decode to the same event as the form body, or the comparison is moot.
    let from_form = decode(&user_field, Format::Form).expect("user-field form decodes");
    let from_json = decode(&json, Format::Json).expect("user-field JSON decodes");
    assert_eq!(from_form, from_json, "JSON reference decode differs from the form body");
    decode(&system, Format::Form).expect("system form decodes");

    let mut group = c.benchmark_group("decode");
    for (name, body, format) in [
        ("form/user_field", &user_field, Format::Form),
        ("form/system", &system, Format::Form),
        ("json/user_field", &json, Format::Json),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| decode(black_box(body.as_slice()), black_box(format)))
        });
    }
    group.finish();

    c.bench_function("decode_full/form/user_field", |b| {
        b.iter(|| decode_full(black_box(user_field.as_slice()), black_box(Format::Form)))
    });

    let body = bytes::Bytes::from(user_field.clone());
    c.bench_function("strip/form/user_field", |b| {
        b.iter(|| without_secrets(black_box(body.clone()), Format::Form))
    });
}

/// The request path's decoding steps as they were before the fast path.
mod before {
    use b24_host::decode::{Decoded, EventKind, Format};
    use b24_host::record::{DedupKey, EventMeta, EventRecord, Source, key_of};
    use bytes::Bytes;

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

    fn hex(key: &DedupKey) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn record(
        event: &Decoded,
        raw: Bytes,
        format: Format,
        key: &DedupKey,
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
                source: Source::Online,
                code: event.code.clone(),
                member_id: event.auth.member_id.clone(),
                domain: event.auth.domain.clone(),
                dedup_key: hex(key),
                extra: Vec::new(),
                user_field,
            },
            raw,
        }
    }
}

/// Decode, strip, key and record of the bench body (`bench/load.sh`'s), before and after.
fn bench_request_path(c: &mut Criterion) {
    let body = Bytes::from(fixture("ONCRMDEALUSERFIELDUPDATE.form"));
    let before = |body: Bytes| -> EventRecord {
        let event = decode_full(&body, Format::Form).expect("decodes");
        let (raw, format) = without_secrets(body, Format::Form);
        let key = before::dedup_key(&event);
        before::record(&event, raw, format, &key, 1)
    };
    let after = |body: Bytes| -> EventRecord {
        let (event, received) = decode::intake(body, Format::Form).expect("decodes");
        let (raw, format) = received.without_secrets();
        let key = decode::dedup_key(&event);
        decode::record(&event, raw, format, Source::Online, &key, Vec::new(), 1)
    };
    // Both give the same record, byte for byte, or the comparison is moot.
    assert_eq!(before(body.clone()), after(body.clone()));
    assert_eq!(before(body.clone()).encode(), after(body.clone()).encode());

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("before", |b| b.iter(|| before(black_box(body.clone()))));
    group.bench_function("after", |b| b.iter(|| after(black_box(body.clone()))));
    group.finish();
}

criterion_group!(benches, bench_decode, bench_request_path);
criterion_main!(benches);
