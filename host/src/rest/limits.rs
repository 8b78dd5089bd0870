//! Bitrix24's second limit, on each method's operating time, as the REST client keeps to it.
//!
//! Besides the request rate (the leaky bucket, [`super::bucket`]), a cloud portal sums how long
//! each method ran for an application over the last 10 minutes (ten one-minute buckets, read
//! from the portal's `rest` module, `LoadLimiter`); past the limit (480 s in the docs) the
//! method is blocked for that application, all other methods still answer. Every successful
//! answer's `time` carries the running sum (`operating`, seconds) and when the oldest minute
//! with any time in it leaves the sum (`operating_reset_at`, unix seconds). A blocked call
//! answers HTTP 429 `OPERATION_TIME_LIMIT` "Method is blocked due to operation time limit."
//! **without** a `time` block, so the reset time is the one the last successful answer gave.
//!
//! Per portal and method the client therefore remembers the last `operating` and
//! `operating_reset_at` and:
//! - holds the method (no call) until one second past the known reset once a 429 came, or once
//!   `operating` is within [`MARGIN_S`] of [`LIMIT_S`]; a 429 with no reset known ahead holds
//!   it for one of the portal's buckets ([`UNKNOWN_RESET`]);
//! - past half the limit, paces the method: it spreads what is left of the budget over the
//!   time until the reset, each call costing what the last one added (at least 0.1 s), by
//!   waiting between calls (a short wait in the call, a longer one as a hold).
//!
//! A held call is not sent: it fails as unavailable (the event is delivered again once the
//! hold ends, without using an attempt; see `dispatch::worker`).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde_json::Value;

/// The documented operating-time limit per method, 10 minutes, seconds.
pub const LIMIT_S: f64 = 480.0;
/// How close to [`LIMIT_S`] the client stops calling the method until its reset.
pub const MARGIN_S: f64 = 5.0;
/// Past this share of [`LIMIT_S`] the client paces the method.
pub const PACE_FROM: f64 = 0.5;
/// A wait up to this long happens inside the call; a longer one holds the method.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long a method blocked with no known reset is held: one of the portal's buckets.
pub const UNKNOWN_RESET: Duration = Duration::from_secs(60);
/// The least time a call of a paced method is taken to cost (the portal counts nothing
/// shorter than 0.1 s).
const MIN_COST_S: f64 = 0.1;
/// Methods tracked at most (the oldest forgotten first): bounded memory whatever plugins call.
const MAX_TRACKED: usize = 10_000;

/// What to do before calling a method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Call now.
    Go,
    /// Wait this long, then call (pacing).
    Sleep(Duration),
    /// Do not call before this time (ms since the epoch): blocked, or paced too far out.
    Hold {
        /// When the method may be called again.
        until_ms: i64,
        /// `operating_block` or `operating_pace`.
        reason: &'static str,
    },
}

/// What the client knows of one method on one portal.
#[derive(Debug, Clone, Default)]
struct Method {
    /// The last `operating` answered, seconds.
    operating: f64,
    /// The last `operating_reset_at` answered, ms since the epoch.
    reset_at_ms: Option<i64>,
    /// What the last call added to `operating`, seconds.
    cost: f64,
    /// When the last call was sent, ms since the epoch.
    last_call_ms: Option<i64>,
    /// Held until then (a 429, or `operating` at the limit).
    held_until_ms: i64,
    /// When this entry was last touched (for forgetting old ones).
    touched_ms: i64,
}

/// The operating-time state of every (portal, method) the client called.
#[derive(Default)]
pub struct Limits {
    methods: Mutex<HashMap<(String, String), Method>>,
}

impl Limits {
    /// What to do before calling `method` on `member` at `now_ms`.
    pub fn gate(&self, member: &str, method: &str, now_ms: i64) -> Gate {
        let methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = methods.get(&(member.to_owned(), method.to_owned())) else {
            return Gate::Go;
        };
        if m.held_until_ms > now_ms {
            return Gate::Hold { until_ms: m.held_until_ms, reason: "operating_block" };
        }
        let Some(reset_ms) = m.reset_at_ms.filter(|r| *r > now_ms) else { return Gate::Go };
        if m.operating < LIMIT_S * PACE_FROM {
            return Gate::Go;
        }
        // Spend what is left evenly until the reset: one call's cost per interval.
        let left = (LIMIT_S - MARGIN_S - m.operating).max(MIN_COST_S);
        let interval_ms = m.cost.max(MIN_COST_S) * (reset_ms - now_ms) as f64 / left;
        let since = m.last_call_ms.map_or(i64::MAX, |at| now_ms - at);
        let wait_ms = (interval_ms as i64).saturating_sub(since);
        if wait_ms <= 0 {
            Gate::Go
        } else if wait_ms <= MAX_SLEEP.as_millis() as i64 {
            Gate::Sleep(Duration::from_millis(wait_ms as u64))
        } else {
            Gate::Hold { until_ms: now_ms + wait_ms, reason: "operating_pace" }
        }
    }

    /// Notes that `method` is being sent now.
    pub fn sent(&self, member: &str, method: &str, now_ms: i64) {
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = methods.get_mut(&(member.to_owned(), method.to_owned())) {
            m.last_call_ms = Some(now_ms);
            m.touched_ms = now_ms;
        }
    }

