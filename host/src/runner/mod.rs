//! Runner processes: a plugin with `isolation = "process"` (the default) runs in a process of
//! its own, the same `b24-host` binary started as `b24-host runner` (a hidden subcommand), so
//! a crash, an abort, `exit()`, an endless call or a leak ends the runner, never the host.
//!
//! - [`protocol`]: the frames on the socketpair (descriptor 3 in the runner, never stdout).
//! - [`child`]: the runner process: loads the library through [`crate::loader`], calls the
//!   plugin on lane threads, sends `HostServices` calls back to the host.
//! - [`handle`]: the host's side: starts the runner, forwards calls and the plugin's log and
//!   REST calls, restarts a runner that died (with back-off), kills one on `kill_after_ms`,
//!   reads its stdout and stderr into the log, and says why it died.
//! - [`group`]: a supervised child's side (the runner's, the exec shim's): die with the host
//!   and take the whole group along.
//! - [`process`]: what supervises any child program, not only the runner: its own process
//!   group, a watch on the process itself, the group killed with it, death with the host, the
//!   restart back-off.

pub mod child;
pub mod group;
pub mod handle;
pub mod lines;
pub mod process;
pub mod protocol;
pub mod shim;

pub use handle::{
    BatchItem, BatchOutcome, ExecProgram, Program, RunnerHandle, RunnerSpec, RunnerState,
};

/// How long a runner that is told to shut down may take before it is killed (reloads and
/// disabled plugins; the host's own shutdown uses what is left of `shutdown_grace_ms`).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
