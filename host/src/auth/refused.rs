//! Installs the host refused, kept for the console: Bitrix24 never sends an install again, so
//! the operator must see which portal tried, when and why, to act (list the portal in
//! `[auth.portals]`, fix the OAuth settings, reinstall the app). In memory, per host, the
//! latest [`KEPT`] portals (a portal refused again moves to the front); the log has them all.
//! What is kept came from an unauthenticated request: it is cut short, and the console escapes
//! it like any text.

use std::{collections::VecDeque, sync::Mutex};

use super::InstallError;

/// How many refused portals are kept.
pub const KEPT: usize = 20;
/// The longest `member_id` or domain kept (longer ones are cut).
const MAX_TEXT: usize = 100;

/// One refused install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedInstall {
    /// The portal's `member_id`, as the install claimed it.
    pub member_id: String,
    /// Its domain, as the install claimed it.
    pub domain: String,
    /// The reason label, as `/metrics` counts it ([`InstallError::reason`]).
    pub reason: &'static str,
    /// The reason in words (no token).
    pub detail: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// The latest refused installs, newest first.
#[derive(Default)]
pub struct RefusedInstalls {
    latest: Mutex<VecDeque<RefusedInstall>>,
}

impl RefusedInstalls {
    /// Remembers that the install of `member_id` (`domain`) was refused with `error` at `at_ms`.
    pub fn record(&self, member_id: &str, domain: &str, error: &InstallError, at_ms: i64) {
        let cut = |s: &str| s.chars().take(MAX_TEXT).collect::<String>();
        let entry = RefusedInstall {
            member_id: cut(member_id),
            domain: cut(domain),
            reason: error.reason(),
            detail: error.to_string(),
            at_ms,
        };
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.retain(|r| r.member_id != entry.member_id);
        latest.push_front(entry);
        latest.truncate(KEPT);
    }

    /// The refused installs, newest first.
    pub fn list(&self) -> Vec<RefusedInstall> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_refusal_of_each_portal_is_kept_newest_first_and_bounded() {
        let refused = RefusedInstalls::default();
        refused.record("a", "a.bitrix24.com", &InstallError::NoRefreshToken, 1);
        refused.record("b", "b.bitrix24.com", &InstallError::NoCredentials, 2);
        refused.record("a", "a.bitrix24.com", &InstallError::RateLimited, 3);
        let list = refused.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].member_id.as_str(), list[0].reason, list[0].at_ms),
            ("a", "rate_limited", 3)
        );
        assert_eq!((list[1].member_id.as_str(), list[1].reason), ("b", "no_credentials"));
        for n in 0..50 {
            refused.record(&format!("m{n}"), &"x".repeat(500), &InstallError::NoRefreshToken, n);
        }
        let list = refused.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].member_id, "m49");
        assert_eq!(list[0].domain.len(), MAX_TEXT);
    }
}
