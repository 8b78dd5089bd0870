//! Dispatch: one worker per loaded plugin takes that plugin's pending events from the journal
//! and calls the plugin. A slow, failing or panicking plugin only ever delays itself. The
//! supervisor (`crate::supervisor`) starts, swaps and stops the workers.
//!
//! - [`instance`]: the live plugin instance, in this process (`crate::call::Local`, re-created
//!   after a panic), in a runner process (`crate::runner`) or at an http target
//!   (`crate::forward`).
//! - [`worker`]: ordered delivery, timeouts, retries with back-off, outcomes.
//! - [`crash`]: poison events: a delivery that ended with a process dying, `max_crashes`.
//! - [`inflight`]: an in-process plugin's record of the events its lanes are calling, read at
//!   the next start to count a crash of the host.
//! - [`pause`]: a paused plugin's lanes wait at its gate; `pause_after_failures`' breaker.

pub mod crash;
pub mod inflight;
pub mod instance;
pub mod pause;
pub mod worker;

pub use instance::{Instance, PluginStatus};
pub use worker::Worker;
