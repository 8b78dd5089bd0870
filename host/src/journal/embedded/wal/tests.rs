//! The write-ahead log on its own: frames round-trip, a torn tail is cut, a flipped bit is
//! caught, segments roll over and are recycled, and a scan never yields a changed entry.

use std::{path::Path, sync::Arc};

use b24_plugin_api::Secret;
use proptest::prelude::*;

use super::{read, *};

fn entry(id: u64) -> Entry {
    Entry {
        id,
        sealed: format!("record of event {id}").repeat(1 + (id % 7) as usize).into_bytes(),
        plugins: vec![Arc::from("audit-log"), Arc::from("probe")],
        change: (id % 3 == 0).then(|| crate::journal::PortalChange {
            member_id: "member".to_owned(),
            token: Some(Some(Secret::new("t0ken"))),
            oauth: (id % 2 == 0).then(|| b"{\"access_token\":\"a\"}".to_vec()),
        }),
        offline_key: (id % 5 == 0).then_some([id as u8; 16]),
    }
}

fn scan(state: &Path, after: u64) -> read::Scan {
    read::scan(&state.join(DIR), after).unwrap()
}

fn ids(scan: &read::Scan) -> Vec<u64> {
    scan.entries.iter().map(|e| e.id).collect()
}

/// Writes entries `ids` one batch each into a fresh log (segments of `segment` bytes).
fn write(state: &Path, segment: u64, batches: &[std::ops::RangeInclusive<u64>]) -> Wal {
    let mut wal = Wal::open(state, segment, &scan(state, 0)).unwrap();
    for batch in batches {
        let entries: Vec<Entry> = batch.clone().map(entry).collect();
        wal.append(&entries).unwrap();
    }
    wal
}

fn only_segment(state: &Path) -> PathBuf {
    let files = read::segment_files(&state.join(DIR)).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].1.clone()
}

#[test]
fn entries_come_back_as_written_with_their_tokens_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), SEGMENT_BYTES, &[1..=3, 4..=10]);
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), (1..=10).collect::<Vec<_>>());
    for e in &read.entries {
        let want = entry(e.id);
        assert_eq!(e.sealed, want.sealed);
        assert_eq!(e.plugins, want.plugins);
        assert_eq!(e.offline_key, want.offline_key);
        let shown = |c: &crate::journal::PortalChange| {
            let token = c.token.as_ref().map(|t| t.as_ref().map(|s| s.expose().to_owned()));
            (c.member_id.clone(), token, c.oauth.clone())
        };
        assert_eq!(e.change.as_ref().map(shown), want.change.as_ref().map(shown));
    }
    assert_eq!((read.highest, read.next_id), (10, 11));
    assert!(read.lost.is_empty());
    // Above a checkpoint only the rest is handed back.
    assert_eq!(ids(&scan(dir.path(), 7)), vec![8, 9, 10]);
    // The segment is private to the owner, as the journal file is.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(only_segment(dir.path())).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_torn_tail_is_cut_and_the_next_process_writes_on_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), SEGMENT_BYTES, &[1..=5, 6..=6]);
    let path = only_segment(dir.path());
    let whole = scan(dir.path(), 0).segments[0].end;
    // The last frame's second half never reached the disk.
    let torn = whole - 10;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0u8; 10], torn).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), vec![1, 2, 3, 4, 5]);
    assert!(read.segments[0].cut.is_some(), "{:?}", read.segments[0]);
    assert!(read.lost.is_empty(), "a torn tail is no loss the log can see: {:?}", read.lost);
    // The next process starts a segment of its own: nothing is written behind torn bytes.
    let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, &read).unwrap();
    wal.append(&[entry(7), entry(8)]).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), vec![1, 2, 3, 4, 5, 7, 8]);
    assert_eq!(read.segments.len(), 2);
    assert!(read.lost.is_empty(), "{:?}", read.lost);
}

#[test]
fn a_flipped_bit_in_a_frame_is_caught_and_what_follows_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = write(dir.path(), SEGMENT_BYTES, &[1..=10]);
    // A second segment, as after a restart: its header says its predecessor held up to 10.
    wal.roll(11).unwrap();
    wal.append(&[entry(11)]).unwrap();
    let files = read::segment_files(&dir.path().join(DIR)).unwrap();
    let first = &files[0].1;
    let mut bytes = std::fs::read(first).unwrap();
    // A bit in the sealed record of the fourth frame.
    let mut pos = HEADER;
    for _ in 0..3 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += entry::FRAME_HEADER + len;
    }
    bytes[pos + entry::FRAME_HEADER + 20] ^= 0x04;
    std::fs::write(first, &bytes).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), vec![1, 2, 3, 11], "no changed entry is handed back");
    assert_eq!(read.lost, vec![(4, 10)]);
    let said = read.describe_lost().unwrap();
    assert!(said.contains("4 to 10"), "{said}");
    // Above a checkpoint that holds them, the damage loses nothing.
    assert!(scan(dir.path(), 10).lost.is_empty());
    // A damaged header hides its segment's entries: reported, not read.
    let mut bytes = std::fs::read(first).unwrap();
    bytes[9] ^= 1;
    std::fs::write(first, &bytes).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), vec![11]);
    assert!(read.lost.contains(&(1, 10)), "{:?}", read.lost);
}

