//! Deals: `crm.deal.get` over a small store the test fills ([`FakePortal::add_deal`]), and a
//! temporary failure a test arms for any method ([`FakePortal::fail_next_calls`]).
//!
//! `crm.deal.get` `{id}` answers the deal as Bitrix24 does: UPPER_CASE keys, every value a
//! string (ids too), `DATE_CREATE`/`DATE_MODIFY` in the portal's local time. A missing or
//! invalid id is 400 with an empty `error` and "ID is not defined or invalid."; an unknown one
//! 400 with an empty `error` and "Not found" (both verbatim from Bitrix24's documentation of
//! the method). An armed failure is what Bitrix24 answers when it breaks: HTTP 500
//! `INTERNAL_SERVER_ERROR` "Internal server error".

use serde_json::{Map, Value, json};

use super::{
    FakePortal,
    fields::param_id,
    state::{ApiError, CallResult, State, iso_local, unix_now},
};

/// A deal as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    /// `ID`.
    pub id: u64,
    /// `TITLE`.
    pub title: String,
    /// `STAGE_ID` (`NEW`, `PREPARATION`, `WON`, ...).
    pub stage_id: String,
    /// When it was made, unix seconds.
    pub created: i64,
}

impl Deal {
    fn upper(&self, offset_minutes: i32) -> Value {
        let at = iso_local(self.created, offset_minutes);
        json!({
            "ID": self.id.to_string(),
            "TITLE": self.title,
            "TYPE_ID": "SALE",
            "CATEGORY_ID": "0",
            "STAGE_ID": self.stage_id,
            "STAGE_SEMANTIC_ID": "P",
            "IS_NEW": "Y",
            "CURRENCY_ID": "USD",
            "OPPORTUNITY": "0.00",
            "ASSIGNED_BY_ID": "1",
            "CREATED_BY_ID": "1",
            "MODIFY_BY_ID": "1",
            "DATE_CREATE": at,
            "DATE_MODIFY": at,
            "OPENED": "Y",
            "CLOSED": "N",
        })
    }
}

impl FakePortal {
    /// Adds a deal at stage `stage_id`; returns its id (from 501 on).
    pub fn add_deal(&self, title: &str, stage_id: &str) -> u64 {
        let mut state = self.shared.lock();
        let id = state.next_deal_id;
        state.next_deal_id += 1;
        let deal = Deal {
            id,
            title: title.to_owned(),
            stage_id: stage_id.to_owned(),
            created: unix_now() as i64,
        };
        state.deals.insert(id, deal);
        id
    }

    /// The next `n` calls of `method` (lower case, without `.json`) that pass the rate limit
    /// and the token check fail with 500 `INTERNAL_SERVER_ERROR`, as a portal does when it
    /// breaks for a moment.
    pub fn fail_next_calls(&self, method: &str, n: usize) {
        self.shared.lock().failing_calls.insert(method.to_owned(), n);
    }
}

impl State {
    /// An armed failure of `method`, if any is left (it is used up).
    pub(super) fn armed_failure(&mut self, method: &str) -> Option<ApiError> {
        let left = self.failing_calls.get_mut(method).filter(|n| **n > 0)?;
        *left -= 1;
        Some(ApiError::new(500, "INTERNAL_SERVER_ERROR", "Internal server error"))
    }

    pub(super) fn call_deals(&mut self, method: &str, params: &Map<String, Value>) -> CallResult {
        debug_assert_eq!(method, "crm.deal.get");
        let id = param_id(params)?;
        match self.deals.get(&id) {
            Some(deal) => Ok((deal.upper(self.opts.utc_offset_minutes), Vec::new())),
            None => Err(ApiError::new(400, "", "Not found")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{PortalOptions, post};
    use super::*;

    #[test]
    fn a_deal_is_read_as_bitrix24_answers_and_a_failure_is_armed_once() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let id = portal.add_deal("Pipes for the plant", "PREPARATION");
        let a = post(&portal, "crm.deal.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["ID"], id.to_string());
        assert_eq!(a.json["result"]["TITLE"], "Pipes for the plant");
        assert_eq!(a.json["result"]["STAGE_ID"], "PREPARATION");
        let a = post(&portal, "crm.deal.get", json!({"ID": id.to_string(), "auth": token}));
        assert_eq!(a.status, 200, "ID in capitals, as a string: {}", a.json);
        let a = post(&portal, "crm.deal.get", json!({"id": 99_999, "auth": token}));
        assert_eq!(
            (a.status, &a.json["error"], &a.json["error_description"]),
            (400, &json!(""), &json!("Not found"))
        );
        let a = post(&portal, "crm.deal.get", json!({"auth": token}));
        assert_eq!(a.json["error_description"], "ID is not defined or invalid.");
        portal.fail_next_calls("crm.deal.get", 1);
        let a = post(&portal, "crm.deal.get", json!({"id": id, "auth": token}));
        assert_eq!((a.status, &a.json["error"]), (500, &json!("INTERNAL_SERVER_ERROR")));
        let a = post(&portal, "crm.deal.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 200, "only once: {}", a.json);
        assert_eq!(portal.calls("crm.deal.get"), 6);
    }
}
