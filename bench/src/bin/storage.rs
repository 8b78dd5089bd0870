//! `storage`: the durable write of the embedded journal, measured apart from HTTP, on three
//! candidates (issue 13: "measure redb tuned, fjall and any other candidate on the real
//! workload before choosing"):
//!
//! - `redb`: what the journal does today: one write transaction per batch, the event record
//!   into `events` (u64 key) and one pending row per plugin into `pending` ((plugin, id) key),
//!   committed with `Durability::Immediate` (the commit's fsyncs);
//! - `fjall`: an LSM tree; the same rows in two keyspaces, one atomic batch per batch of events,
//!   then `persist(SyncData)` (one fdatasync of its journal);
//! - `redb-nosync`: the same with `Durability::None`: the B-tree's own cost, without a sync
//!   (not durable: shown to split redb's cost into its fsyncs and the rest);
//! - `append`: a hand-written append-only file: length, CRC-32 and record per event, one
//!   `fdatasync` per batch (the floor: no index at all).
//!
//! Each candidate first receives `--prefill` events (so a B-tree is as deep as a working
//! journal's), then `--events` more in batches of each size given, one writer thread, as the
//! group commit hands them over. Printed per candidate and batch size: events/s, wall time per
//! batch, and CPU per event (user + system of this process from getrusage: the fsync wait is
//! not CPU). The workload with plugins also deletes each event's pending rows in a later batch
//! without a sync, as outcomes do.
//!
//!     cargo run --release -p b24-bench --features storage --bin storage -- [--events N]
//!         [--prefill N] [--dir D] [--record-bytes B] [--batches 1,8,64] [--only redb,fjall]

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use redb::{Database, Durability, TableDefinition};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pending");
const PLUGINS: [&str; 2] = ["audit-log", "probe"];
static RECORD_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(860);

/// A record the size of the journal's for a user-field event (metadata JSON + form body).
fn record(id: u64) -> Vec<u8> {
    let size = RECORD_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let mut r = format!(
        "{{\"v\":1,\"id\":{id},\"received_at_ms\":1764600000000,\"format\":\"form\",\
         \"code\":\"ONCRMDEALUSERFIELDUPDATE\",\"member_id\":\"a223c6b3710f85df22e9377d6c4f7553\"}}\n"
    )
    .into_bytes();
    let body = format!(
        "event=ONCRMDEALUSERFIELDUPDATE&event_handler_id=7&data%5BFIELDS%5D%5BID%5D={id}&\
         data%5BFIELDS%5D%5BENTITY_ID%5D=CRM_DEAL&data%5BFIELDS%5D%5BFIELD_NAME%5D=UF_CRM_{id}&\
         ts=1764600000&auth%5Bdomain%5D=example.bitrix24.com&auth%5Bclient_endpoint%5D=https%3A%2F%2F\
         example.bitrix24.com%2Frest%2F&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2F\
         rest%2F&auth%5Bmember_id%5D=a223c6b3710f85df22e9377d6c4f7553&auth%5Bapplication_token%5D=\
         51856fefc120afa4b628cc82d3935cce"
    );
    r.extend_from_slice(body.as_bytes());
    // The size of a journal record of `b24-host send --print`'s body (metadata ~200 bytes +
    // a 655-byte form body), unless `--record-bytes` says otherwise.
    r.resize(size, b'x');
    r
}

fn cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

trait Candidate {
    fn append(&mut self, ids: std::ops::Range<u64>, sync: bool);
    fn complete(&mut self, ids: std::ops::Range<u64>);
}

/// redb; `.1` false: every commit `Durability::None` (what the B-tree costs without its fsync).
struct Redb(Database, bool);

impl Candidate for Redb {
    fn append(&mut self, ids: std::ops::Range<u64>, sync: bool) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(if sync && self.1 { Durability::Immediate } else { Durability::None })
            .expect("durability");
        {
            let mut events = txn.open_table(EVENTS).expect("events");
            let mut pending = txn.open_table(PENDING).expect("pending");
            for id in ids {
                events.insert(id, record(id).as_slice()).expect("insert");
                for p in PLUGINS {
                    pending.insert((p, id), &b"{}"[..]).expect("insert");
                }
            }
        }
        txn.commit().expect("commit");
    }

    fn complete(&mut self, ids: std::ops::Range<u64>) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(Durability::None).expect("durability");
        {
            let mut pending = txn.open_table(PENDING).expect("pending");
            for id in ids {
                for p in PLUGINS {
                    pending.remove((p, id)).expect("remove");
                }
            }
        }
        txn.commit().expect("commit");
    }
}

struct Fjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    pending: fjall::Keyspace,
}