    /// Takes a successful answer's `time` block: the method's running sum and its reset.
    pub fn answered(&self, member: &str, method: &str, time: Option<&Value>, now_ms: i64) {
        let Some(time) = time else { return };
        let Some(operating) = time.get("operating").and_then(number) else { return };
        let reset_at_ms =
            time.get("operating_reset_at").and_then(number).map(|s| (s * 1000.0) as i64);
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        if methods.len() >= MAX_TRACKED {
            let oldest = methods.iter().min_by_key(|(_, m)| m.touched_ms).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                methods.remove(&oldest);
            }
        }
        let m = methods.entry((member.to_owned(), method.to_owned())).or_default();
        m.cost = (operating - m.operating).max(0.0);
        m.operating = operating;
        if reset_at_ms.is_some() {
            m.reset_at_ms = reset_at_ms;
        }
        m.touched_ms = now_ms;
        if operating >= LIMIT_S - MARGIN_S {
            // The next call would be refused: wait for the oldest minute to leave the sum.
            m.held_until_ms =
                m.reset_at_ms.map_or(now_ms + UNKNOWN_RESET.as_millis() as i64, |r| r + 1000);
        }
    }

    /// Notes a 429 `OPERATION_TIME_LIMIT`; returns until when the method is held (one second
    /// past the reset the last answer announced, or [`UNKNOWN_RESET`] from now without one).
    pub fn blocked(&self, member: &str, method: &str, now_ms: i64) -> i64 {
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let m = methods.entry((member.to_owned(), method.to_owned())).or_default();
        let until = match m.reset_at_ms {
            Some(reset) if reset + 1000 > now_ms => reset + 1000,
            _ => now_ms + UNKNOWN_RESET.as_millis() as i64,
        };
        m.held_until_ms = m.held_until_ms.max(until);
        m.touched_ms = now_ms;
        m.held_until_ms
    }
}

/// A JSON number, or a number in a string (Bitrix24 sends both).
fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const M: &str = "member";
    const GET: &str = "crm.deal.userfield.get";

    #[test]
    fn a_429_holds_the_method_until_just_past_the_announced_reset() {
        let limits = Limits::default();
        let now = 1_000_000;
        assert_eq!(limits.gate(M, GET, now), Gate::Go);
        limits.answered(
            M,
            GET,
            Some(&json!({"operating": 12.5, "operating_reset_at": 1_300})),
            now,
        );
        assert_eq!(limits.gate(M, GET, now), Gate::Go);
        assert_eq!(limits.blocked(M, GET, now), 1_301_000);
        assert_eq!(
            limits.gate(M, GET, now + 5),
            Gate::Hold { until_ms: 1_301_000, reason: "operating_block" }
        );
        // Another method, another portal: not held.
        assert_eq!(limits.gate(M, "crm.lead.userfield.get", now), Gate::Go);
        assert_eq!(limits.gate("other", GET, now), Gate::Go);
        assert_eq!(limits.gate(M, GET, 1_301_000), Gate::Go);
        // A 429 with no reset ahead: one bucket.
        assert_eq!(limits.blocked(M, GET, 2_000_000), 2_000_000 + 60_000);
        assert_eq!(limits.blocked(M, "never.answered", 5), 60_005);
    }

    #[test]
    fn at_the_limit_the_method_waits_for_its_reset_without_a_429() {
        let limits = Limits::default();
        let now = 1_000_000;
        limits.answered(
            M,
            GET,
            Some(&json!({"operating": "476.2", "operating_reset_at": "1100"})),
            now,
        );
        assert_eq!(
            limits.gate(M, GET, now),
            Gate::Hold { until_ms: 1_101_000, reason: "operating_block" }
        );
        // Answers without the counters (an on-premise portal) change nothing.
        limits.answered(M, "x", Some(&json!({"start": 1})), now);
        limits.answered(M, "x", None, now);
        assert_eq!(limits.gate(M, "x", now), Gate::Go);
    }

    #[test]
    fn past_half_the_limit_calls_are_spread_until_the_reset() {
        let limits = Limits::default();
        let now = 1_000_000_000;
        // Below half: no pacing.
        limits.answered(
            M,
            GET,
            Some(&json!({"operating": 100.0, "operating_reset_at": 1_000_300})),
            now,
        );
        assert_eq!(limits.gate(M, GET, now), Gate::Go);
        // 235 s left to spend over 300 s, 2 s a call: one call every 2.55 s or so.
        limits.answered(
            M,
            GET,
            Some(&json!({"operating": 238.0, "operating_reset_at": 1_000_300})),
            now,
        );
        limits.sent(M, GET, now);
        limits.answered(
            M,
            GET,
            Some(&json!({"operating": 240.0, "operating_reset_at": 1_000_300})),
            now,
        );
        let Gate::Hold { until_ms, reason } = limits.gate(M, GET, now) else { panic!("not held") };
        assert_eq!(reason, "operating_pace");
        let wait = until_ms - now;
        assert!((2_500..=2_600).contains(&wait), "{wait}");
        // Most of the interval gone: a short wait in the call.
        let Gate::Sleep(short) = limits.gate(M, GET, now + wait - 300) else { panic!("no sleep") };
        assert!(short <= MAX_SLEEP && short >= Duration::from_millis(250), "{short:?}");
        assert_eq!(limits.gate(M, GET, now + wait + 1), Gate::Go);
    }
}
