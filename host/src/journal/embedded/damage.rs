//! Damage for the tests of the embedded journal: a journal file's bytes changed as a bad disk
//! would change them, where the storage library's structures are.

use std::path::Path;

/// Damages the end of one value in the leaf of the `events` table that holds event `id`'s
/// record (`[1][_][entries u16][value ends u32..][keys u64..][values]`), found by `marker`,
/// text only that record holds; every copy of the leaf (the file also holds older ones, copied
/// on write). The storage library then fails on that entry, and on the next, which starts
/// where it ends, whenever it reads them, while a lookup of any other event still finds it.
pub fn value_end_of_event(path: &Path, id: u64, marker: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let pages: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(at, _)| at - at % 4096)
        .collect();
    let mut damaged = 0;
    for page in pages {
        let n = usize::from(u16::from_le_bytes([bytes[page + 2], bytes[page + 3]]));
        let keys = page + 4 + 4 * n;
        let index = (0..n).find(|i| {
            bytes.get(keys + 8 * i..keys + 8 * i + 8) == Some(id.to_le_bytes().as_slice())
        });
        if let (1, Some(index)) = (bytes[page], index) {
            bytes[page + 4 + 4 * index + 2] ^= 0x40;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no leaf holds event {id}");
    std::fs::write(path, bytes).unwrap();
}
