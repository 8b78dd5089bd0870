//! Publishing an accepted event to the log: `Nats-Msg-Id` = the duplicate key, the quorum's
//! acknowledgement awaited at most `ack_timeout_ms`, else the spool (`spool.rs`).
//!
//! STUB: to be written (issue 12, item 2 and 3).

use std::{path::Path, sync::Arc};

use super::connect::Link;
use crate::config::JournalConfig;
use crate::journal::{Appended, StoreError, dedup::DedupKey, record::EventRecord};

/// The append path's state.
pub(super) struct Appender {}

fn unbuilt() -> StoreError {
    StoreError::Refused("the NATS backend's append path is not built yet".into())
}

impl Appender {
    /// Opens the spool in `state_dir` and starts forwarding what it holds.
    pub async fn open(
        state_dir: &Path,
        config: &JournalConfig,
        link: &Link,
    ) -> Result<(Appender, std::thread::JoinHandle<()>), StoreError> {
        let _ = (state_dir, config, link);
        Err(unbuilt())
    }

    /// No spool: for a `journal` command.
    pub fn for_command(link: &Link) -> (Appender, std::thread::JoinHandle<()>) {
        let _ = link;
        (Appender {}, std::thread::spawn(|| {}))
    }

    pub fn last_error(&self) -> Option<String> {
        None
    }

    pub fn spool_bytes(&self) -> Option<u64> {
        None
    }

    pub async fn append(
        &self,
        link: &Link,
        record: Box<EventRecord>,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
        permanent: bool,
    ) -> Result<Appended, StoreError> {
        let _ = (link, record, key, plugins, permanent);
        Err(unbuilt())
    }

    pub async fn flush(&self) {}

    pub async fn finish(&self, link: &Link) {
        let _ = link;
    }
}
