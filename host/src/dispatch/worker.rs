//! A plugin's delivery worker: takes the plugin's pending events from the journal in id
//! order, calls the plugin on a blocking thread, watches the timeout, and reports each outcome
//! back: done, failed (kept, with exponential back-off and jitter) or given up (dead letter).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use b24_plugin_api::{ErrorKind, Outcome, PluginError};
use rand::Rng;
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::Instrument;

use super::{
    convert::{PluginEvent, plugin_event},
    instance::{Instance, PluginStatus},
};
use crate::{
    config::{PluginConfig, RetryConfig},
    journal::{Consumer, DeadLetter, Delivery, Pending, Reporter, now_ms},
    metrics::{Metrics, PluginLabel},
    rest::{self, EventContext},
    route::Route,
};

/// Everything a worker needs to deliver to one plugin. A reload swaps the instance, route and
/// settings in place; deliveries already running finish with what they started with.
pub struct Worker {
    /// The plugin's name.
    pub name: String,
    instance: Mutex<Arc<Instance>>,
    route: Mutex<Route>,
    config: Mutex<PluginConfig>,
    metrics: Arc<Metrics>,
}

fn locked<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Worker {
    /// A worker for `name`.
    pub fn new(
        name: String,
        instance: Arc<Instance>,
        route: Route,
        config: PluginConfig,
        metrics: Arc<Metrics>,
    ) -> Worker {
        Worker {
            name,
            instance: Mutex::new(instance),
            route: Mutex::new(route),
            config: Mutex::new(config),
            metrics,
        }
    }

    fn label(&self) -> PluginLabel {
        PluginLabel { plugin: self.name.clone() }
    }

    /// The live instance.
    pub fn instance(&self) -> Arc<Instance> {
        locked(&self.instance)
    }

    /// The plugin's route.
    pub fn route(&self) -> Route {
        locked(&self.route)
    }

    /// The plugin's host-side settings.
    pub fn config(&self) -> PluginConfig {
        locked(&self.config)
    }

    /// Swaps in a new instance (a reload); calls already running finish on the old one, which
    /// is shut down when the last of them ends.
    pub fn swap(&self, instance: Arc<Instance>, route: Route, config: PluginConfig) {
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = instance;
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = route;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Delivers the plugin's events until the journal closes; calls in flight then finish.
    pub async fn run(self: Arc<Self>, mut consumer: Consumer) {
        let config = self.config();
        let concurrency =
            if self.instance().plugin().concurrent { config.concurrency.max(1) } else { 1 };
        let slots = Arc::new(Semaphore::new(concurrency));
        let reporter = consumer.reporter();
        let mut running = JoinSet::new();
        while let Some(delivery) = consumer.next().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let worker = self.clone();
            let reporter = reporter.clone();
            let envelope = &delivery.envelope;
            let span = tracing::info_span!(
                "deliver",
                plugin = %self.name,
                event_id = envelope.id,
                member_id = %envelope.event.auth.member_id,
                code = %envelope.event.code,
            );
            running.spawn(
                async move {
                    worker.deliver(delivery, &reporter).await;
                    drop(slot);
                }
                .instrument(span),
            );
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    /// Delivers one event until it succeeds, is rejected, runs out of attempts, or the host
    /// shuts down (then it stays pending for the next start).
    async fn deliver(&self, delivery: Delivery, reporter: &Reporter) {
        let Delivery { envelope, attempts, next_at_ms } = delivery;
        let id = envelope.id;
        if !self.route().matches(&envelope.event) {
            reporter.complete(id);
            return;
        }
        let config = self.config();
        let retry = &config.retry;
        let mut attempt = attempts;
        let mut due = next_at_ms;
        loop {
            let wait = due - now_ms();
            if wait > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    () = reporter.closed() => return,
                }
            }
            if reporter.is_closed() {
                return;
            }
            attempt += 1;
            let event = Arc::new(plugin_event(&envelope, attempt));
            let context = Arc::new(EventContext::of(&envelope.event));
            let started = Instant::now();
            let result = self.call(event, context, &config).await;
            let seconds = started.elapsed().as_secs_f64();
            let label = match &result {
                Ok(Outcome::Done) => "done",
                Ok(Outcome::Skipped) => "skipped",
                Err(e) => match e.kind {
                    ErrorKind::Retry => "retry",
                    ErrorKind::Reject => "reject",
                    ErrorKind::Panicked => "panicked",
                },
            };
            self.metrics.call(&self.name, label, seconds);
            let error = match result {
                Ok(outcome) => {
                    tracing::debug!(
                        attempt,
                        ?outcome,
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "delivered"
                    );
                    reporter.complete(id);
                    return;
                }
                Err(error) => error,
            };
            match error.kind {
                ErrorKind::Reject => {
                    tracing::error!(attempt, reason = %error.message, "plugin rejected the event; moved to its dead letters");
                    reporter.bury(id, dead(format!("rejected: {}", error.message), attempt));
                    self.metrics.dead_letters.get_or_create(&self.label()).inc();
                    return;
                }
                ErrorKind::Panicked => {
                    tracing::error!(attempt, panic = %error.message, "plugin panicked; re-creating its instance");
                    let instance = self.instance();
                    match tokio::task::spawn_blocking(move || instance.recreate()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!("cannot re-create the plugin: {e}"),
                        Err(e) => tracing::error!("cannot re-create the plugin: {e}"),
                    }
                }
                ErrorKind::Retry => {
                    tracing::warn!(attempt, reason = %error.message, "plugin asked to retry");
                }
            }
            if attempt >= retry.attempts {
                tracing::error!(
                    attempts = attempt,
                    "no attempts left; moved to the plugin's dead letters"
                );
                reporter
                    .bury(id, dead(format!("gave up after {attempt} attempts: {error}"), attempt));
                self.metrics.dead_letters.get_or_create(&self.label()).inc();
                return;
            }
            self.metrics.retries.get_or_create(&self.label()).inc();
            due = now_ms() + backoff(retry, attempt).as_millis() as i64;
            reporter.update(
                id,
                Pending { attempts: attempt, next_at_ms: due, last_error: error.to_string() },
            );
        }
    }

    /// One call on a blocking thread. Past `timeout_ms` the plugin is marked degraded and the
    /// worker keeps waiting: the call cannot be cancelled, and its outcome decides the event.
    async fn call(
        &self,
        event: Arc<PluginEvent>,
        context: Arc<EventContext>,
        config: &PluginConfig,
    ) -> Result<Outcome, PluginError> {
        let instance = self.instance();
        let plugin = instance.current();
        // The context tells REST calls made during the call which portal they are for.
        let mut call = tokio::task::spawn_blocking(move || {
            rest::context::with(context, || match &*event {
                PluginEvent::UserField(e) => plugin.on_user_field(e).into_result(),
                PluginEvent::Generic(e) => plugin.on_event(e).into_result(),
            })
        });
        let joined = match tokio::time::timeout(config.timeout, &mut call).await {
            Ok(joined) => {
                if instance.set_status(PluginStatus::Ready) == PluginStatus::Degraded {
                    tracing::info!("plugin answers within its timeout again");
                }
                joined
            }
            Err(_) => {
                instance.set_status(PluginStatus::Degraded);
                tracing::warn!(
                    timeout_ms = config.timeout.as_millis() as u64,
                    "plugin call exceeded its timeout; plugin marked degraded, still waiting for it"
                );
                call.await
            }
        };
        joined.unwrap_or_else(|e| {
            Err(PluginError {
                kind: ErrorKind::Panicked,
                message: format!("call failed: {e}").into(),
            })
        })
    }
}

fn dead(reason: String, attempts: u32) -> DeadLetter {
    DeadLetter { reason, attempts, at_ms: now_ms() }
}

/// The wait before attempt `attempt + 1`: `base * 2^(attempt-1)` capped at `cap`, then
/// jittered into its upper half so that retries of many events spread out.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = retry.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(retry.cap);
    let half = full / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let retry = RetryConfig {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = backoff(&retry, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&retry, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&retry, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }
}
