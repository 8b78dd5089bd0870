//! A damaged disk: on a stopped host with pending events, `journal.redb` is truncated, has bits
//! flipped or pages zeroed. Then the host either refuses to start with a message that says what
//! happened, or starts and delivers only unchanged events (each compared with what was posted);
//! every loss is reported (a dead letter, `journal verify`, or the host's `/readyz` naming the
//! event past which it cannot read the pending rows); nothing panics (exit code 101 never
//! appears); `journal salvage` recovers what is readable.
//!
//! The stocked journal is made once (events posted while the probe sleeps in its first call,
//! then the host stopped) and copied for each attack. `scripts/damage-seeds FROM TO` runs many
//! seeds, one process (and one stock) each, keeping each failure's journal and log.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::support::*;

/// Events posted into the stocked journal.
const EVENTS: u64 = 2000;
/// The first field id posted; field id `FIRST + i` is the i-th event.
const FIRST: u64 = 100_000;

fn field_name(field: u64) -> String {
    format!("UF_CRM_DAMAGE_{field}")
}

/// A folder with a stocked, stopped journal, and what was posted: journal id -> field id.
struct Stock {
    dir: HostDir,
    posted: BTreeMap<u64, u64>,
}

fn stock() -> &'static Stock {
    static STOCK: OnceLock<Stock> = OnceLock::new();
    STOCK.get_or_init(|| {
        let dir = HostDir::new(&["probe"]);
        // The probe sleeps in its first call: every other event stays pending.
        let holding = config(&["probe"], &probe("", "sleep_ms = 60000"))
            .replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 300");
        dir.write_config(&holding);
        let host = start(&dir);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let addr = host.addr.clone();
                let path = host.path.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..EVENTS).step_by(8) {
                        let field = FIRST + i;
                        let body = field_event(field, &field_name(field));
                        let answer = try_request(&addr, "POST", &path, Some(FORM), body.as_bytes())
                            .expect("post");
                        assert_eq!(answer.status, 200, "{answer:?}");
                        let id =
                            answer.body.trim_start_matches("accepted ").parse::<u64>().unwrap();
                        out.push((id, field));
                    }
                    out
                })
            })
            .collect();
        let posted = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(host.stop(), "the stocking host must stop cleanly");
        Stock { dir, posted }
    })
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A copy of the stocked folder, configured to deliver at once.
fn copy_of_stock() -> HostDir {
    let stock = stock();
    let dir = HostDir::new(&["probe"]);
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    copy_journal(&stock.dir, &dir);
    dir.write_config(&config(&["probe"], &probe("", "")));
    dir
}

/// Copies the journal of `from`'s state folder into `to`'s: the file, its mark, and the
/// event files its rows point into (the attacks are on `journal.redb`).
fn copy_journal(from: &HostDir, to: &HostDir) {
    for file in ["journal.redb", "journal.mark"] {
        std::fs::copy(from.path().join("state").join(file), to.path().join("state").join(file))
            .unwrap();
    }
    let events = from.path().join("state/events");
    if events.is_dir() {
        std::fs::create_dir_all(to.path().join("state/events")).unwrap();
        for file in std::fs::read_dir(&events).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), to.path().join("state/events").join(file.file_name()))
                .unwrap();
        }
    }
}

/// What one attack came to.
#[derive(Debug, Default)]
struct Outcome {
    refused: Option<String>,
    delivered_unchanged: usize,
    changed: usize,
    lost: usize,
    reported: usize,
    salvaged: u64,
}

fn journal_file(dir: &HostDir) -> PathBuf {
    dir.path().join("state").join("journal.redb")
}

/// A command ended with its report or a clear error, not a panic (a panic of the storage
/// library that was contained may still be printed by the panic hook).
fn no_panic(what: &str, status: &std::process::ExitStatus, output: &str) {
    assert_ne!(status.code(), Some(101), "{what} panicked:\n{output}");
    assert!(
        output.contains("\"problems\"") || output.contains("b24-host: "),
        "{what} ended without a report or an error:\n{output}"
    );
}

