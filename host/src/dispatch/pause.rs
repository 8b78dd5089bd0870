//! A worker's side of a paused plugin (`journal::pause`): the gate its lanes wait at before
//! they start anything, and its circuit breaker (`plugin.<name>.pause_after_failures`).
//!
//! **The gate.** A lane looks at the plugin's pause where it takes its next event and before
//! each attempt: while the plugin is paused it starts nothing (a call in flight finishes; an
//! event waiting out its back-off waits on, its attempt made once the plugin is resumed), so
//! its events stay pending in the journal, in order.
//!
//! **The circuit breaker.** With `pause_after_failures = N` the plugin pauses itself after N
//! failed calls in a row, and stays paused (across restarts: the pause is stored) until an
//! operator resumes it. A failed call is one that ended in a retry, a rejection, a panic, or
//! its runner dying (a crash, `memory_limit_mb`, a kill past `kill_after_ms`). A `Done` or
//! `Skipped` starts the count again; so does a resume. Not counted either way: a retry while a
//! Bitrix24 limit held the event's REST calls (the portal's limit lifts by itself, it says
//! nothing of the plugin's downstream), an http plugin's target that could not be reached (its
//! events wait without using attempts, so there is nothing to stop), and calls cut short by a
//! shutdown, a disabled plugin or an operator's skip. An http target's 5xx, 408 or 429 counts. The count is per host process: a restart starts it again.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use b24_plugin_api::{ErrorKind, Outcome};
use tokio::runtime::Handle;

use crate::{
    call::CallError,
    journal::{Pause, Reporter, now_ms},
    metrics::{Metrics, PluginLabel},
};

/// How often a lane held by a pause looks whether its plugin was resumed.
const LOOK: Duration = Duration::from_millis(50);

/// Blocks the calling lane while its plugin is paused; returns at once when it is not, and as
/// soon as delivery stops (`stopping`: the host shuts down or the plugin was disabled).
pub fn hold(reporter: &Reporter, runtime: &Handle, stopping: impl Fn() -> bool) {
    if !reporter.is_paused() {
        return;
    }
    runtime.block_on(async {
        while reporter.is_paused() && !stopping() {
            tokio::time::sleep(LOOK).await;
        }
    });
}

/// What one call says to the circuit breaker.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Done or Skipped: the count starts again.
    Fine,
    /// A failure, with its error text.
    Failed(String),
    /// Neither (see the module docs).
    Uncounted,
}

/// What the breaker makes of a call's `result`; `held`: until when a Bitrix24 limit held the
/// event's REST calls, if one did.
fn verdict(result: &Result<Outcome, CallError>, held: Option<i64>) -> Verdict {
    match result {
        Ok(_) => Verdict::Fine,
        Err(CallError::Plugin(e))
            if e.kind == ErrorKind::Retry && held.is_some_and(|until| until > now_ms()) =>
        {
            Verdict::Uncounted
        }
        Err(CallError::Plugin(e)) => Verdict::Failed(e.to_string()),
        Err(CallError::Crashed(reason)) => {
            Verdict::Failed(format!("plugin process died: {reason}"))
        }
        Err(CallError::Retry { message, counted: true, .. }) => Verdict::Failed(message.clone()),
        // An http target that could not be reached: like a Bitrix24 limit, it uses no attempt.
        Err(CallError::Retry { counted: false, .. }) => Verdict::Uncounted,
        Err(CallError::Abandoned | CallError::Interrupted(_)) => Verdict::Uncounted,
    }
}

/// The consecutive failures of one plugin's calls (its worker has one).
pub struct Breaker {
    plugin: String,
    metrics: Arc<Metrics>,
    /// Failures in a row, and the resume they were counted after.
    count: Mutex<(u32, u64)>,
}

impl Breaker {
    /// The breaker of `plugin`.
    pub fn new(plugin: &str, metrics: Arc<Metrics>) -> Breaker {
        Breaker { plugin: plugin.to_owned(), metrics, count: Mutex::new((0, 0)) }
    }

