//! A rough measurement of `decode` on a real user-field body, not a timed assertion. Run with
//! `cargo test --release --test bench_decode -- --ignored --nocapture`.

use std::hint::black_box;
use std::time::Instant;

use b24_host::decode::{BodyFormat, decode, form};

fn measure(label: &str, body: &[u8], format: BodyFormat) {
    let per_round = 20_000;
    // Warm up, then keep the best of a few rounds to dampen noise from other builds.
    for _ in 0..per_round {
        black_box(decode(black_box(body), format).ok());
    }
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..per_round {
            black_box(decode(black_box(body), format).ok());
        }
        best = best.min(start.elapsed().as_secs_f64() / f64::from(per_round));
    }
    println!(
        "{label}: {} bytes, {:.2} µs per decode (best of 7 x {per_round})",
        body.len(),
        best * 1e6
    );
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn decode_time() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |name: &str| std::fs::read(dir.join(name)).expect("fixture");
    let body = read("ONCRMCONTACTUSERFIELDUPDATE.form");
    assert!(decode(&body, BodyFormat::Form).is_ok());
    measure("form, user-field event", &body, BodyFormat::Form);
    measure(
        "form, system user-field event",
        &read("system-ONCRMDEALUSERFIELDUPDATE.form"),
        BodyFormat::Form,
    );
    measure("form, ONCRMCONTACTUPDATE with lists", &read("contact-update.form"), BodyFormat::Form);
    measure(
        "json, user-field event",
        &read("payloads/ONCRMDEALUSERFIELDADD.json"),
        BodyFormat::Json,
    );

    let start = Instant::now();
    for _ in 0..20_000 {
        black_box(form::parse(black_box(&body)));
    }
    println!("form::parse alone: {:.2} µs", start.elapsed().as_secs_f64() / 20_000.0 * 1e6);

    // Large bodies: linear behaviour check by eye (time per KiB should stay flat).
    for vars in [1_000usize, 10_000, 100_000] {
        let big: String =
            (0..vars).map(|i| format!("data%5BLIST%5D%5B%5D%5BVALUE%5D=v{i}&k{i}=x&")).collect();
        let limits = form::Limits { max_vars: usize::MAX, max_depth: 64 };
        let start = Instant::now();
        black_box(form::parse_with(big.as_bytes(), &limits));
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} KiB, {} vars: {:.2} ms ({:.1} µs per KiB)",
            big.len() / 1024,
            vars * 2,
            secs * 1e3,
            secs * 1e6 / (big.len() as f64 / 1024.0)
        );
    }
}
