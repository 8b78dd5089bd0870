//! The in-flight record of an in-process plugin: which event each of its lanes is calling, kept
//! where it survives the host's death, so that the next start can count a crash for that
//! (plugin, event) before it delivers anything (see [`super::crash`]).
//!
//! The record is a small file per plugin, `state_dir/inflight/<plugin>.slots`, mapped into
//! memory (shared mapping): an 8-byte magic, then one 8-byte slot per lane holding the id of the
//! event being called (0 = idle). A lane claims a free slot before the call and clears it after
//! ([`Inflight::mark`]): two atomic stores into the page cache, no system call, no fsync. The
//! kernel keeps the page when the process dies however it dies (abort, SIGSEGV, SIGKILL,
//! `exit`), so the next start reads what was running; only a machine crash loses it, and then
//! the event is simply delivered again. A graceful shutdown lets every call finish, which leaves
//! the record clear.
//!
//! At start [`recover`] reads the record, counts one crash for each event found (the pending
//! row's `crashes`, a dead letter at `max_crashes` with "the host died while plugin P handled
//! it, N times"), makes that durable, and only then clears the record. Which lane brought the
//! process down is not known, so with several lanes every event in flight counts a crash.
//! Plugins with process isolation do not use it: the host sees their runner die.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use memmap2::MmapMut;

use super::crash::{self, after_crash};
use crate::{
    config::{Isolation, PluginConfig},
    journal::{Log, Reporter, StoreError},
    metrics::{Metrics, PluginLabel},
};

/// The folder of the records, inside the state folder.
pub const DIR: &str = "inflight";

/// The first 8 bytes of a record file.
const MAGIC: u64 = u64::from_le_bytes(*b"B24INFL1");

/// Slots in a record at least (more when `concurrency` asks for more lanes).
const MIN_SLOTS: usize = 64;

/// One plugin's in-flight record, or none (a plugin with process isolation).
pub struct Inflight {
    map: Option<MmapMut>,
    slots: usize,
}

impl Inflight {
    /// No record: marks do nothing.
    pub fn off() -> Inflight {
        Inflight { map: None, slots: 0 }
    }

    /// The path of `plugin`'s record.
    pub fn path(state_dir: &Path, plugin: &str) -> PathBuf {
        state_dir.join(DIR).join(format!("{plugin}.slots"))
    }

    /// Opens (creating if needed) `plugin`'s record with room for `lanes` lanes, and returns it
    /// with the event ids its slots held: the calls that were running when the previous process
    /// ended. The slots are left as they were: [`Inflight::clear`] once they are accounted for.
    pub fn open(state_dir: &Path, plugin: &str, lanes: usize) -> io::Result<(Inflight, Vec<u64>)> {
        let path = Inflight::path(state_dir, plugin);
        let dir = path.parent().unwrap_or(state_dir);
        std::fs::create_dir_all(dir)?;
        let file = {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                options.mode(0o600);
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
            options.open(&path)?
        };
        let slots = lanes.max(MIN_SLOTS);
        let wanted = 8 * (1 + slots) as u64;
        if file.metadata()?.len() < wanted {
            file.set_len(wanted)?;
        }
        // SAFETY: the file is the host's own (state folder 0700, file 0600); the map is only
        // ever accessed as aligned atomic words, never through references to its bytes.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let record = Inflight { slots: map.len() / 8 - 1, map: Some(map) };
        let mut found = Vec::new();
        if record.word(0).load(Ordering::Acquire) == MAGIC {
            for slot in 1..=record.slots {
                let id = record.word(slot).load(Ordering::Acquire);
                if id != 0 && !found.contains(&id) {
                    found.push(id);
                }
            }
        }
        Ok((record, found))
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        let map = self.map.as_ref().expect("only called with a map");
        debug_assert!(index * 8 + 8 <= map.len());
        // SAFETY: the map is page-aligned and at least `8 * (1 + slots)` bytes long, so the
        // word is in bounds and aligned; it lives as long as `self`, and every access to the
        // mapping goes through these atomics.
        unsafe { &*map.as_ptr().add(index * 8).cast::<AtomicU64>() }
    }