/// With `B24_DAMAGE_KEEP=DIR`, keeps the attacked journal (before anything opened it: the file
/// and its event files, `NAME.events/`) and then the host's log there, named after the attack.
fn keep(name: &str, log: Option<&str>, dir: &HostDir) {
    let Ok(keep) = std::env::var("B24_DAMAGE_KEEP") else { return };
    let name = name.replace(' ', "-");
    match log {
        Some(log) => drop(std::fs::write(format!("{keep}/{name}.log"), log)),
        None => {
            drop(std::fs::copy(journal_file(dir), format!("{keep}/{name}.redb")));
            let events = format!("{keep}/{name}.events");
            if std::fs::create_dir_all(&events).is_ok() {
                for file in std::fs::read_dir(dir.path().join("state/events")).into_iter().flatten()
                {
                    let Ok(file) = file else { continue };
                    drop(std::fs::copy(
                        file.path(),
                        format!("{events}/{}", file.file_name().display()),
                    ));
                }
            }
        }
    }
}

/// Runs `journal verify` and `journal salvage`, then the host; checks the promises.
fn after_attack(name: &str, dir: &HostDir) -> Outcome {
    let posted = &stock().posted;
    let mut outcome = Outcome::default();
    keep(name, None, dir);
    let verify = dir.run_cli(&["journal", "verify", "--config", "host.toml", "--json"]);
    let verify_text = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    no_panic("journal verify", &verify.status, &verify_text);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap_or_default();
    let problems: Vec<String> = report["problems"]
        .as_array()
        .map(|p| p.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let salvage = dir.run_cli(&[
        "journal",
        "salvage",
        "--to",
        "salvaged.redb",
        "--config",
        "host.toml",
        "--json",
    ]);
    let salvage_text = String::from_utf8_lossy(&salvage.stdout).into_owned()
        + &String::from_utf8_lossy(&salvage.stderr);
    no_panic("journal salvage", &salvage.status, &salvage_text);
    let salvaged: serde_json::Value = serde_json::from_slice(&salvage.stdout).unwrap_or_default();
    outcome.salvaged = salvaged["events"]["readable"].as_u64().unwrap_or(0);

    let host = match dir.start() {
        Err(e) => {
            assert!(!e.contains("exit status: 101") && !e.contains("panicked at"), "{name}: {e}");
            assert!(
                e.contains("journal") && (e.contains("salvage") || e.contains("verify")),
                "{name}: the refusal must say what happened and what to do: {e}"
            );
            assert!(!verify.status.success(), "{name}: refused, but verify found nothing");
            outcome.refused = Some(e.lines().last().unwrap_or_default().to_owned());
            outcome.lost = posted.len();
            outcome.reported = posted.len();
            eprintln!("damage {name}: {outcome:?}");
            return outcome;
        }
        Ok(host) => host,
    };
    // The sentinel: every posted event was delivered or is a dead letter (an event stuck
    // pending fails the test after PATIENCE: a loss nobody reported).
    let started = Instant::now();
    loop {
        let done = delivered_ids(dir).len() + dead_ids(dir).len();
        if done >= posted.len() || started.elapsed() > PATIENCE {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut delivered = BTreeSet::new();
    for line in dir.read_lines("probe.jsonl").iter().filter(|l| l["kind"] == "user_field") {
        let id = line["event_id"].as_u64().unwrap();
        let expected = posted.get(&id).copied();
        let field = line["field_id"].as_u64();
        let unchanged = expected.is_some()
            && field == expected
            && line["field_name"].as_str() == Some(field_name(expected.unwrap()).as_str())
            && line["code"] == "ONCRMDEALUSERFIELDUPDATE"
            && line["member_id"] == MEMBER;
        if unchanged {
            delivered.insert(id);
        } else {
            outcome.changed += 1;
            eprintln!("damage {name}: CHANGED delivery {line}");
        }
    }
    outcome.delivered_unchanged = delivered.len();
    let dead = dead_ids(dir);
    let metrics = host.admin_request("GET", "/metrics").body;
    let log = host.log_text();
    keep(name, Some(&log), dir);
    let lost: Vec<u64> = posted.keys().filter(|id| !delivered.contains(id)).copied().collect();
    outcome.lost = lost.len();
    let mentioned = |id: &u64| {
        problems
            .iter()
            .any(|p| p.contains(&format!("event {id}:")) || p.contains(&format!(", {id})")))
    };
    let unreported: Vec<u64> =
        lost.iter().filter(|id| !dead.contains(id) && !mentioned(id)).copied().collect();
    outcome.reported = lost.len() - unreported.len();
    let damaged_keys = report["pending"]["damaged"].as_u64().unwrap_or(0) as usize;
    // Events past a point the host cannot read its pending rows beyond stay pending, when the
    // host says so: `/readyz` 503 naming the plugin and the point (and an ERROR line), or an
    // ERROR line where verify names the table and the point (salvage makes them dead letters).
    let readyz = host.admin_request("GET", "/readyz");
    let host_point = (readyz.status == 503).then(|| stuck_point(&readyz.body)).flatten();
    let verify_point = problems
        .iter()
        .find_map(|p| after_number(p, "pending rows of probe after event "))
        .filter(|_| {
            problems.iter().any(|p| p.starts_with("table pending: unreadable"))
                && log.contains("unreadable past a point")
        });
    let point = host_point.into_iter().chain(verify_point).min();
    let (behind, before): (Vec<u64>, Vec<u64>) =
        unreported.iter().partition(|id| point.is_some_and(|p| **id > p));
    assert!(
        before.len() <= damaged_keys,
        "{name}: {} events lost without a word: {before:?}\nverify: {problems:?}\nreadyz: {}\nlog: {}",
        before.len(),
        readyz.body,
        log.lines().filter(|l| l.contains("ERROR")).take(8).collect::<Vec<_>>().join("\n")
    );
    if !behind.is_empty() {
        assert!(log.contains("ERROR"), "{name}: stuck without an ERROR line");
    }
    if !dead.is_empty() {
        // A damaged record, or a pending row found under another key (a flipped bit in its
        // key: "pending row damaged: found under event N"; with the records in the event
        // files a redb flip can make that the only dead letter, CI's seed 22).
        assert!(
            log.contains("record damaged")
                || log.contains("record missing")
                || log.contains("pending row damaged: found under event"),
            "{name}: dead letters {dead:?} without an ERROR line:\n{}",
            log.lines().filter(|l| l.contains("ERROR")).take(8).collect::<Vec<_>>().join("\n")
        );
        assert!(!metrics.contains("b24_journal_damaged_records_total 0\n"), "{name}: {metrics}");
    }
    assert!(!log.contains("panicked at"), "{name}: the host panicked:\n{log}");
    assert!(host.stop(), "{name}: the host must stop cleanly");
    assert_eq!(outcome.changed, 0, "{name}: changed events were delivered");
    assert!(
        outcome.salvaged as usize >= outcome.delivered_unchanged,
        "{name}: salvage recovered {} events, fewer than the host could deliver ({}):\n{salvage_text}",
        outcome.salvaged,
        outcome.delivered_unchanged
    );
    eprintln!(
        "damage {name}: {outcome:?}; unreported {:?}, {} of them past event {point:?}, where \
         the host cannot read on and says so",
        unreported.iter().take(20).collect::<Vec<_>>(),
        behind.len()
    );
    outcome
}

/// The number that follows `prefix` in `text`, if `text` holds it.
fn after_number(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// Where `/readyz` says the probe's pending events cannot be read beyond: the event after which
/// (0 when it names no point: none can be read), if it says so.
fn stuck_point(readyz: &str) -> Option<u64> {
    let reason = &readyz[readyz.find("the pending events of plugin probe cannot be read (")?..];
    after_number(reason, "(after event ")
        .or_else(|| after_number(reason, "(a scan ends at event "))
        .or(Some(0))
}

/// The event ids the probe was called with.
fn delivered_ids(dir: &HostDir) -> BTreeSet<u64> {
    dir.read_lines_lenient("probe.jsonl").iter().filter_map(|l| l["event_id"].as_u64()).collect()
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

/// The seeds to run: `B24_DAMAGE_SEEDS=1,2,..` if set, else `default`.
fn seeds(default: &[u64]) -> Vec<u64> {
    std::env::var("B24_DAMAGE_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn an_undamaged_stock_delivers_everything_and_verifies_clean() {
    let dir = copy_of_stock();
    let outcome = after_attack("none", &dir);
    assert_eq!(outcome.delivered_unchanged as u64, EVENTS);
}

#[test]
fn a_journal_truncated_to_zero_is_refused_with_what_to_do() {
    let dir = copy_of_stock();
    truncate(&journal_file(&dir), 0);
    let outcome = after_attack("truncate-0", &dir);
    let refused = outcome.refused.expect("an emptied journal must be refused");
    assert!(refused.contains("is empty") && refused.contains("journal.mark"), "{refused}");
}

#[test]
fn a_journal_deleted_is_refused_with_what_to_do() {
    let dir = copy_of_stock();
    std::fs::remove_file(journal_file(&dir)).unwrap();
    let e = dir.start().err().expect("a missing journal must be refused");
    assert!(e.contains("is missing") && e.contains("up to id"), "{e}");
}

#[test]
fn a_journal_truncated_by_half_or_by_4k_never_panics_and_loses_nothing_silently() {
    for (name, cut) in [("truncate-half", 2), ("truncate-4k", 0)] {
        let dir = copy_of_stock();
        let path = journal_file(&dir);
        let len = file_len(&path);
        truncate(&path, if cut == 2 { len / 2 } else { len.saturating_sub(4096) });
        after_attack(name, &dir);
    }
}

/// Seeds 1-4, and the seeds above them that found a loss (the stocked journal's layout differs
/// from run to run, so a seed hits the same structure often, not always): 8, 11 and 22 a
/// damaged entry of the events table that ended salvage's reading of it; 11 also a first write
/// that hit damaged allocator state, after which the host reads nothing more and says so in
/// `/readyz`; 14 a damaged key in the pending table's index that sent the consumer's search
/// past 524 rows without a word; 22 also dead letters that `journal dead` stopped listing at a
/// damaged record; 8 also a leaf of the pending table that every scan (the host's, verify's)
/// passed by without an error, its 35 events neither delivered nor reported (verify now names
/// each event that is not complete and that no row holds); 27 a damaged index that the host's
/// own deletes spread until every search for the rows after event 256 went past 374 of them,
/// the walk back too (the consumer now reads the table from its start when a gap's events are
/// pending with no row a look-up finds; the journal is kept as a unit test's fixture); 47 an
/// index the host's deletes spread until the seek for the next plugin name landed on the same
/// name for ever, the tables' thread spinning and `journal dead` hanging (kept the same way).
#[test]
fn bit_flips_never_deliver_a_changed_event() {
    for seed in seeds(&[1, 2, 3, 4, 8, 11, 14, 22]) {
        let dir = copy_of_stock();
        let path = journal_file(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for _ in 0..64 {
            let at = (next_random(&mut state) % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (next_random(&mut state) % 8);
        }
        std::fs::write(&path, bytes).unwrap();
        after_attack(&format!("bit-flips seed {seed}"), &dir);
    }
}

/// The event files (`state/events/`), where the rows point at the records: `file` picks them.
fn event_files(dir: &HostDir) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("state/events"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Bits flipped in the event files instead of `journal.redb`: a record whose frame no longer
/// matches its CRC (or whose frame names another event) is a dead letter, never a changed
/// delivery; verify names it and salvage copies the rest.
#[test]
fn bit_flips_in_the_event_files_never_deliver_a_changed_event() {
    for seed in seeds(&[1, 2]) {
        let dir = copy_of_stock();
        let files = event_files(&dir);
        assert!(!files.is_empty(), "the stock wrote no event files");
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for path in &files {
            let mut bytes = std::fs::read(path).unwrap();
            for _ in 0..16 {
                let at = (next_random(&mut state) % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (next_random(&mut state) % 8);
            }
            std::fs::write(path, bytes).unwrap();
        }
        let outcome = after_attack(&format!("event-file bit-flips seed {seed}"), &dir);
        assert!(outcome.lost > 0 && outcome.lost <= 32, "{outcome:?}");
        assert_eq!(outcome.lost, outcome.reported, "{outcome:?}");
    }
}

/// The event files deleted (or a folder not carried over in a restore): the host refuses to
/// start, naming the file and what to do, as for a journal cut short; verify names every
/// event whose record is gone.
#[test]
fn event_files_deleted_are_refused_with_what_to_do() {
    let dir = copy_of_stock();
    for path in event_files(&dir) {
        std::fs::remove_file(path).unwrap();
    }
    let outcome = after_attack("event files deleted", &dir);
    let refused = outcome.refused.clone().expect("a journal without its event files is refused");
    assert!(refused.contains("is missing") && refused.contains("event files"), "{refused}");
    assert_eq!(outcome.lost, outcome.reported, "{outcome:?}");
}

#[test]
fn zeroed_pages_never_deliver_a_changed_event() {
    for seed in 1..=2u64 {
        let dir = copy_of_stock();
        let path = journal_file(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        let pages = bytes.len() / 4096;
        let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        for _ in 0..4 {
            let page = (next_random(&mut state) % pages as u64) as usize;
            bytes[page * 4096..(page + 1) * 4096].fill(0);
        }
        std::fs::write(&path, bytes).unwrap();
        after_attack(&format!("zeroed-pages seed {seed}"), &dir);
    }
}

/// Two entries of the events table damaged so that the storage library fails on each (the end
/// of the record's bytes, in its leaf's header, put past the page: what bit-flip seeds 8, 11
/// and 22 hit in some runs). The host makes both dead letters and delivers the rest; salvage
/// stopped reading the table at the first (reading fewer events than the host delivered), and
/// `journal dead` stopped listing at it (the second looked lost without a word).
#[test]
fn damaged_entries_of_the_events_table_leave_salvage_and_the_dead_letters_whole() {
    let stock = stock();
    let dir = copy_of_stock();
    let path = journal_file(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    for &id in stock.posted.keys().filter(|id| [50, 60].contains(*id)) {
        // Every leaf holding the event's id: the events table's (its row points into the
        // event files, or holds the record) and any older copy of it.
        let leaves = leaves_holding(&bytes, id);
        assert!(!leaves.is_empty(), "no leaf holds event {id}");
        for (page, keys_end) in leaves {
            let past = (keys_end - page + 2 * 4096) as u32;
            bytes[page + 4..page + 8].copy_from_slice(&past.to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).unwrap();
    let outcome = after_attack("events-entries", &dir);
    assert!(outcome.delivered_unchanged as u64 >= EVENTS - 4, "{outcome:?}");
}

/// The leaves of redb's pages in `bytes` whose u64 keys include `id`: each page's offset and
/// where its keys end. A leaf is `[1][_][entries u16][value ends u32..][keys u64..][values]`.
fn leaves_holding(bytes: &[u8], id: u64) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for page in (0..bytes.len().saturating_sub(4096)).step_by(4096) {
        let n = usize::from(u16::from_le_bytes([bytes[page + 2], bytes[page + 3]]));
        let keys = page + 4 + 4 * n;
        let holds = (0..n)
            .any(|i| bytes.get(keys + 8 * i..keys + 8 * i + 8) == Some(&id.to_le_bytes()[..]));
        if bytes[page] == 1 && holds {
            found.push((page, keys + 8 * n));
        }
    }
    found
}

/// Whole leaves of the `events` table zeroed (each holds about a hundred rows that point into
/// the event files): the host refuses to start or makes those events dead letters, and salvage
/// still recovers every record, from the event files, where each is sound (damage seed 243:
/// salvage read 1,985 of 2,000 events, fewer than the host delivered).
#[test]
fn zeroed_leaves_of_the_events_table_lose_no_record_to_salvage() {
    let stock = stock();
    let dir = copy_of_stock();
    let path = journal_file(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut zeroed = 0;
    for &id in stock.posted.keys().filter(|id| [50, 1500].contains(*id)) {
        for (page, _) in leaves_holding(&bytes, id) {
            bytes[page..page + 4096].fill(0);
            zeroed += 1;
        }
    }
    assert!(zeroed > 0, "no leaf of the events table found");
    std::fs::write(&path, bytes).unwrap();
    let outcome = after_attack("events-leaves-zeroed", &dir);
    assert_eq!(outcome.salvaged, EVENTS, "{outcome:?}");
}

/// A flipped bit in a key of the pending table's index (its branch pages, found by the probe's
/// row keys in them): the search for where the host's next batch of rows starts lands past
/// rows that are there, and nothing fails (what bit-flip seed 14 hit in some runs: 524 events
/// neither delivered nor dead letters, `/readyz` ready). Bit 8 is cleared in the keys between
/// the first batch's end (256 rows) and 512, so the second batch's search goes astray.
#[test]
fn a_damaged_key_in_the_pending_index_hides_no_row() {
    let dir = copy_of_stock();
    let path = journal_file(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut damaged = 0;
    for page in (0..bytes.len()).step_by(4096) {
        if bytes[page] != 2 {
            continue;
        }
        for at in page..page + 4096 - 14 {
            let id = u64::from_le_bytes(bytes[at + 6..at + 14].try_into().unwrap());
            if bytes[at..at + 6] == *b"\x05probe" && (258..512).contains(&id) {
                bytes[at + 7] ^= 1;
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0, "no index page of the pending table holds such a key");
    std::fs::write(&path, bytes).unwrap();
    let outcome = after_attack("pending-index-key", &dir);
    assert_eq!(outcome.delivered_unchanged as u64, EVENTS, "{outcome:?}");
}

/// Events posted into the journal of the host killed below.
const KILLED_EVENTS: u64 = 1_500;
/// Its first field id.
const KILLED_FIRST: u64 = 300_000;

/// A folder whose host was killed (SIGKILL, so the file was never closed cleanly and redb must
/// repair it to open it) holding `KILLED_EVENTS` pending events; journal id -> field id.
fn killed_stock() -> &'static Stock {
    static STOCK: OnceLock<Stock> = OnceLock::new();
    STOCK.get_or_init(|| {
        let dir = HostDir::new(&["probe"]);
        dir.write_config(&config(&["probe"], &probe("", "sleep_ms = 60000")));
        let host = start(&dir);
        let mut posted = BTreeMap::new();
        for field in KILLED_FIRST..KILLED_FIRST + KILLED_EVENTS {
            let answer = host.post_form(&field_event(field, &field_name(field)));
            assert_eq!(answer.status, 200, "{answer:?}");
            posted
                .insert(answer.body.trim_start_matches("accepted ").parse::<u64>().unwrap(), field);
        }
        host.kill();
        Stock { dir, posted }
    })
}

/// After a crash and damage the storage library cannot open the journal: the host refuses to
/// start, and `journal salvage` reads the events from the file's pages (every record carries
/// its checksum) into a new journal, on which a host delivers them unchanged.
#[test]
fn salvage_reads_the_events_of_a_journal_the_storage_library_refuses_from_its_pages() {
    let stock = killed_stock();
    for (name, header_gone) in [("header zeroed", true), ("bit flips", false)] {
        let dir = HostDir::new(&["probe"]);
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        copy_journal(&stock.dir, &dir);
        dir.write_config(&config(&["probe"], &probe("", "")));
        let path = journal_file(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        if header_gone {
            bytes[..4096].fill(0);
        } else {
            // Bits flipped until redb's repair gives up on the file (the usual fate of a
            // crashed, damaged journal); the seed that first does is kept.
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for _ in 0..16 {
                let at = (next_random(&mut state) % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (next_random(&mut state) % 8);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let refused = dir.start().err();
        if !header_gone && refused.is_none() {
            eprintln!("salvage {name}: the host opened the damaged file; nothing to salvage");
            continue;
        }
        let refused = refused.unwrap_or_default();
        assert!(refused.contains("journal salvage"), "{name}: {refused}");
        let salvage = dir.run_cli(&[
            "journal",
            "salvage",
            "--to",
            "salvaged.redb",
            "--config",
            "host.toml",
            "--json",
        ]);
        let text = String::from_utf8_lossy(&salvage.stdout).into_owned()
            + &String::from_utf8_lossy(&salvage.stderr);
        no_panic("journal salvage", &salvage.status, &text);
        let report: serde_json::Value = serde_json::from_slice(&salvage.stdout).unwrap_or_default();
        let recovered = report["events"]["readable"].as_u64().unwrap_or(0);
        eprintln!("salvage {name}: {recovered} of {KILLED_EVENTS} events recovered\n{text}");
        assert!(
            recovered >= KILLED_EVENTS * 95 / 100,
            "{name}: salvage recovered {recovered} of {KILLED_EVENTS} events:\n{text}"
        );
        // The salvaged journal in place: a host starts on it and delivers what was posted.
        std::fs::rename(dir.path().join("salvaged.redb"), &path).unwrap();
        let host = start(&dir);
        let settled = eventually(PATIENCE * 3, || {
            delivered_ids(&dir).len() + dead_ids(&dir).len() >= recovered as usize
        });
        let mut unchanged = 0;
        for line in dir.read_lines("probe.jsonl").iter().filter(|l| l["kind"] == "user_field") {
            let id = line["event_id"].as_u64().unwrap();
            let field = stock.posted.get(&id).copied();
            assert!(
                field.is_some()
                    && line["field_id"].as_u64() == field
                    && line["field_name"].as_str() == field.map(field_name).as_deref(),
                "{name}: a changed or unknown event was delivered: {line}"
            );
            unchanged += 1;
        }
        assert!(
            settled,
            "{name}: {unchanged} delivered of {recovered} salvaged:\n{}",
            host.log_text()
        );
        assert!(host.stop(), "{name}: the host must stop cleanly");
    }
}
