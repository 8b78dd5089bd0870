//! Dispatch: one worker per loaded plugin takes that plugin's pending events from the journal
//! and calls the plugin. A slow, failing or panicking plugin only ever delays itself. The
//! supervisor (`crate::supervisor`) starts, swaps and stops the workers.
//!
//! - [`convert`]: decoded event -> stable-ABI view.
//! - [`instance`]: the live plugin instance, in this process (re-created after a panic) or in
//!   a runner process (`crate::runner`).
//! - [`worker`]: ordered delivery, timeouts, retries with back-off, outcomes.
//! - [`host_services`]: what plugins can ask of the host.
//! - [`crash`]: poison events: a delivery that ended with a process dying, `max_crashes`.
//! - [`inflight`]: an in-process plugin's record of the events its lanes are calling, read at
//!   the next start to count a crash of the host.
//! - [`pause`]: a paused plugin's lanes wait at its gate; `pause_after_failures`' breaker.

pub mod convert;
pub mod crash;
pub mod host_services;
pub mod inflight;
pub mod instance;
pub mod pause;
pub mod worker;

pub use instance::{Instance, PluginStatus};
pub use worker::Worker;
