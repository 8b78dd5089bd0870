//! The operating-time limit per method, as Bitrix24's `rest` module meters it
//! (`Bitrix\Rest\Engine\Access\LoadLimiter`).
//!
//! Each method's running time is summed per application (one fake is one portal and one app)
//! in ten buckets of a tenth of [`PortalOptions::operating_window`](super::PortalOptions)
//! (Bitrix24: 60 s each, 10 minutes); a call that ran 0.1 s or less is not counted; `batch` is
//! not metered. Before a call, a method whose sum is over
//! [`PortalOptions::operating_limit`](super::PortalOptions) (480 s in the docs) is refused:
//! HTTP 429 `OPERATION_TIME_LIMIT` "Method is blocked due to operation time limit.", with no
//! `time` block (Bitrix24 answers errors without one). A successful answer's `time` carries
//! `operating` (the sum, this call included) and `operating_reset_at`: the unix second (cut to
//! a whole second, as Bitrix24 does) when the oldest bucket with time in it leaves the sum,
//! i.e. its first call plus the window; with nothing counted, the call's start plus the window.
//!
//! The fake's methods take no time, so a test gives a method a cost
//! ([`FakePortal::set_operating_cost`]) or spends time as the app's other users would
//! ([`FakePortal::spend_operating`]). [`FakePortal::early_calls`] counts calls of a method
//! that arrived after it was refused and before the reset the portal had announced for it.

use std::{collections::HashMap, time::Duration};

use super::{FakePortal, state::State};

/// Calls shorter than this are not counted (Bitrix24's `minimalFixTime`).
const MINIMAL_FIX_S: f64 = 0.1;
/// Buckets in the window.
const BUCKETS: i64 = 10;

/// One method's buckets: index -> (seconds, unix time of its first call).
#[derive(Default)]
pub(super) struct Meter {
    buckets: HashMap<i64, (f64, f64)>,
    /// The last `operating_reset_at` announced for the method.
    announced_reset: Option<i64>,
    /// Set when the method was refused: calls before this (the announced reset) are early.
    refused_until: Option<i64>,
    refused: usize,
    early: usize,
}

impl State {
    fn bucket_len(&self) -> f64 {
        (self.opts.operating_window.as_secs_f64() / BUCKETS as f64).max(0.001)
    }

    /// The method's sum over the window at `now` (unix seconds).
    pub(super) fn operating_sum(&self, method: &str, now: f64) -> f64 {
        let current = (now / self.bucket_len()).floor() as i64;
        self.meters.get(method).map_or(0.0, |m| {
            m.buckets.iter().filter(|(i, _)| **i > current - BUCKETS).map(|(_, (s, _))| s).sum()
        })
    }

    /// Before a call of `method` at `now`: `Err` (the block) when its sum is over the limit.
    /// Notes a call that came before the reset announced with an earlier refusal.
    pub(super) fn operating_check(&mut self, method: &str, now: f64) -> Result<(), ()> {
        if method == "batch" {
            return Ok(());
        }
        let sum = self.operating_sum(method, now);
        let over = sum > self.opts.operating_limit.as_secs_f64();
        let meter = self.meters.entry(method.to_owned()).or_default();
        if meter.refused_until.is_some_and(|until| now < until as f64) {
            meter.early += 1;
        }
        if over {
            meter.refused += 1;
            meter.refused_until = meter.announced_reset;
            return Err(());
        }
        Ok(())
    }

    /// Charges `seconds` of `method` started at `start` (unix seconds).
    pub(super) fn operating_charge(&mut self, method: &str, start: f64, seconds: f64) {
        if method == "batch" || seconds <= MINIMAL_FIX_S {
            return;
        }
        let index = (start / self.bucket_len()).floor() as i64;
        let bucket = self
            .meters
            .entry(method.to_owned())
            .or_default()
            .buckets
            .entry(index)
            .or_insert((0.0, start));
        bucket.0 += seconds;
    }

    /// After a successful call of `method` that started at `start`: charges its cost, and
    /// returns `(operating, operating_reset_at)` for the answer's `time`.
    pub(super) fn operating_answer(&mut self, method: &str, start: f64) -> (f64, i64) {
        let cost = self.operating_costs.get(method).copied().unwrap_or_default();
        self.operating_charge(method, start, cost.as_secs_f64());
        let current = (start / self.bucket_len()).floor() as i64;
        let window = self.opts.operating_window.as_secs_f64();
        let sum = self.operating_sum(method, start);
        let meter = self.meters.entry(method.to_owned()).or_default();
        let oldest = meter
            .buckets
            .iter()
            .filter(|(i, (s, _))| **i > current - BUCKETS && *s > 0.0)
            .min_by_key(|(i, _)| **i)
            .map(|(_, (_, first))| *first);
        let reset = (oldest.unwrap_or(start) + window) as i64;
        meter.announced_reset = Some(reset);
        (sum, reset)
    }
}

