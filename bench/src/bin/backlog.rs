//! `backlog`: writes a stopped host's journal holding a backlog, for `bench/load.sh` point (6)
//! (issue 20: intake must cost the same with 0 or 1,000,000 events pending for some plugin).
//!
//! Creates `STATE/journal.redb` (STATE must not hold one) with `--pending` events, each a
//! journal record of the body in `--body` (as `b24-host send --print` writes it), pending for
//! `--plugin`, received an hour ago, written with the host's own store code in transactions of
//! 10,000 events: what a plugin enabled without its library (or hung, or disabled since)
//! leaves behind after a long outage, made in seconds instead of hours of posting.
//!
//!     backlog --state DIR --body FILE [--pending N] [--plugin NAME]

use std::{path::PathBuf, sync::Arc};

use b24_host::journal::{
    EventMeta, EventRecord, Source, dedup,
    embedded::{FILE_NAME, store},
    record::Format,
};
use bytes::Bytes;

fn main() {
    let mut state = None;
    let mut body = None;
    let mut pending: u64 = 100_000;
    let mut plugin = "ghost".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--state" => state = Some(PathBuf::from(value())),
            "--body" => body = Some(PathBuf::from(value())),
            "--pending" => {
                pending = value().parse().unwrap_or_else(|_| usage("--pending: a count"))
            }
            "--plugin" => plugin = value(),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let state = state.unwrap_or_else(|| usage("--state is required"));
    let body = body.unwrap_or_else(|| usage("--body is required"));
    let raw = Bytes::from(
        std::fs::read(&body).unwrap_or_else(|e| usage(&format!("{}: {e}", body.display()))),
    );
    std::fs::create_dir_all(&state).expect("create the state folder");
    let path = state.join(FILE_NAME);
    if path.exists() {
        usage(&format!("{} exists", path.display()));
    }
    let database = store::open(&path).expect("open the journal");
    let at = b24_host::journal::now_ms() - 3_600_000;
    let plugins: Vec<Arc<str>> = vec![Arc::from(plugin.as_str())];
    let started = std::time::Instant::now();
    let mut id = 1;
    while id <= pending {
        let txn = database.begin_write().expect("begin");
        {
            let mut tables = store::Tables::open(&txn).expect("tables");
            let end = (id + 10_000).min(pending + 1);
            for n in id..end {
                let key = dedup::key_of(&[b"backlog", &n.to_le_bytes()]);
                let record = EventRecord {
                    meta: EventMeta {
                        received_at_ms: at,
                        format: Format::Form,
                        source: Source::Online,
                        code: "ONCRMDEALUSERFIELDUPDATE".into(),
                        member_id: "a223c6b3710f85df22e9377d6c4f7553".into(),
                        domain: "example.bitrix24.com".into(),
                        dedup_key: dedup::hex(&key),
                        extra: vec![],
                        user_field: None,
                    },
                    raw: raw.clone(),
                };
                tables.insert_event(n, &record, &plugins).expect("insert");
            }
            id = end;
            tables.set_next_id(id).expect("next id");
        }
        txn.commit().expect("commit");
    }
    eprintln!(
        "backlog: {} events pending for {plugin} in {} ({:.1} s)",
        pending,
        path.display(),
        started.elapsed().as_secs_f64()
    );
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "backlog: {problem}\nusage: backlog --state DIR --body FILE [--pending N] [--plugin NAME]"
    );
    std::process::exit(2);
}
