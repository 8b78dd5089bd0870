//! Micro-benchmarks of the two per-request checks after decoding:
//!
//! - `auth/verify/portals_1` and `auth/verify/portals_1000`:
//!   [`b24_host::auth::Verifier::verify`] of a decoded user-field event whose portal is
//!   configured in host.toml, with 1 and with 1000 configured portals. The cost is a
//!   `BTreeMap` look-up by `member_id` (logarithmic in the number of portals) plus a
//!   constant-time comparison of the 32-character application token.
//! - `auth/dedup_key`: [`b24_host::decode::dedup_key`], the duplicate-suppression key (SHA-256
//!   over `member_id`, code, `ts` and the `data` block) computed for every appended event.
//!
//! **Target**: none set. Both are expected to be small next to the decode (under 5 µs), and
//! `verify` to grow only logarithmically from 1 to 1000 portals.
//!
//! Run: `cargo bench -p b24-host --bench auth`.

use std::{collections::BTreeMap, hint::black_box, path::Path};

use b24_host::{
    auth::{Effect, Verifier},
    config::{AuthConfig, RestConfig},
    decode::{Decoded, Format, decode},
};
use b24_plugin_api::Secret;
use criterion::{Criterion, criterion_group, criterion_main};

/// The decoded `ONCRMDEALUSERFIELDUPDATE` fixture (a real user-field body).
fn event() -> Decoded {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ONCRMDEALUSERFIELDUPDATE.form");
    let body =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    decode(&body, Format::Form).expect("fixture decodes")
}

/// A verifier with `portals` configured portals, one of which is `event`'s (with its token);
/// the others get made-up member ids and tokens of the same shape (32 hex digits).
fn verifier(event: &Decoded, portals: usize) -> Verifier {
    let mut map = BTreeMap::new();
    map.insert(event.auth.member_id.clone(), event.auth.application_token.clone());
    let mut i: u64 = 0;
    while map.len() < portals {
        i += 1;
        let member = format!("{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i);
        map.insert(member, Secret::new(format!("{:032x}", u128::from(i) << 64 | 0xabcd)));
    }
    let config = AuthConfig { portals: map, ..AuthConfig::default() };
    Verifier::new(&config, &RestConfig::default(), BTreeMap::new()).expect("an HTTP client")
}

/// `Verifier::verify` with 1 and 1000 configured portals.
fn bench_verify(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("auth/verify");
    for portals in [1usize, 1000] {
        let verifier = verifier(&event, portals);
        assert_eq!(verifier.verify(&event), Ok(Effect::None), "the fixture's portal verifies");
        group.bench_function(format!("portals_{portals}"), |b| {
            b.iter(|| verifier.verify(black_box(&event)))
        });
    }
    group.finish();
}

/// `decode::dedup_key` of the decoded event.
fn bench_dedup_key(c: &mut Criterion) {
    let event = event();
    c.bench_function("auth/dedup_key", |b| {
        b.iter(|| b24_host::decode::dedup_key(black_box(&event)))
    });
}

criterion_group!(benches, bench_verify, bench_dedup_key);
criterion_main!(benches);