fn pending_key(plugin: &str, id: u64) -> Vec<u8> {
    let mut k = plugin.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Candidate for Fjall {
    fn append(&mut self, ids: std::ops::Range<u64>, sync: bool) {
        let mut batch = self.db.batch();
        for id in ids {
            batch.insert(&self.events, id.to_be_bytes(), record(id));
            for p in PLUGINS {
                batch.insert(&self.pending, pending_key(p, id), b"{}");
            }
        }
        batch.commit().expect("commit");
        if sync {
            self.db.persist(fjall::PersistMode::SyncData).expect("persist");
        }
    }

    fn complete(&mut self, ids: std::ops::Range<u64>) {
        let mut batch = self.db.batch();
        for id in ids {
            for p in PLUGINS {
                batch.remove(&self.pending, pending_key(p, id));
            }
        }
        batch.commit().expect("commit");
    }
}

struct Append {
    file: std::fs::File,
    at: u64,
}

impl Candidate for Append {
    fn append(&mut self, ids: std::ops::Range<u64>, sync: bool) {
        let mut buf = Vec::new();
        for id in ids {
            let r = record(id);
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&r).to_le_bytes());
            buf.extend_from_slice(&r);
        }
        self.file.write_all_at(&buf, self.at).expect("write");
        self.at += buf.len() as u64;
        if sync {
            self.file.sync_data().expect("fdatasync");
        }
    }

    fn complete(&mut self, ids: std::ops::Range<u64>) {
        // Outcomes as 9-byte marks appended without a sync.
        let mut buf = Vec::new();
        for id in ids {
            buf.push(b'D');
            buf.extend_from_slice(&id.to_le_bytes());
        }
        self.file.write_all_at(&buf, self.at).expect("write");
        self.at += buf.len() as u64;
    }
}

fn open(kind: &str, dir: &Path) -> Box<dyn Candidate> {
    match kind {
        "redb" | "redb-nosync" => {
            let db = Database::builder()
                .set_cache_size(64 << 20)
                .create(dir.join("journal.redb"))
                .expect("redb");
            Box::new(Redb(db, kind == "redb"))
        }
        "fjall" => {
            let db = fjall::Database::builder(dir.join("fjall")).open().expect("fjall");
            let events =
                db.keyspace("events", fjall::KeyspaceCreateOptions::default).expect("events");
            let pending =
                db.keyspace("pending", fjall::KeyspaceCreateOptions::default).expect("pending");
            Box::new(Fjall { db, events, pending })
        }
        "append" => {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.join("journal.log"))
                .expect("file");
            let mut f = Append { file, at: 0 };
            f.file.write_all(b"").expect("write");
            f.at = 0;
            Box::new(f)
        }
        other => panic!("unknown candidate {other}"),
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = arg(&args, "--events").and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let prefill: u64 = arg(&args, "--prefill").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let base: PathBuf = arg(&args, "--dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    if let Some(bytes) = arg(&args, "--record-bytes").and_then(|v| v.parse().ok()) {
        RECORD_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    let only: Option<String> = arg(&args, "--only");
    let batches: Vec<u64> = arg(&args, "--batches")
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64]);
    println!(
        "{:<11} {:>6} {:>11} {:>14} {:>13}   ({events} events after {prefill} prefilled; 2 \
         pending rows each, completed a batch later without a sync)",
        "store", "batch", "events/s", "us/batch wall", "CPU us/event"
    );
    for kind in ["redb", "redb-nosync", "fjall", "append"] {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|k| k == kind)) {
            continue;
        }
        for &batch in &batches {
            let dir =
                tempfile::Builder::new().prefix("b24-storage").tempdir_in(&base).expect("dir");
            let mut store = open(kind, dir.path());
            let mut next = 1u64;
            while next <= prefill {
                let end = (next + 1_000).min(prefill + 1);
                store.append(next..end, false);
                store.complete(next..end);
                next = end;
            }
            // Batch 1 writes fewer events: one fsync each takes long.
            let n = if batch == 1 { events / 10 } else { events };
            let (cpu0, t0) = (cpu(), Instant::now());
            let mut last: Option<std::ops::Range<u64>> = None;
            let stop = next + n;
            while next < stop {
                let end = (next + batch).min(stop);
                store.append(next..end, true);
                if let Some(done) = last.take() {
                    store.complete(done);
                }
                last = Some(next..end);
                next = end;
            }
            let (wall, used) = (t0.elapsed(), cpu() - cpu0);
            let batches_run = n.div_ceil(batch);
            println!(
                "{kind:<11} {batch:>6} {:>11.0} {:>14.0} {:>13.1}",
                n as f64 / wall.as_secs_f64(),
                wall.as_micros() as f64 / batches_run as f64,
                used.as_micros() as f64 / n as f64
            );
            drop(store);
        }
    }
}
