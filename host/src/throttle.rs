//! A log line that may repeat many times a second (an accept loop out of descriptors, a
//! guessed admin token) is written at most once per interval, with the count of the ones held
//! back since the last, so a flood cannot flood the log too.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// At most one line per `every`.
pub struct Throttled {
    every: Duration,
    /// When the last line was written, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// A line at most every `every`.
    pub const fn new(every: Duration) -> Throttled {
        Throttled { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(held back since the last line)` when a line may be written now; else `None` (and
    /// this one is counted as held back).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttled::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.allow_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(throttle.allow_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(throttle.allow_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.allow_at(start + Duration::from_secs(30)), Some(1));
    }
}