impl FakePortal {
    /// From now on every successful call of `method` costs `cost` of operating time (the
    /// fake's methods take none of their own).
    pub fn set_operating_cost(&self, method: &str, cost: Duration) {
        self.shared.lock().operating_costs.insert(method.to_owned(), cost);
    }

    /// Spends `seconds` of `method`'s operating time now, as the app's other callers on the
    /// portal would (its frontend, another host): the host's next call may find it blocked.
    pub fn spend_operating(&self, method: &str, seconds: Duration) {
        let now = super::state::unix_now();
        self.shared.lock().operating_charge(method, now, seconds.as_secs_f64());
    }

    /// `method`'s operating time over the window now, seconds.
    pub fn operating(&self, method: &str) -> f64 {
        self.shared.lock().operating_sum(method, super::state::unix_now())
    }

    /// How many calls of `method` were refused with 429 `OPERATION_TIME_LIMIT`.
    pub fn operating_refusals(&self, method: &str) -> usize {
        self.shared.lock().meters.get(method).map_or(0, |m| m.refused)
    }

    /// How many calls of `method` arrived after it was refused and before the
    /// `operating_reset_at` the portal had announced for it by then.
    pub fn early_calls(&self, method: &str) -> usize {
        self.shared.lock().meters.get(method).map_or(0, |m| m.early)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fake_portal::testkit::*;

    #[test]
    fn fake_portal_blocks_a_method_over_its_operating_time_until_its_oldest_bucket_leaves() {
        let portal = FakePortal::start(PortalOptions {
            operating_limit: Duration::from_secs(2),
            operating_window: Duration::from_secs(4),
            ..Default::default()
        });
        let id = portal.add_field("CRM_DEAL", "UF_CRM_T", "string", vec![]);
        let token = portal.issue_access_token();
        let get = |method: &str| post(&portal, method, json!({"id": id, "auth": token}));
        portal.set_operating_cost("crm.deal.userfield.get", Duration::from_millis(1500));
        let first = get("crm.deal.userfield.get");
        assert_eq!(first.status, 200);
        assert_eq!(first.json["time"]["operating"], 1.5);
        let reset = first.json["time"]["operating_reset_at"].as_i64().unwrap();
        let now = crate::fake_portal::state::unix_now();
        assert!(reset as f64 <= now + 4.0 && reset as f64 >= now + 2.0, "{reset} {now}");
        // Under the limit before the call: it runs, and the sum goes over.
        let second = get("crm.deal.userfield.get");
        assert_eq!((second.status, second.json["time"]["operating"].as_f64()), (200, Some(3.0)));
        assert_eq!(second.json["time"]["operating_reset_at"].as_i64(), Some(reset));
        // Over it: refused, without a time block; other methods still answer.
        let third = get("crm.deal.userfield.get");
        assert_eq!(third.status, 429);
        assert_eq!(third.json["error"], "OPERATION_TIME_LIMIT");
        assert_eq!(
            third.json["error_description"],
            "Method is blocked due to operation time limit."
        );
        assert!(third.json.get("time").is_none());
        assert_eq!(get("crm.lead.userfield.get").status, 400, "another method is not blocked");
        // Asked again before the announced reset: an early call.
        assert_eq!(get("crm.deal.userfield.get").status, 429);
        assert_eq!(
            (
                portal.operating_refusals("crm.deal.userfield.get"),
                portal.early_calls("crm.deal.userfield.get")
            ),
            (2, 1)
        );
        // Once the buckets left the window, it answers again.
        let mut waited = 0;
        while get("crm.deal.userfield.get").status == 429 {
            std::thread::sleep(Duration::from_millis(200));
            waited += 1;
            assert!(waited < 50, "never unblocked");
        }
        assert!(crate::fake_portal::state::unix_now() >= reset as f64 - 1.0);
        // Time spent by others counts the same.
        portal.spend_operating("crm.lead.userfield.get", Duration::from_secs(3));
        assert!(portal.operating("crm.lead.userfield.get") >= 3.0);
        assert_eq!(get("crm.lead.userfield.get").status, 429);
    }
}
