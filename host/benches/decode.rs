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
//! `strip/form/user_field`: what ingress adds before journaling that body, blanking its
//! application token (`decode::strip::without_secrets`); compare it with the decode.
//!
//! Run: `cargo bench -p b24-host --bench decode`.

use std::{hint::black_box, path::Path};

use b24_host::decode::{Format, decode, strip::without_secrets};
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

    let body = bytes::Bytes::from(user_field.clone());
    c.bench_function("strip/form/user_field", |b| {
        b.iter(|| without_secrets(black_box(body.clone()), Format::Form))
    });
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
