//! A damaged disk under a running host (issue 20, point 5): bits are flipped in `journal.redb`
//! while events stream in and the probe works through a backlog. Whatever the damage, every
//! event the host answered 200 for is delivered unchanged or is a dead letter, or the host's
//! `/readyz` is 503 naming the journal's damage: no acknowledged event is lost without a word,
//! and no changed event is delivered.
//!
//! The events are padded so that the journal outgrows the storage library's page cache
//! (8 MiB): the backlog is read back from the damaged file, not from memory. Each seed lost
//! acknowledged events without a word before the consumer checked what it reads (seeds 1-6:
//! 10, 207, 208, 504, 504 and 6 events). `B24_DAMAGE_SEEDS=1,2,..` runs other seeds;
//! `B24_DAMAGE_KEEP=DIR` keeps each seed's log and journal there.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::FileExt,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::support::*;

const FORM: &str = "application/x-www-form-urlencoded";
/// Padding of each event's body, bytes.
const PAD: usize = 24_000;

fn field_name(field: u64) -> String {
    format!("UF_CRM_LIVE_{field}")
}

fn body(field: u64) -> String {
    format!("{}&data%5BPAD%5D={}", field_event(field, &field_name(field)), "x".repeat(PAD))
}

/// Flips `n` random bits of the file in place, byte by byte (the host keeps writing it). Most
/// of the file is the events' padding, whose damage the checksums catch one record at a time;
/// so the bits go where the journal's structure is: into pages that are neither padding nor
/// empty (the tables' B-tree pages, the small rows, the file's header and allocator state).
fn flip(path: &Path, n: usize, state: &mut u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut page = vec![0u8; 4096];
    for _ in 0..n {
        let mut at = next_random(state) % len;
        for _ in 0..50 {
            let start = at - at % 4096;
            let read = file.read_at(&mut page, start).unwrap_or(0);
            let padding = page[..read].iter().filter(|&&b| b == b'x' || b == 0).count();
            if read > 0 && padding < read / 2 {
                break;
            }
            at = next_random(state) % len;
        }
        let mut byte = [0u8];
        if file.read_exact_at(&mut byte, at).is_ok() {
            byte[0] ^= 1 << (next_random(state) % 8);
            let _ = file.write_all_at(&byte, at);
        }
    }
}

