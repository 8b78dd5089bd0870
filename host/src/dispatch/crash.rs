//! Poison events: what a delivery that ended with a process dying does to the event.
//!
//! A call that never came back because the plugin's process died (its runner, or the host
//! itself for an in-process plugin) is a *crash* of that (plugin, event). Crashes are counted
//! on the pending row (`Pending::crashes`), apart from the retry attempts: a crash does not use
//! up one of `retry.attempts` (those count the answers the plugin gave), and a retry does not
//! reset the crash count. After `max_crashes` crashes the event becomes a dead letter of that
//! plugin, so one poison event can never stop the plugin (or, in-process, the host) for good.
//! [`after_crash`] is the one place that decides; both the runner supervision (process mode)
//! and the start-up accounting of the in-flight record (in-process mode, see
//! [`super::inflight`]) use it.

use crate::journal::{DeadLetter, Pending, Reporter, admin::Attempt, now_ms};

/// What becomes of an event whose delivery ended with a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashVerdict {
    /// Deliver it again, with this pending state (one more crash counted).
    Again(Pending),
    /// Give up: it becomes this dead letter of the plugin.
    Bury(DeadLetter),
}

/// The verdict after one more crash of an event whose pending state was `pending`. `cause`
/// says how the process died, e.g. `plugin process died: killed by SIGSEGV` or `the host
/// died while plugin P handled it`; the count is appended (`..., 3 times`).
pub fn after_crash(pending: &Pending, cause: &str, max_crashes: u32) -> CrashVerdict {
    let crashes = pending.crashes.saturating_add(1);
    let reason = format!("{cause}, {}", times(crashes));
    if crashes >= max_crashes.max(1) {
        CrashVerdict::Bury(DeadLetter { reason, attempts: pending.attempts, at_ms: now_ms() })
    } else {
        CrashVerdict::Again(Pending { crashes, last_error: reason, ..pending.clone() })
    }
}

/// Reports `verdict` on event `id` through the plugin's reporter, after the attempt that
/// ended so (`outcome`: `crashed`, or `timeout` for a runner killed past `kill_after_ms`; the
/// call started at `at_ms` and lasted `duration_us`); whether it buried the event.
pub fn report(
    reporter: &Reporter,
    id: u64,
    verdict: CrashVerdict,
    outcome: &str,
    at_ms: i64,
    duration_us: u64,
) -> bool {
    let (n, error) = match &verdict {
        CrashVerdict::Again(pending) => (pending.attempts + 1, pending.last_error.clone()),
        CrashVerdict::Bury(dead) => (dead.attempts + 1, dead.reason.clone()),
    };
    reporter.attempt(id, Attempt { n, at_ms, duration_us, outcome: outcome.into(), error });
    match verdict {
        CrashVerdict::Again(pending) => {
            reporter.update(id, pending);
            false
        }
        CrashVerdict::Bury(dead) => {
            reporter.bury(id, dead);
            true
        }
    }
}

fn times(n: u32) -> String {
    if n == 1 { "1 time".to_owned() } else { format!("{n} times") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAUSE: &str = "plugin process died: killed by SIGSEGV";

    #[test]
    fn crashes_count_up_to_max_then_the_event_is_buried_with_the_cause_and_count() {
        let mut pending = Pending { attempts: 2, next_at_ms: 5, ..Pending::default() };
        for expected in 1..3 {
            match after_crash(&pending, CAUSE, 3) {
                CrashVerdict::Again(next) => {
                    assert_eq!(next.crashes, expected);
                    // A crash uses up no retry attempt and keeps the schedule.
                    assert_eq!((next.attempts, next.next_at_ms), (2, 5));
                    assert!(next.last_error.starts_with(CAUSE), "{}", next.last_error);
                    pending = next;
                }
                other => panic!("crash {expected} buried the event: {other:?}"),
            }
        }
        match after_crash(&pending, CAUSE, 3) {
            CrashVerdict::Bury(dead) => {
                assert_eq!(dead.reason, "plugin process died: killed by SIGSEGV, 3 times");
                assert_eq!(dead.attempts, 2);
            }
            other => panic!("the third crash did not bury: {other:?}"),
        }
    }

    #[test]
    fn max_crashes_of_one_buries_at_the_first_crash() {
        let CrashVerdict::Bury(dead) = after_crash(&Pending::default(), "the host died", 1) else {
            panic!("not buried");
        };
        assert_eq!(dead.reason, "the host died, 1 time");
        // A nonsensical 0 acts as 1 rather than never burying.
        assert!(matches!(after_crash(&Pending::default(), "x", 0), CrashVerdict::Bury(_)));
    }

    #[test]
    fn a_row_past_the_limit_is_buried_at_once() {
        // max_crashes lowered in host.toml below what a row already counted.
        let pending = Pending { crashes: 7, ..Pending::default() };
        assert!(matches!(after_crash(&pending, "x", 3), CrashVerdict::Bury(_)));
    }

    #[test]
    fn old_rows_without_the_field_read_as_no_crashes() {
        let old: Pending =
            serde_json::from_str(r#"{"attempts":1,"next_at_ms":0,"last_error":"e"}"#).unwrap();
        assert_eq!(old.crashes, 0);
        // ... and a row with no crashes is written as before.
        assert!(
            !String::from_utf8(crate::journal::record::to_json(&old)).unwrap().contains("crash")
        );
    }
}
