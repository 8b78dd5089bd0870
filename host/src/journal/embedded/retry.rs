//! When a part of the journal that a storage error stopped is tried again: the log's thread
//! reopening its segment ([`super::writer`]) and the tables' thread reopening the file
//! ([`super::apply`]) wait the same way, from [`FIRST`] doubling up to [`MOST`].

use std::time::{Duration, Instant};

/// The first wait after a storage error.
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest wait between tries.
pub const MOST: Duration = Duration::from_secs(2);

/// Something that could not be written: when to try again, and why.
#[derive(Debug)]
pub struct Retry {
    at: Instant,
    backoff: Duration,
    /// The last error, as said to the operator.
    pub reason: String,
}

impl Retry {
    /// The first try again, [`FIRST`] from now.
    pub fn new(reason: String) -> Retry {
        Retry { at: Instant::now() + FIRST, backoff: FIRST, reason }
    }

    /// When to try again.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Whether it is time to try again.
    pub fn due(&self) -> bool {
        Instant::now() >= self.at
    }

    /// A try failed with `reason`: the wait doubles (up to [`MOST`]); returns it.
    pub fn again(&mut self, reason: String) -> Duration {
        self.backoff = (self.backoff * 2).min(MOST);
        self.at = Instant::now() + self.backoff;
        self.reason = reason;
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_most() {
        let mut retry = Retry::new("disk full".into());
        assert!(!retry.due());
        let waits: Vec<Duration> = (0..6).map(|_| retry.again("still".into())).collect();
        assert_eq!(waits[0], FIRST * 2);
        assert_eq!(*waits.last().unwrap(), MOST);
        assert_eq!(retry.reason, "still");
    }
}