    /// Counts one call that ended with `result` (see [`verdict`]); when it is the `limit`-th
    /// failure in a row (`pause_after_failures`), pauses the plugin: the metric
    /// `b24_plugin_auto_pauses_total`, the pause stored through the journal (waited for on this
    /// lane, which would wait at the gate next anyway), then a WARN line.
    pub fn after_call(
        &self,
        limit: Option<u32>,
        result: &Result<Outcome, CallError>,
        held: Option<i64>,
        reporter: &Reporter,
        runtime: &Handle,
    ) {
        let counted =
            self.count(limit, verdict(result, held), reporter.resumes(), reporter.is_paused());
        let Some(pause) = counted else { return };
        let Some(failures) = limit else { return };
        let last_error = match &pause.cause {
            crate::journal::pause::Cause::Failures { last_error, .. } => last_error.clone(),
            crate::journal::pause::Cause::Operator { .. } => String::new(),
        };
        // Honoured (and stored) before the WARN line says so: whoever reads the line and then
        // asks /readyz or `journal stats` sees the pause.
        self.metrics.auto_pauses.get_or_create(&PluginLabel { plugin: self.plugin.clone() }).inc();
        if let Err(e) = runtime.block_on(reporter.pause(pause)) {
            tracing::error!(
                plugin = %self.plugin,
                "cannot store the plugin's pause ({e}); this host honours it until it stops"
            );
        }
        tracing::warn!(
            plugin = %self.plugin,
            failures,
            last_error = last_error.as_str(),
            "the plugin failed {failures} calls in a row (pause_after_failures) and paused itself; \
             its events wait in the journal: once its cause is fixed, resume it with \
             `b24-host plugin resume {}` (or the console's Plugins page)",
            self.plugin
        );
    }

    /// Counts `verdict` (`resumes`: the plugin's resumes so far; `paused`: whether it is now);
    /// the pause to make, when this failure is the `limit`-th in a row and the plugin is not
    /// paused already.
    fn count(
        &self,
        limit: Option<u32>,
        verdict: Verdict,
        resumes: u64,
        paused: bool,
    ) -> Option<Pause> {
        let limit = limit?;
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        // A resume forgives the failures before it.
        if count.1 != resumes {
            *count = (0, resumes);
        }
        match verdict {
            Verdict::Fine => count.0 = 0,
            Verdict::Uncounted => {}
            Verdict::Failed(error) => {
                count.0 = count.0.saturating_add(1);
                if count.0 == limit && !paused {
                    return Some(Pause::after_failures(limit, &error));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use b24_plugin_api::PluginError;

    #[test]
    fn failures_count_and_limits_do_not() {
        let retry = Err(CallError::Plugin(PluginError::retry("downstream is down")));
        assert!(
            matches!(verdict(&retry, None), Verdict::Failed(e) if e.contains("downstream is down"))
        );
        assert_eq!(verdict(&retry, Some(now_ms() + 60_000)), Verdict::Uncounted);
        assert!(matches!(verdict(&retry, Some(now_ms() - 1)), Verdict::Failed(_)));
        let reject = Err(CallError::Plugin(PluginError::reject("bad")));
        assert!(matches!(verdict(&reject, Some(now_ms() + 60_000)), Verdict::Failed(_)));
        let died = Err(CallError::Crashed("killed: ran past kill_after_ms".into()));
        assert_eq!(
            verdict(&died, None),
            Verdict::Failed("plugin process died: killed: ran past kill_after_ms".into())
        );
        assert_eq!(verdict(&Err(CallError::Abandoned), None), Verdict::Uncounted);
        assert_eq!(verdict(&Err(CallError::Interrupted("x".into())), None), Verdict::Uncounted);
        assert_eq!(verdict(&Ok(Outcome::Skipped), None), Verdict::Fine);
    }

    #[test]
    fn the_nth_failure_in_a_row_pauses_once_and_a_success_or_a_resume_starts_again() {
        let breaker = Breaker::new("p", Arc::new(Metrics::new()));
        let failed = || Verdict::Failed("503 from the CRM".into());
        assert_eq!(breaker.count(None, failed(), 0, false), None, "no limit: never");
        assert_eq!(breaker.count(Some(3), failed(), 0, false), None);
        assert_eq!(breaker.count(Some(3), failed(), 0, false), None);
        assert_eq!(breaker.count(Some(3), Verdict::Fine, 0, false), None, "a success resets");
        assert_eq!(breaker.count(Some(3), failed(), 0, false), None);
        assert_eq!(breaker.count(Some(3), Verdict::Uncounted, 0, false), None);
        assert_eq!(breaker.count(Some(3), failed(), 0, false), None);
        let pause = breaker.count(Some(3), failed(), 0, false).expect("the third in a row pauses");
        assert_eq!(pause.describe(), "paused after 3 consecutive failures: 503 from the CRM");
        // Paused: more failures (calls that were in flight) pause nothing again.
        assert_eq!(breaker.count(Some(3), failed(), 0, true), None);
        // Resumed: three new failures are needed.
        assert_eq!(breaker.count(Some(3), failed(), 1, false), None);
        assert_eq!(breaker.count(Some(3), failed(), 1, false), None);
        assert!(breaker.count(Some(3), failed(), 1, false).is_some());
    }
}
