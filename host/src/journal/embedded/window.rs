//! The embedded backend's duplicate window: the keys (`journal::dedup`) of the events accepted
//! within `journal.dedup_window_ms`, in memory, with the event id each became. The writer
//! checks it before an append and refills it from the newest records at start.

use std::collections::{HashMap, VecDeque};

use crate::journal::dedup::DedupKey;

/// The most keys the window holds. Under sustained load a 10-minute window would otherwise
/// grow without bound (30k events/s is 18 million keys); beyond this the oldest keys go first,
/// so the window shortens under extreme load. Bitrix24's duplicates arrive within seconds.
pub const MAX_KEYS: usize = 200_000;

/// The keys seen within the window, with the event id each first arrived as.
#[derive(Debug, Default)]
pub struct Window {
    window_ms: i64,
    max_keys: usize,
    /// Key -> (event id, when it was recorded).
    seen: HashMap<DedupKey, (u64, i64)>,
    order: VecDeque<(i64, DedupKey)>,
    /// member_id -> the key of its last accepted lifecycle event, and when.
    lifecycle: HashMap<String, (DedupKey, i64)>,
}

impl Window {
    /// An empty window of `window_ms` milliseconds (0 = suppression off), holding at most
    /// [`MAX_KEYS`] keys.
    pub fn new(window_ms: i64) -> Window {
        Window::with_capacity(window_ms, MAX_KEYS)
    }

    /// An empty window holding at most `max_keys` keys.
    pub fn with_capacity(window_ms: i64, max_keys: usize) -> Window {
        Window { window_ms, max_keys: max_keys.max(1), ..Window::default() }
    }

    /// Whether suppression is on.
    pub fn enabled(&self) -> bool {
        self.window_ms > 0
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(&(at, key)) = self.order.front() {
            if now_ms - at < self.window_ms {
                break;
            }
            self.order.pop_front();
            self.forget(&key, at);
        }
        if self.lifecycle.len() > self.max_keys {
            let window_ms = self.window_ms;
            self.lifecycle.retain(|_, (_, at)| now_ms - *at < window_ms);
        }
    }

    /// Forgets `key` if it was recorded at `at` (not re-recorded since).
    fn forget(&mut self, key: &DedupKey, at: i64) {
        if self.seen.get(key).is_some_and(|&(_, recorded)| recorded == at) {
            self.seen.remove(key);
        }
    }

    /// The id of an earlier event with `key` inside the window, if any.
    pub fn check(&mut self, key: &DedupKey, now_ms: i64) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        self.expire(now_ms);
        self.seen.get(key).map(|&(id, _)| id)
    }

    /// Records that `key` arrived at `at_ms` as event `id`.
    pub fn insert(&mut self, key: DedupKey, id: u64, at_ms: i64) {
        if self.enabled() && !self.seen.contains_key(&key) {
            while self.order.len() >= self.max_keys {
                if let Some((at, oldest)) = self.order.pop_front() {
                    self.forget(&oldest, at);
                }
            }
            self.seen.insert(key, (id, at_ms));
            self.order.push_back((at_ms, key));
        }
    }

    /// Records a lifecycle event of portal `member_id` (see the module docs): its earlier
    /// lifecycle event is forgotten, then `key` is recorded as [`Window::insert`] does.
    pub fn insert_lifecycle(&mut self, member_id: &str, key: DedupKey, id: u64, at_ms: i64) {
        if !self.enabled() {
            return;
        }
        if let Some((previous, at)) = self.lifecycle.remove(member_id) {
            self.forget(&previous, at);
        }
        self.insert(key, id, at_ms);
        self.lifecycle.insert(member_id.to_owned(), (key, at_ms));
    }

    /// Forgets `key` (its append was rolled back).
    pub fn remove(&mut self, key: &DedupKey) {
        self.seen.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_after_the_window() {
        let mut window = Window::new(1000);
        let k = [7u8; 16];
        assert_eq!(window.check(&k, 0), None);
        window.insert(k, 1, 0);
        assert_eq!(window.check(&k, 999), Some(1));
        assert_eq!(window.check(&k, 1000), None);
    }

    #[test]
    fn the_window_holds_at_most_its_capacity_dropping_the_oldest() {
        let mut window = Window::with_capacity(60_000, 2);
        window.insert([1; 16], 1, 0);
        window.insert([2; 16], 2, 1);
        window.insert([3; 16], 3, 2);
        assert_eq!(window.check(&[1; 16], 3), None);
        assert_eq!(window.check(&[2; 16], 3), Some(2));
        assert_eq!(window.check(&[3; 16], 3), Some(3));
    }

    #[test]
    fn a_lifecycle_event_ends_the_previous_cycle() {
        let mut window = Window::new(60_000);
        let (install, uninstall) = ([1u8; 16], [2u8; 16]);
        window.insert_lifecycle("m", install, 1, 0);
        assert_eq!(window.check(&install, 1), Some(1), "a repeat within the cycle");
        window.insert_lifecycle("m", uninstall, 2, 2);
        assert_eq!(window.check(&uninstall, 3), Some(2));
        assert_eq!(window.check(&install, 3), None, "a re-install is no duplicate");
        window.insert_lifecycle("m", install, 3, 4);
        assert_eq!(window.check(&install, 5), Some(3));
        assert_eq!(window.check(&uninstall, 5), None);
        // Another portal's cycle is its own.
        window.insert_lifecycle("n", [3u8; 16], 4, 6);
        assert_eq!(window.check(&install, 7), Some(3));
        // The re-recorded key lives for its own window, not the first one's.
        assert_eq!(window.check(&install, 60_001), Some(3));
        assert_eq!(window.check(&install, 60_004), None);
    }

    #[test]
    fn a_zero_window_suppresses_nothing() {
        let mut window = Window::new(0);
        window.insert([1; 16], 1, 0);
        assert_eq!(window.check(&[1; 16], 0), None);
    }
}
