//! Puts one plugin's pulled messages back in stream order when the log may have delivered
//! some out of it: pure bookkeeping, no NATS in it (the pull task in `deliver.rs` feeds it).
//!
//! The server hands a consumer's messages out in stream order, and numbers every delivery
//! (first or repeated) with the next consumer sequence. Order breaks in two ways, both
//! followed by redeliveries that come only when their `ack_wait` runs out, after newer
//! messages:
//!
//! - **A takeover**: another host had pulled messages and not acked them (it died, or lost the
//!   lease). The pull task knows how many (the consumer's `num_ack_pending` less what it holds)
//!   and asks for that many first ([`Resequencer::expect`]).
//! - **A gap**: deliveries that never reached this host: sent by a consumer leader that was
//!   killed with them in its outbound buffer, or left in a pull subscription that was dropped.
//!   One host pulls a plugin at a time (the delivery lease), so every delivery the consumer
//!   makes is meant for this host, and a jump in the consumer sequence between two messages
//!   is exactly that many lost deliveries; they come back as redeliveries.
//!
//! In both cases messages are gathered instead of handled: until the expected ones arrived,
//! or a deadline passed (a redelivery may never come: the message was acked meanwhile, or
//! purged); then everything gathered is handed out sorted by stream sequence. A consumer
//! sequence lower than the last one (a new consumer leader whose replicated state lagged)
//! is no gap: the new leader delivers again from its own position, in order.
//!
//! [`Recent`] remembers what this host did with the latest messages (received, acked,
//! terminated): a repeat of a received message is not one of the lost ones coming back (a
//! gathered message's ack wait runs out too; an ack lost with a killed leader brings a
//! finished message back), and a finished one is acknowledged again instead of delivered
//! again.

use std::time::Duration;

use tokio::time::Instant;

/// A takeover stops gathering after this long without a message (the previous holder acked
/// some of what it had after all).
pub(super) const GATHER_IDLE: Duration = Duration::from_secs(1);

/// One pulled message as the resequencer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// The consumer's delivery number (`$JS.ACK...` reply: dseq).
    pub consumer_sequence: u64,
    /// The message's place in the stream.
    pub stream_sequence: u64,
    /// A repeated delivery (`delivered > 1`) of a message this host never received: one of
    /// the lost deliveries coming back (a repeat of one it received, held or finished, is
    /// not).
    pub returning: bool,
}

/// See the module doc. One per lease held: a consumer sequence before it was another
/// puller's.
pub(super) struct Resequencer<T> {
    last: Option<u64>,
    gathered: Vec<(u64, T)>,
    /// Messages of a takeover still to come (any message counts).
    takeover: usize,
    /// Lost deliveries still to come back (only `returning` messages count).
    missing: u64,
    until: Option<Instant>,
    idle_until: Option<Instant>,
    /// How long a gap may wait for its lost deliveries.
    gap_wait: Duration,
}

impl<T> Resequencer<T> {
    /// `gap_wait`: how long after a gap its lost deliveries may take to come back (they come
    /// when their `ack_wait` runs out; twice that is safe). `last`: the consumer's last
    /// delivery number when this host took the lease (from the consumer's info), if known.
    pub fn new(gap_wait: Duration, last: Option<u64>) -> Self {
        Resequencer {
            last,
            gathered: Vec::new(),
            takeover: 0,
            missing: 0,
            until: None,
            idle_until: None,
            gap_wait,
        }
    }

    /// A takeover: the next `n` messages are gathered (at most until `until`, or
    /// [`GATHER_IDLE`] without one) and handed out in stream order.
    pub fn expect(&mut self, n: usize, now: Instant, until: Instant) {
        if n == 0 {
            return;
        }
        self.takeover += n;
        self.extend(until);
        self.idle_until = Some(now + GATHER_IDLE);
    }

    /// Whether messages are being held back now.
    pub fn gathering(&self) -> bool {
        self.until.is_some()
    }