#[test]
fn a_missing_segment_is_reported_lost_above_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = write(dir.path(), 4096, &[1..=4]);
    for id in 5..=300 {
        wal.append(&[entry(id)]).unwrap();
    }
    let files = read::segment_files(&dir.path().join(DIR)).unwrap();
    assert!(files.len() >= 4, "small segments roll over: {files:?}");
    assert_eq!(ids(&scan(dir.path(), 0)), (1..=300).collect::<Vec<_>>());
    let (gone_first, gone) = files[1].clone();
    let next_first = files[2].0;
    std::fs::remove_file(gone).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(read.lost, vec![(gone_first, next_first - 1)]);
    assert!(scan(dir.path(), next_first - 1).lost.is_empty());
}

#[test]
fn segments_behind_a_checkpoint_are_recycled_and_their_old_frames_never_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let segment = 8192;
    let mut wal = write(dir.path(), segment, &[1..=2]);
    for id in 3..=400 {
        wal.append(&[entry(id)]).unwrap();
    }
    let before = read::segment_files(&dir.path().join(DIR)).unwrap();
    assert!(before.len() >= 4, "{before:?}");
    // A checkpoint holds everything up to the newest segment's start, and a little more.
    let newest = before.last().unwrap().0;
    wal.recycle(newest + 1);
    let after = read::segment_files(&dir.path().join(DIR)).unwrap();
    assert_eq!(after, vec![before.last().unwrap().clone()]);
    let spares: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".spare"))
        .collect();
    assert_eq!(spares.len(), 2, "two kept for reuse, the rest deleted: {spares:?}");
    // The next segments reuse them: a new header, and the old frames behind the new ones are
    // not taken for entries (their ids are older).
    for id in 401..=700 {
        wal.append(&[entry(id)]).unwrap();
    }
    let read = scan(dir.path(), newest + 1);
    assert_eq!(ids(&read), ((newest + 2)..=700).collect::<Vec<_>>());
    assert!(read.lost.is_empty(), "{:?}", read.lost);
    let reused = read.segments.iter().filter(|s| s.cut.is_some()).count();
    assert!(reused >= 1, "a reused segment's old frames end its valid part: {:?}", read.segments);
}

#[test]
fn frames_of_a_write_that_failed_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = write(dir.path(), SEGMENT_BYTES, &[1..=3]);
    // As if entries 4 and 5 reached the file but their fdatasync failed (answered 503): the
    // writer starts a new segment, whose header says the old one held up to 3.
    let path = only_segment(dir.path());
    let end = scan(dir.path(), 0).segments[0].end;
    let mut frames = Vec::new();
    entry(4).encode_into(&mut frames);
    entry(5).encode_into(&mut frames);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&frames, end)
        .unwrap();
    wal.roll(6).unwrap();
    wal.append(&[entry(6)]).unwrap();
    let read = scan(dir.path(), 0);
    assert_eq!(ids(&read), vec![1, 2, 3, 6]);
    assert!(read.lost.is_empty(), "{:?}", read.lost);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens to the bytes after they were written (a cut, a flipped bit, zeros), a
    /// scan hands back a prefix of what was written, each entry unchanged.
    #[test]
    fn a_scan_yields_a_prefix_of_what_was_written_never_a_changed_entry(
        batches in proptest::collection::vec(1u64..6, 1..12),
        at in any::<prop::sample::Index>(),
        harm in 0u8..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, &scan(dir.path(), 0)).unwrap();
        let mut next = 1;
        for n in batches {
            let entries: Vec<Entry> = (next..next + n).map(entry).collect();
            wal.append(&entries).unwrap();
            next += n;
        }
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let end = scan(dir.path(), 0).segments[0].end as usize;
        let i = HEADER + at.index(end - HEADER);
        match harm {
            0 => bytes[i] ^= 1 << (i % 8),
            1 => bytes[i..end].fill(0),
            _ => bytes.truncate(i),
        }
        std::fs::write(&path, &bytes).unwrap();
        let read = scan(dir.path(), 0);
        let got = ids(&read);
        prop_assert_eq!(&got, &(1..=got.len() as u64).collect::<Vec<_>>());
        prop_assert!(got.len() < (next - 1) as usize, "the harm is seen");
        for e in &read.entries {
            prop_assert_eq!(&e.sealed, &entry(e.id).sealed);
        }
    }
}