    /// Clears every slot and writes the magic: nothing is in flight.
    pub fn clear(&self) {
        if self.map.is_none() {
            return;
        }
        for slot in 1..=self.slots {
            self.word(slot).store(0, Ordering::Release);
        }
        self.word(0).store(MAGIC, Ordering::Release);
    }

    /// Records that event `id` is being called until the guard drops. With every slot taken
    /// (more lanes than slots, which `open` prevents) the call goes unrecorded.
    pub fn mark(&self, id: u64) -> Mark<'_> {
        if self.map.is_some() && id != 0 {
            for slot in 1..=self.slots {
                let word = self.word(slot);
                if word.compare_exchange(0, id, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
                    return Mark { record: self, slot };
                }
            }
        }
        Mark { record: self, slot: 0 }
    }
}

/// An event marked in flight; clears its slot on drop.
pub struct Mark<'a> {
    record: &'a Inflight,
    slot: usize,
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        if self.slot != 0 {
            self.record.word(self.slot).store(0, Ordering::Release);
        }
    }
}

/// What the start-up accounting did to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// One more crash counted; delivered again.
    Counted {
        /// The event.
        id: u64,
        /// Crashes counted so far.
        crashes: u32,
    },
    /// `max_crashes` reached: now a dead letter of the plugin.
    Buried {
        /// The event.
        id: u64,
        /// The dead letter's reason.
        reason: String,
    },
}

/// Counts a crash of `plugin` for each event of `ids` (found in its record at start) that is
/// still pending for it, through [`after_crash`], reported with `reporter`; returns once that
/// is durable. Events no longer pending (finished, or skipped by an operator) are left alone.
pub async fn recover(
    journal: &Log,
    reporter: &Reporter,
    plugin: &str,
    ids: &[u64],
    max_crashes: u32,
) -> Result<Vec<Recovered>, StoreError> {
    let mut out = Vec::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let cause = format!("the host died while plugin {plugin} handled it");
    for &id in ids {
        let Some(pending) = journal.pending(plugin, id).await? else { continue };
        let verdict = after_crash(&pending, &cause, max_crashes);
        let result = match &verdict {
            crash::CrashVerdict::Again(next) => Recovered::Counted { id, crashes: next.crashes },
            crash::CrashVerdict::Bury(dead) => {
                Recovered::Buried { id, reason: dead.reason.clone() }
            }
        };
        // The call's start and length died with the host: the attempt shows when it was found.
        crash::report(reporter, id, verdict, "crashed", crate::journal::now_ms(), 0);
        out.push(result);
    }
    // The count must outlive the next crash, or a poison event would loop for ever.
    journal.flush().await;
    Ok(out)
}

/// The records this process opened, one per plugin: read and accounted for once, when the
/// plugin first starts in this process (a plugin disabled and enabled again keeps its record,
/// whose slots its old lanes may still hold).
#[derive(Default)]
pub struct Records {
    open: Mutex<HashMap<String, Arc<Inflight>>>,
}