    fn extend(&mut self, until: Instant) {
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// One message pulled. Returns what may be handled now, in order; empty while gathering.
    /// The second value is the number of lost deliveries a gap before this message showed
    /// (0 when none).
    pub fn push(&mut self, seen: Seen, item: T, now: Instant) -> (Vec<T>, u64) {
        let mut lost = 0;
        if let Some(last) = self.last {
            if seen.consumer_sequence > last + 1 {
                lost = seen.consumer_sequence - last - 1;
                self.missing += lost;
                self.extend(now + self.gap_wait);
            }
        }
        self.last = Some(seen.consumer_sequence);
        if !self.gathering() {
            return (vec![item], lost);
        }
        self.gathered.push((seen.stream_sequence, item));
        if self.takeover > 0 {
            self.takeover -= 1;
            self.idle_until = Some(now + GATHER_IDLE);
        } else if seen.returning && self.missing > 0 {
            self.missing -= 1;
        }
        if self.takeover == 0 {
            self.idle_until = None;
        }
        if self.takeover == 0 && self.missing == 0 {
            return (self.release(), lost);
        }
        (Vec::new(), lost)
    }

    /// When [`Resequencer::wake`] must be called (a deadline of the gathering).
    pub fn wake_at(&self) -> Option<Instant> {
        let until = self.until?;
        Some(self.idle_until.map_or(until, |idle| idle.min(until)))
    }

    /// A deadline passed: an idle takeover ends; at the hard deadline everything gathered is
    /// handed out, in order, whatever has not come.
    pub fn wake(&mut self, now: Instant) -> Vec<T> {
        if self.idle_until.is_some_and(|idle| now >= idle) {
            self.takeover = 0;
            self.idle_until = None;
        }
        if self.until.is_some_and(|until| now >= until) {
            self.takeover = 0;
            self.missing = 0;
            self.idle_until = None;
        }
        if self.takeover == 0 && self.missing == 0 && self.gathering() {
            return self.release();
        }
        Vec::new()
    }

    fn release(&mut self) -> Vec<T> {
        self.until = None;
        self.idle_until = None;
        self.gathered.sort_by_key(|(sequence, _)| *sequence);
        self.gathered.drain(..).map(|(_, item)| item).collect()
    }
}

/// The stream sequences of the latest `capacity` messages with a mark each (oldest forgotten
/// first): which messages this host received, and which it finished (acked or terminated), so
/// that a repeat is told from a lost delivery coming back, and a finished message whose ack
/// was lost is acked again instead of delivered again.
pub(super) struct Recent {
    marks: std::collections::HashMap<u64, Mark>,
    order: std::collections::VecDeque<u64>,
    capacity: usize,
}

/// What this host did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    Received,
    Acked,
    Terminated,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            marks: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity,
        }
    }

    pub fn get(&self, sequence: u64) -> Option<Mark> {
        self.marks.get(&sequence).copied()
    }

    /// Marks `sequence`; a later mark replaces an earlier one, except that `Received` never
    /// replaces a finished mark.
    pub fn mark(&mut self, sequence: u64, mark: Mark) {
        match self.marks.get_mut(&sequence) {
            Some(old) => {
                if mark != Mark::Received {
                    *old = mark;
                }
            }
            None => {
                if self.order.len() == self.capacity {
                    if let Some(oldest) = self.order.pop_front() {
                        self.marks.remove(&oldest);
                    }
                }
                self.marks.insert(sequence, mark);
                self.order.push_back(sequence);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn seen(consumer_sequence: u64, stream_sequence: u64, returning: bool) -> Seen {
        Seen { consumer_sequence, stream_sequence, returning }
    }

    #[test]
    fn messages_without_a_gap_pass_straight_through() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        for n in 1..=5 {
            assert_eq!(r.push(seen(n, n * 2, false), n, now), (vec![n], 0));
        }
        assert_eq!(r.wake_at(), None);
    }

    #[test]
    fn a_gap_holds_later_messages_until_the_lost_ones_come_back_then_all_go_in_stream_order() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        assert_eq!(r.push(seen(1, 10, false), 10, now).0, vec![10]);
        // Deliveries 2 and 3 (stream 11, 12) were lost; 4 and 5 come.
        assert_eq!(r.push(seen(4, 13, false), 13, now), (vec![], 2));
        assert_eq!(r.push(seen(5, 14, false), 14, now).0, Vec::<u64>::new());
        assert_eq!(r.wake_at(), Some(now + WAIT));
        // A held message's repeat does not count as a returning one.
        assert_eq!(r.push(seen(6, 9, false), 9, now).0, Vec::<u64>::new());
        assert_eq!(r.push(seen(7, 12, true), 12, now).0, Vec::<u64>::new());
        assert_eq!(r.push(seen(8, 11, true), 11, now).0, vec![9, 11, 12, 13, 14]);
        assert_eq!(r.wake_at(), None);
    }

    #[test]
    fn lost_deliveries_that_never_come_back_are_given_up_at_the_deadline() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        r.push(seen(1, 1, false), 1, now);
        r.push(seen(3, 3, false), 3, now);
        r.push(seen(4, 4, false), 4, now);
        assert!(r.wake(now + WAIT / 2).is_empty());
        assert_eq!(r.wake(now + WAIT), vec![3, 4]);
        assert_eq!(r.push(seen(5, 5, false), 5, now + WAIT).0, vec![5]);
    }

    #[test]
    fn a_consumer_sequence_going_back_is_a_new_leader_not_a_gap() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        r.push(seen(10, 10, false), 10, now);
        assert_eq!(r.push(seen(7, 8, false), 8, now), (vec![8], 0));
        assert_eq!(r.push(seen(8, 9, false), 9, now), (vec![9], 0));
    }

    #[test]
    fn the_first_message_is_a_gap_only_against_the_consumers_own_count() {
        // A new resequencer each time the lease is taken, from the consumer's info then.
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        assert_eq!(r.push(seen(50, 60, false), 60, now), (vec![60], 0));
        let mut r = Resequencer::new(WAIT, Some(48));
        assert_eq!(r.push(seen(50, 60, false), 60, now), (vec![], 1));
        assert_eq!(r.push(seen(51, 59, true), 59, now).0, vec![59, 60]);
    }

    #[test]
    fn a_takeover_gathers_the_next_n_in_stream_order_or_until_idle() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        r.expect(3, now, now + WAIT);
        assert!(r.push(seen(20, 7, true), 7, now).0.is_empty());
        assert!(r.push(seen(21, 5, true), 5, now).0.is_empty());
        assert_eq!(r.push(seen(22, 6, true), 6, now).0, vec![5, 6, 7]);
        // Fewer come than expected: the idle timer ends it.
        r.expect(2, now, now + WAIT);
        assert!(r.push(seen(23, 9, true), 9, now).0.is_empty());
        let wake = r.wake_at().unwrap();
        assert_eq!(wake, now + GATHER_IDLE);
        assert_eq!(r.wake(wake), vec![9]);
    }

    #[test]
    fn a_gap_right_after_a_takeover_gathers_again() {
        let now = Instant::now();
        let mut r = Resequencer::new(WAIT, None);
        r.expect(1, now, now + WAIT);
        assert_eq!(r.push(seen(5, 8, true), 8, now).0, vec![8]);
        // The takeover got its one; a gap of one right after gathers again.
        assert!(r.push(seen(7, 10, false), 10, now).0.is_empty());
        assert_eq!(r.push(seen(8, 9, true), 9, now).0, vec![9, 10]);
    }

    #[test]
    fn recent_keeps_the_latest_marks_and_never_unfinishes_a_message() {
        let mut recent = Recent::new(3);
        recent.mark(1, Mark::Received);
        recent.mark(1, Mark::Acked);
        recent.mark(1, Mark::Received);
        assert_eq!(recent.get(1), Some(Mark::Acked));
        recent.mark(2, Mark::Received);
        recent.mark(3, Mark::Terminated);
        recent.mark(4, Mark::Received);
        assert_eq!(recent.get(1), None, "the oldest is forgotten");
        assert_eq!(recent.get(3), Some(Mark::Terminated));
        assert_eq!(recent.get(4), Some(Mark::Received));
    }

    proptest! {
        /// Fresh deliveries of stream 1..=n, some lost in transit and delivered again later
        /// (each after its ack wait, interleaved with newer ones): what comes out is every
        /// message once, in stream order.
        #[test]
        fn lost_and_returned_deliveries_come_out_in_stream_order(
            n in 2u64..60,
            lost in proptest::collection::btree_set(1u64..60, 0..10),
            delay in 1usize..8,
        ) {
            let now = Instant::now();
            let lost: Vec<u64> = lost.into_iter().filter(|s| *s <= n).collect();
            // The server's deliveries: stream 1..=n in order, each lost one delivered again
            // `delay` deliveries after it (a redelivery never comes before its own original).
            let mut deliveries: Vec<(u64, bool)> = Vec::new();
            let mut due: Vec<(usize, u64)> = Vec::new();
            for s in 1..=n {
                deliveries.push((s, false));
                if lost.contains(&s) {
                    due.push((deliveries.len() + delay, s));
                }
                while let Some(pos) = due.iter().position(|(at, _)| *at <= deliveries.len()) {
                    let (_, back) = due.remove(pos);
                    deliveries.push((back, true));
                }
            }
            deliveries.extend(due.iter().map(|(_, s)| (*s, true)));
            let mut r = Resequencer::new(WAIT, Some(0));
            let mut out = Vec::new();
            let mut dropped_once: Vec<u64> = Vec::new();
            for (dseq, (s, again)) in deliveries.iter().enumerate() {
                let dseq = dseq as u64 + 1;
                if lost.contains(s) && !again && !dropped_once.contains(s) {
                    dropped_once.push(*s);
                    continue; // lost in transit: never seen here
                }
                out.extend(r.push(seen(dseq, *s, *again), *s, now).0);
            }
            out.extend(r.wake(now + WAIT));
            let expected: Vec<u64> = (1..=n).collect();
            prop_assert_eq!(out, expected);
        }
    }
}