/// Flips one bit in the event id of `n` pending rows' keys (pages holding the probe's pending
/// rows, live or left over, found by their content): the damage that, undetected, moved a
/// consumer past every later event.
fn flip_keys(path: &Path, n: usize, state: &mut u64) {
    let bytes = std::fs::read(path).unwrap();
    let find = |hay: &[u8], needle: &[u8]| -> Vec<usize> {
        hay.windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect()
    };
    let mut keys = Vec::new();
    for (number, page) in bytes.chunks(4096).enumerate() {
        if find(page, b"next_at_ms").len() >= 4 {
            keys.extend(find(page, b"\x05probe").into_iter().map(|at| number * 4096 + at + 6));
        }
    }
    if keys.is_empty() {
        return;
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    for _ in 0..n {
        let at = (keys[(next_random(state) % keys.len() as u64) as usize]
            + (next_random(state) % 8) as usize) as u64;
        let mut byte = [0u8];
        if file.read_exact_at(&mut byte, at).is_ok() {
            byte[0] ^= 1 << (next_random(state) % 8);
            let _ = file.write_all_at(&byte, at);
        }
    }
}

/// Posts the events of `fields` from 8 threads; the journal id -> field id of each 200, and how
/// many got another answer (or none).
fn post(host: &RunningHost, fields: std::ops::Range<u64>) -> (BTreeMap<u64, u64>, u64) {
    let next = AtomicU64::new(fields.start);
    let acked = Mutex::new(BTreeMap::new());
    let refused = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let field = next.fetch_add(1, Ordering::SeqCst);
                    if field >= fields.end {
                        break;
                    }
                    let answer = try_request(
                        &host.addr,
                        "POST",
                        &host.path,
                        Some(FORM),
                        body(field).as_bytes(),
                    );
                    match answer {
                        Ok(a) if a.status == 200 => {
                            let id = a.body.trim_start_matches("accepted ").parse::<u64>().unwrap();
                            acked.lock().unwrap().insert(id, field);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    (acked.into_inner().unwrap(), refused.into_inner())
}

/// The probe's dead letters (empty while the command fails).
fn dead_ids(dir: &HostDir) -> BTreeSet<u64> {
    let out = dir.run_cli(&["journal", "dead", "--config", "host.toml", "--json"]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    answer["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// What one seed came to (printed for the figures).
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Seed {
    acked: usize,
    refused: u64,
    delivered: usize,
    dead: usize,
    /// Acknowledged, neither delivered nor a dead letter.
    missing: usize,
    /// `/readyz` at the end: 503 naming the journal.
    unready: Option<String>,
}

fn run(seed: u64) -> Seed {
    let dir = HostDir::new(&["probe"]);
    // The probe asks for a retry while hold.flag exists: the events pile up behind the first.
    let table = "[plugin.probe]\n[plugin.probe.retry]\nattempts = 1000000\nbase_ms = 10\n\
                 cap_ms = 50\n\n[plugin.probe.settings]\nrecord = \"probe.jsonl\"\n\
                 fail_while = \"hold.flag\"\n";
    std::fs::write(dir.path().join("hold.flag"), "").unwrap();
    dir.write_config(&config(&["probe"], table));
    let host = start(&dir);
    let journal = dir.path().join("state").join("journal.redb");
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // A backlog of 1,000 events (about 25 MB), then damage, then the probe works through it
    // while more events arrive, and more damage on the way.
    let (mut acked, mut refused) = post(&host, 0..1_000);
    flip(&journal, 64, &mut state);
    flip_keys(&journal, 8, &mut state);
    std::fs::remove_file(dir.path().join("hold.flag")).unwrap();
    for round in 0..2 {
        let start = 1_000 + round * 300;
        let (more, no) = post(&host, start..start + 300);
        acked.extend(more);
        refused += no;
        flip(&journal, 64, &mut state);
        flip_keys(&journal, 4, &mut state);
    }
    let (more, no) = post(&host, 1_600..1_800);
    acked.extend(more);
    refused += no;
    let delivered = |dir: &HostDir| -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for line in dir.read_lines_lenient("probe.jsonl") {
            let Some(id) = line["event_id"].as_u64() else { continue };
            let Some(&field) = acked.get(&id) else { continue };
            let unchanged = line["field_id"].as_u64() == Some(field)
                && line["field_name"].as_str() == Some(field_name(field).as_str())
                && line["code"] == "ONCRMDEALUSERFIELDUPDATE"
                && line["member_id"] == MEMBER;
            assert!(unchanged, "seed {seed}: a changed event was delivered: {line}");
            out.insert(id);
        }
        out
    };
    let unready = |host: &RunningHost| {
        let admin = host.admin.as_deref().expect("the host has an admin listener");
        let answer = try_request(admin, "GET", "/readyz", None, b"").unwrap_or_else(|e| {
            let log = host.log_text();
            keep(seed, &log, &journal);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "seed {seed}: the host does not answer /readyz ({e}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        });
        (answer.status == 503 && answer.body.contains("damaged")).then_some(answer.body)
    };
    // Every acknowledged event delivered or a dead letter, or the host says why not.
    let mut missing = BTreeSet::new();
    // (Or the host says the journal is damaged and delivery stopped moving.)
    let mut still = 0;
    eventually(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(250));
        let done: BTreeSet<u64> = delivered(&dir).union(&dead_ids(&dir)).copied().collect();
        let before = missing.len();
        missing = acked.keys().filter(|id| !done.contains(id)).copied().collect();
        still = if missing.len() == before { still + 1 } else { 0 };
        missing.is_empty() || (still >= 8 && unready(&host).is_some())
    });
    let delivered = delivered(&dir);
    let dead = dead_ids(&dir);
    let outcome = Seed {
        acked: acked.len(),
        refused,
        delivered: delivered.len(),
        dead: dead.len(),
        missing: missing.len(),
        unready: if missing.is_empty() { None } else { unready(&host) },
    };
    let log = host.log_text();
    keep(seed, &log, &journal);
    assert!(!log.contains("panicked at") || log.contains("storage library"), "seed {seed}:\n{log}");
    eprintln!(
        "damage_live seed {seed}: {outcome:?} missing {:?}",
        missing.iter().take(20).collect::<Vec<_>>()
    );
    if outcome.missing > 0 && outcome.unready.is_none() {
        eprintln!(
            "damage_live seed {seed}: lost without a word: {:?}...\nlog:\n{}",
            missing.iter().take(20).collect::<Vec<_>>(),
            log.lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    outcome
}

/// With `B24_DAMAGE_KEEP=DIR`, keeps the seed's log and journal there.
fn keep(seed: u64, log: &str, journal: &Path) {
    if let Ok(keep) = std::env::var("B24_DAMAGE_KEEP") {
        let _ = std::fs::write(format!("{keep}/seed{seed}.log"), log);
        let _ = std::fs::copy(journal, format!("{keep}/seed{seed}.redb"));
    }
}

#[test]
fn bit_flips_in_a_running_hosts_journal_lose_no_acknowledged_event_without_a_word() {
    let seeds: Vec<u64> = std::env::var("B24_DAMAGE_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| (1..=4).collect());
    let outcomes: Vec<(u64, Seed)> = seeds.iter().map(|&seed| (seed, run(seed))).collect();
    let silent: Vec<&(u64, Seed)> =
        outcomes.iter().filter(|(_, o)| o.missing > 0 && o.unready.is_none()).collect();
    assert!(silent.is_empty(), "acknowledged events lost without a word: {silent:#?}");
}
