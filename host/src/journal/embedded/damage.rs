//! Damage for the tests of the embedded journal: a journal file's bytes changed as a bad disk
//! would change them, where the storage library's structures are.

use std::path::Path;

/// Damages the end of the first value in the leaf of the `events` table that holds event
/// `id`'s record (`[1][_][entries u16][value ends u32..][keys u64..][values]`), found by
/// `marker`, text only that record holds; every copy of the leaf (the file also holds older
/// ones, copied on write). The end is put two pages past its start, past the page: the storage
/// library then fails on that entry and on the next (which starts there) whenever it reads
/// them, and a parse of the whole leaf finds the second out of order, while a lookup of any
/// other event of the leaf still finds it. Returns the id of the damaged entry.
pub fn first_value_end_in_leaf_of(path: &Path, id: u64, marker: &str) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    let pages: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(at, _)| at - at % 4096)
        .collect();
    let mut first = None;
    for page in pages {
        let n = usize::from(u16::from_le_bytes([bytes[page + 2], bytes[page + 3]]));
        let keys = page + 4 + 4 * n;
        let holds = (0..n).any(|i| {
            bytes.get(keys + 8 * i..keys + 8 * i + 8) == Some(id.to_le_bytes().as_slice())
        });
        if bytes[page] == 1 && holds {
            let past = u32::try_from(keys + 8 * n - page + 2 * 4096).unwrap().to_le_bytes();
            bytes[page + 4..page + 8].copy_from_slice(&past);
            first = Some(u64::from_le_bytes(bytes[keys..keys + 8].try_into().unwrap()));
        }
    }
    std::fs::write(path, bytes).unwrap();
    first.unwrap_or_else(|| panic!("no leaf holds event {id}"))
}
