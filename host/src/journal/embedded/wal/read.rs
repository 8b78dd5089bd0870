//! Reading the write-ahead log: every segment's header and frames, each checked against its
//! checksum, for recovery (`Embedded::open` replays what the tables lack), `journal verify`
//! and `journal salvage`.
//!
//! A segment's valid part ends at the first frame that is zeros (never written), fails its
//! checksum or does not parse (a torn write, or damage), or names an id not above the one
//! before it (a recycled segment's old frames), or above what the next segment's header says
//! its predecessor held (frames of a batch whose write failed: answered 503). What the headers
//! claim and the frames cannot give is lost: [`Scan::lost`].

use std::path::{Path, PathBuf};

use super::{HEADER, entry::Entry, entry::Framed, header_of};
use crate::journal::StoreError;

/// One segment as read.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The first id it may hold (its name).
    pub first_id: u64,
    /// Its file.
    pub path: PathBuf,
    /// The highest id its predecessor held when it was started, from its header (`None`: the
    /// header is damaged).
    pub prev_last: Option<u64>,
    /// The highest id of its valid frames (`first_id - 1` when it has none).
    pub last_id: u64,
    /// Where its valid part ends, bytes.
    pub end: u64,
    /// Its size, bytes.
    pub bytes: u64,
    /// Why reading stopped at `end` when the rest is not zeros (a torn tail, damage, or a
    /// recycled segment's old frames).
    pub cut: Option<&'static str>,
}

/// What the log holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// The segments, oldest first.
    pub segments: Vec<Segment>,
    /// The entries above the `after` id asked for, in id order.
    pub entries: Vec<Entry>,
    /// The highest id of any valid frame (0: none).
    pub highest: u64,
    /// The lowest id that may be handed out next: above every frame, and at least the newest
    /// segment's first id.
    pub next_id: u64,
    /// Id ranges (inclusive) above `after` that the headers say were written and the frames
    /// cannot give: damage, or a segment missing.
    pub lost: Vec<(u64, u64)>,
}

impl Scan {
    /// The losses, as one line for an error or a report.
    pub fn describe_lost(&self) -> Option<String> {
        if self.lost.is_empty() {
            return None;
        }
        let ranges: Vec<String> = self
            .lost
            .iter()
            .map(|(a, b)| if a == b { format!("{a}") } else { format!("{a} to {b}") })
            .collect();
        Some(format!(
            "the write-ahead log ({}) lacks events it had written (ids {})",
            self.segments
                .first()
                .and_then(|s| s.path.parent())
                .map_or_else(|| super::DIR.to_owned(), |p| p.display().to_string()),
            ranges.join(", ")
        ))
    }
}

/// The segment files in `dir` with their first ids, oldest first (none if there is no folder).
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Storage(format!("cannot read {}: {e}", dir.display())));
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(first) = first.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment in `dir`; keeps the entries above `after`.
pub fn scan(dir: &Path, after: u64) -> Result<Scan, StoreError> {
    let files = segment_files(dir)?;
    let mut scan = Scan { next_id: 1, ..Scan::default() };
    // Each segment's frames may go up to the next one's `prev_last` (when its header is sound).
    let mut limits = Vec::with_capacity(files.len());
    let mut headers = Vec::with_capacity(files.len());
    for (first, path) in &files {
        let bytes = std::fs::read(path)
            .map_err(|e| StoreError::Storage(format!("cannot read {}: {e}", path.display())))?;
        let prev_last = header_of(&bytes).filter(|h| h.0 == *first).map(|h| h.1);
        headers.push((bytes, prev_last));
        limits.push(u64::MAX);
    }
    for i in 1..headers.len() {
        if let Some(prev) = headers[i].1 {
            limits[i - 1] = prev;
        }
    }
    for (i, ((first, path), (bytes, prev_last))) in files.into_iter().zip(headers).enumerate() {
        let mut segment = Segment {
            first_id: first,
            path,
            prev_last,
            last_id: first.saturating_sub(1),
            end: HEADER as u64,
            bytes: bytes.len() as u64,
            cut: None,
        };
        if prev_last.is_none() {
            segment.cut = Some("its header is damaged");
            segment.end = 0;
        } else {
            let mut pos = HEADER;
            loop {
                match Entry::decode(&bytes[pos.min(bytes.len())..]) {
                    Framed::End => break,
                    Framed::Bad => {
                        segment.cut = Some("a frame fails its checksum");
                        break;
                    }
                    Framed::Entry(entry, len) => {
                        if entry.id < first || entry.id <= segment.last_id {
                            segment.cut = Some("older frames follow (a recycled segment)");
                            break;
                        }
                        if entry.id > limits[i] {
                            segment.cut = Some("frames of a write that failed follow");
                            break;
                        }
                        segment.last_id = entry.id;
                        scan.highest = scan.highest.max(entry.id);
                        pos += len;
                        if entry.id > after {
                            scan.entries.push(entry);
                        }
                    }
                }
            }
            segment.end = pos as u64;
        }
        scan.next_id = scan.next_id.max(first).max(segment.last_id + 1);
        scan.segments.push(segment);
    }
    // What each header says its predecessor held, against what the predecessor gives; the
    // oldest segment's predecessor is gone (recycled), so only what lies above `after` counts.
    for i in 0..scan.segments.len() {
        let Some(claimed) = scan.segments[i].prev_last else { continue };
        let had = if i == 0 { after } else { scan.segments[i - 1].last_id.max(after) };
        if claimed > had {
            scan.lost.push((had + 1, claimed));
        }
    }
    // A damaged header hides what its segment held up to the next segment's start.
    for i in 0..scan.segments.len() {
        if scan.segments[i].prev_last.is_none() {
            let from = scan.segments[i].first_id.max(after + 1);
            let to = scan.segments.get(i + 1).map(|s| s.first_id - 1);
            match to {
                Some(to) if to >= from => scan.lost.push((from, to)),
                Some(_) => {}
                // The newest segment: what it held is unknown; the mark tells.
                None => {}
            }
        }
    }
    scan.entries.sort_by_key(|e| e.id);
    scan.entries.dedup_by_key(|e| e.id);
    scan.lost.sort();
    scan.lost.dedup();
    Ok(scan)
}
