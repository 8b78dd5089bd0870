//! File descriptors: the soft limit raised to the hard limit at start, and the connection caps
//! fitted under it, so that the caps, not the kernel, decide when a listener stops taking
//! connections, and the admin listener can never take the descriptors the event listener needs.
//!
//! Out of the limit, a share is kept for everything that is not a connection (the journal,
//! plugins and their runners, NATS, REST calls, the control socket): a quarter, at most
//! [`KEPT_FOR_OTHERS`]. The admin listener gets its cap and a few for the connections it is
//! refusing; the event listener the rest, up to `server.max_connections` and its refusals.

use std::io;

/// The most descriptors kept for uses other than connections.
pub const KEPT_FOR_OTHERS: u64 = 256;
/// The most connections the event listener answers 503 at once (each holds a descriptor for
/// up to half a second); past it a connection is closed without an answer.
pub const EVENT_REFUSALS: usize = 256;
/// The same for the admin listener.
pub const ADMIN_REFUSALS: usize = 8;

/// Raises the soft limit on open files to the hard limit. Returns (before, after).
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((before, raised.rlim_cur));
    }
    Ok((before, before))
}

/// How the open-file limit is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The open-file limit.
    pub limit: u64,
    /// Descriptors kept for everything but connections.
    pub kept: u64,
    /// Event connections served at once (at most `server.max_connections`).
    pub event: usize,
    /// Event connections being refused at once.
    pub event_refusals: usize,
    /// Admin connections served at once (`admin.max_connections`; 0 without the listener).
    pub admin: usize,
    /// Admin connections being refused at once.
    pub admin_refusals: usize,
}

impl Budget {
    /// Fits `event_max` event and `admin_max` admin connections (`None`: no admin listener)
    /// under `limit` open files. The admin listener's share comes first, being small; the event
    /// listener gets what is left, at least one connection whatever the limit.
    pub fn new(limit: u64, event_max: usize, admin_max: Option<usize>) -> Budget {
        let kept = (limit / 4).min(KEPT_FOR_OTHERS);
        let (admin, admin_refusals) = match admin_max {
            Some(n) => (n, ADMIN_REFUSALS),
            None => (0, 0),
        };
        let left = limit.saturating_sub(kept).saturating_sub((admin + admin_refusals) as u64);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        let event_refusals = (left / 8).min(EVENT_REFUSALS);
        let event = event_max.min(left - event_refusals).max(1);
        Budget { limit, kept, event, event_refusals, admin, admin_refusals }
    }
}

/// The process's open-file limit now (the soft one).
pub fn fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_limit_takes_the_configured_caps() {
        let b = Budget::new(1 << 20, 4096, Some(64));
        assert_eq!((b.event, b.event_refusals, b.admin, b.kept), (4096, 256, 64, 256));
    }

    #[test]
    fn a_low_limit_lowers_the_event_cap_and_everything_fits() {
        for limit in [256u64, 512, 1024, 4096, 5000] {
            let b = Budget::new(limit, 4096, Some(64));
            let used = b.kept as usize + b.event + b.event_refusals + b.admin + b.admin_refusals;
            assert!(used as u64 <= limit, "{b:?}");
            assert!(b.event > 0 && b.event_refusals > 0, "{b:?}");
            assert_eq!(b.admin, 64);
        }
        let b = Budget::new(1024, 4096, Some(64));
        assert_eq!((b.kept, b.event, b.event_refusals), (256, 609, 87));
        // Without an admin listener, its share goes to events.
        assert!(Budget::new(1024, 4096, None).event > b.event);
    }

    #[test]
    fn a_tiny_limit_still_takes_one_event_connection() {
        let b = Budget::new(50, 4096, Some(64));
        assert_eq!(b.event, 1);
    }
}
