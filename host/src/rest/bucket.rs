//! A leaky bucket per portal: Bitrix24 lets each portal make `rate` requests a second with a
//! burst of `burst` (2/50 by default, 5/250 on Enterprise) and answers 503
//! `QUERY_LIMIT_EXCEEDED` beyond. The host keeps every plugin's calls to a portal inside it.

use std::time::{Duration, Instant};

/// One portal's bucket.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// An empty bucket that drains `rate` requests a second and holds `burst`.
    pub fn new(rate: f64, burst: u32) -> Bucket {
        Bucket { rate, burst: f64::from(burst.max(1)), level: 0.0, at: Instant::now() }
    }

    /// Reserves room for one request at `now`; returns how long to wait before sending it.
    /// Waiting requests count as reserved, so concurrent callers queue in order.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level - elapsed * self.rate).max(0.0);
        self.at = now;
        let over = self.level + 1.0 - self.burst;
        self.level += 1.0;
        if over > 0.0 { Duration::from_secs_f64(over / self.rate) } else { Duration::ZERO }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_are_spaced_by_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2.0, 3);
        assert_eq!(bucket.reserve(start), Duration::ZERO);
        assert_eq!(bucket.reserve(start), Duration::ZERO);
        assert_eq!(bucket.reserve(start), Duration::ZERO);
        // The 4th waits half a second (one leaks out every 0.5 s), the 5th a whole second.
        assert_eq!(bucket.reserve(start), Duration::from_millis(500));
        assert_eq!(bucket.reserve(start), Duration::from_millis(1000));
        // Two seconds later the bucket has drained by 4 and holds 1.
        let later = start + Duration::from_secs(2);
        assert_eq!(bucket.reserve(later), Duration::ZERO);
    }
}