impl Records {
    /// The record of `plugin` (off unless it runs in-process), and what the previous process
    /// left in it when this is its first start in this process (`None` otherwise).
    pub fn get(
        &self,
        state_dir: &Path,
        plugin: &str,
        config: &PluginConfig,
    ) -> (Arc<Inflight>, Option<Vec<u64>>) {
        if config.isolation != Isolation::InProcess {
            return (Arc::new(Inflight::off()), None);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = open.get(plugin) {
            return (record.clone(), None);
        }
        match Inflight::open(state_dir, plugin, config.concurrency) {
            Ok((record, found)) => {
                let record = Arc::new(record);
                open.insert(plugin.to_owned(), record.clone());
                (record, Some(found))
            }
            Err(e) => {
                let path = Inflight::path(state_dir, plugin);
                tracing::error!(
                    plugin,
                    "cannot open the in-flight record {}: {e}; a crash of the host in this plugin will not be counted",
                    path.display()
                );
                (Arc::new(Inflight::off()), None)
            }
        }
    }
}

/// What a plugin's worker does before it delivers anything: account for what the previous
/// process left in the plugin's record, then clear it.
pub struct Startup {
    /// The journal.
    pub journal: Log,
    /// The plugin's reporter.
    pub reporter: Reporter,
    /// The plugin.
    pub plugin: String,
    /// Its record.
    pub record: Arc<Inflight>,
    /// What the record held (`None`: nothing to do).
    pub found: Option<Vec<u64>>,
    /// `plugin.<name>.max_crashes`.
    pub max_crashes: u32,
    /// For the dead-letter counter.
    pub metrics: Arc<Metrics>,
}

impl Startup {
    /// Counts the crashes, durably, then clears the record.
    pub async fn run(self) {
        let Some(found) = self.found else { return };
        let plugin = self.plugin.as_str();
        match recover(&self.journal, &self.reporter, plugin, &found, self.max_crashes).await {
            Ok(recovered) => {
                for r in recovered {
                    match r {
                        Recovered::Counted { id, crashes } => tracing::warn!(
                            plugin,
                            event_id = id,
                            crashes,
                            max_crashes = self.max_crashes,
                            "the host died while the plugin handled this event; crash counted, delivering it again"
                        ),
                        Recovered::Buried { id, reason } => {
                            tracing::error!(plugin, event_id = id, %reason, "poison event moved to the plugin's dead letters");
                            let label = PluginLabel { plugin: plugin.to_owned() };
                            self.metrics.dead_letters.get_or_create(&label).inc();
                        }
                    }
                }
            }
            Err(e) => tracing::error!(
                plugin,
                "cannot count the crashes of the events in flight when the host died: {e}"
            ),
        }
        self.record.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_what_was_in_flight_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (record, found) = Inflight::open(dir.path(), "p", 2).unwrap();
        assert!(found.is_empty());
        record.clear();
        let a = record.mark(41);
        let b = record.mark(42);
        {
            let _done = record.mark(43);
        }
        // A second open (the next process) sees what is running now, as after a crash.
        let (_, found) = Inflight::open(dir.path(), "p", 2).unwrap();
        assert_eq!(found, vec![41, 42]);
        drop(a);
        let (_, found) = Inflight::open(dir.path(), "p", 2).unwrap();
        assert_eq!(found, vec![42]);
        drop(b);
        let (_, found) = Inflight::open(dir.path(), "p", 2).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn a_cleared_record_holds_nothing_and_each_plugin_has_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (record, _) = Inflight::open(dir.path(), "p", 1).unwrap();
        record.clear();
        std::mem::forget(record.mark(7)); // the process "dies" in the call
        let (other, found) = Inflight::open(dir.path(), "q", 1).unwrap();
        assert!(found.is_empty());
        other.clear();
        let (again, found) = Inflight::open(dir.path(), "p", 1).unwrap();
        assert_eq!(found, vec![7]);
        again.clear();
        assert!(Inflight::open(dir.path(), "p", 1).unwrap().1.is_empty());
    }

    #[test]
    fn every_lane_gets_a_slot_and_more_lanes_grow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (record, _) = Inflight::open(dir.path(), "p", 100).unwrap();
        record.clear();
        let marks: Vec<_> = (1..=100).map(|id| record.mark(id)).collect();
        let (_, found) = Inflight::open(dir.path(), "p", 1).unwrap();
        assert_eq!(found, (1..=100).collect::<Vec<_>>());
        drop(marks);
    }

    #[test]
    fn a_record_without_the_magic_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = Inflight::path(dir.path(), "p");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, [0xffu8; 64]).unwrap();
        assert!(Inflight::open(dir.path(), "p", 1).unwrap().1.is_empty());
    }

    #[test]
    fn off_marks_nothing() {
        let record = Inflight::off();
        let _mark = record.mark(5);
        record.clear();
    }
}
