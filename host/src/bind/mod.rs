//! The binder: keeps each portal's event bindings in step with what the plugins receive, so
//! events flow from the install on without anyone calling `event.bind` by hand.
//!
//! With `[bind] handler` set, a pass ([`pass`]) binds what is missing on a portal after every
//! verified `ONAPPINSTALL` and `ONAPPUPDATE` (Bitrix24 deletes an app's bindings on update and
//! uninstall), at start, after a live reload that changes the codes the plugins receive, and
//! on `b24-host bind`. Every pass also reads `app.info`: a portal whose installation was never
//! finished sends no events, and `check`, the console and `/metrics` say so (this part runs
//! without a handler too). Between those, each known portal is checked (not bound) every 10
//! minutes, every minute while its installation is not finished.
//!
//! Passes run on one task, off the request path: ingress only drops a job in a queue. Jobs for
//! one portal that wait together become one pass. A pass the portal did not answer (503, 429,
//! a timeout) is tried again after 5 s, doubling up to 5 minutes.
//!
//! - [`plan`]: what is needed, what is ours, "bound already" (pure, tested).
//! - [`pass`]: one pass over one portal.
//! - [`report`]: what a pass found, for the command, the console and the metrics.

pub mod pass;
pub mod plan;
pub mod report;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    config::Config,
    journal::now_ms,
    metrics::Metrics,
    portal_metrics::PortalLabel,
    rest::RestClient,
    route::{Router, Routes},
};
pub use pass::{Mode, Settings};
pub use plan::{Binding, already_bound};
pub use report::PortalBindings;

/// How often a portal is checked when nothing else asks.
const CHECK_EVERY: Duration = Duration::from_secs(600);
/// ... and while its installation is not finished.
const CHECK_UNFINISHED_EVERY: Duration = Duration::from_secs(60);
/// The first wait before a pass the portal did not answer is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The domain in a portal's REST address (`https://acme.bitrix24.com/rest/` -> `acme.bitrix24.com`,
/// with its port when it has one).
pub fn portal_domain(client_endpoint: &str) -> Option<String> {
    let url = url::Url::parse(client_endpoint).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

struct Job {
    member: String,
    mode: Mode,
    reply: Option<oneshot::Sender<PortalBindings>>,
}

/// The running binder (see the module docs).
pub struct Binder {
    settings: Settings,
    rest: Arc<RestClient>,
    router: Router,
    metrics: Arc<Metrics>,
    /// The portals it looks after: in host.toml, learned, or installed since the start.
    portals: Mutex<BTreeSet<String>>,
    reports: Mutex<BTreeMap<String, PortalBindings>>,
    jobs: mpsc::UnboundedSender<Job>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Binder {
    /// Starts the binder for the portals of `config` (`[auth.portals]`, `[rest.portals]`) and
    /// the `learned` ones, and a first pass over each: binding with a handler, else a check.
    pub fn start(
        config: &Config,
        rest: Arc<RestClient>,
        router: Router,
        metrics: Arc<Metrics>,
        learned: impl IntoIterator<Item = String>,
    ) -> Arc<Binder> {
        let settings = Settings {
            handler: config.bind.handler.clone(),
            prune: config.bind.prune,
            nudge_min_timeout_s: config.bind.nudge_min_timeout_s,
            offline: config
                .rest
                .portals
                .iter()
                .filter(|(_, p)| p.offline.as_ref().is_some_and(|o| o.enabled))
                .map(|(member, _)| member.clone())
                .collect(),
        };
        let portals: BTreeSet<String> = config
            .auth
            .portals
            .keys()
            .chain(config.rest.portals.keys())
            .cloned()
            .chain(learned)
            .collect();
        let (jobs, queue) = mpsc::unbounded_channel();
        let binder = Arc::new(Binder {
            settings,
            rest,
            router,
            metrics,
            portals: Mutex::new(portals),
            reports: Mutex::new(BTreeMap::new()),
            jobs,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(work(binder.clone(), queue));
        *binder.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        binder
    }

    /// The handler URL it binds, if binding is on.
    pub fn handler(&self) -> Option<&str> {
        self.settings.handler.as_deref()
    }

    /// A verified `ONAPPINSTALL` or `ONAPPUPDATE` of `member` was accepted: bind (or check)
    /// its portal soon. Never waits.
    pub fn installed(&self, member: &str) {
        self.portals.lock().unwrap_or_else(|p| p.into_inner()).insert(member.to_owned());
        self.enqueue(member, self.default_mode(), None);
    }

    /// A verified `ONAPPUNINSTALL`: the portal deleted the app's bindings; forget it.
    pub fn uninstalled(&self, member: &str) {
        self.portals.lock().unwrap_or_else(|p| p.into_inner()).remove(member);
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).remove(member);
        self.metrics.portals.forget(member);
    }

    /// Runs a pass over `portal` (every known one when `None`) now and returns the reports.
    pub async fn run(&self, portal: Option<String>, mode: Mode) -> Vec<PortalBindings> {
        let members: Vec<String> = match portal {
            Some(member) => vec![member],
            None => {
                self.portals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
            }
        };
        let mut waiting = Vec::new();
        for member in members {
            let (reply, answer) = oneshot::channel();
            self.enqueue(&member, mode, Some(reply));
            waiting.push(answer);
        }
        let mut out = Vec::new();
        for answer in waiting {
            if let Ok(report) = answer.await {
                out.push(report);
            }
        }
        out
    }

    /// The last report of every portal.
    pub fn reports(&self) -> Vec<PortalBindings> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Stops the binder's task (a pass in progress is abandoned).
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    fn default_mode(&self) -> Mode {
        if self.settings.handler.is_some() { Mode::Bind } else { Mode::Check }
    }

    fn enqueue(&self, member: &str, mode: Mode, reply: Option<oneshot::Sender<PortalBindings>>) {
        let _ = self.jobs.send(Job { member: member.to_owned(), mode, reply });
    }

    fn record(&self, report: &PortalBindings) {
        let label = PortalLabel { portal: report.member_id.clone() };
        let portals = &self.metrics.portals;
        if report.domain.is_some() && self.settings.handler.is_some() {
            portals.bindings_missing.get_or_create(&label).set(report.missing.len() as i64);
        }
        if let Some(installed) = report.installed {
            portals.installation_finished.get_or_create(&label).set(i64::from(installed));
            if !installed {
                tracing::warn!(member_id = %report.member_id, "the app's installation on this portal is not finished (app.info INSTALLED is false): the portal sends no events until installFinish is called");
            }
        }
        if !report.missing.is_empty() && report.domain.is_some() {
            let missing: Vec<String> = report.missing.iter().map(|b| b.to_string()).collect();
            tracing::warn!(member_id = %report.member_id, missing = %missing.join(", "), "bindings missing on the portal");
        }
        for glob in &report.unexpanded {
            tracing::warn!(member_id = %report.member_id, "cannot bind {glob}: it matches no event code the host knows; name the codes in plugin.<name>.events");
        }
        let known =
            self.portals.lock().unwrap_or_else(|p| p.into_inner()).contains(&report.member_id);
        if known {
            self.reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(report.member_id.clone(), report.clone());
        }
    }

    /// The portals due for a periodic check.
    fn due(&self) -> Vec<String> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        self.portals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|member| {
                match reports.get(*member).and_then(|r| r.checked_at_ms.map(|at| (r, at))) {
                    None => false,
                    Some((report, at)) => {
                        let every = if report.installed == Some(false) {
                            CHECK_UNFINISHED_EVERY
                        } else {
                            CHECK_EVERY
                        };
                        now - at >= every.as_millis() as i64
                    }
                }
            })
            .cloned()
            .collect()
    }
}

/// The codes the routes stand for, to tell a reload that changes them from one that does not.
fn fingerprint(routes: &Routes) -> (BTreeSet<String>, Vec<String>) {
    let wanted = plan::plugin_codes(routes, None);
    (wanted.codes, wanted.unexpanded)
}

/// The binder's task: jobs, retries, reloads, periodic checks.
async fn work(binder: Arc<Binder>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut routes = binder.router.routes();
    let mut codes = fingerprint(&routes);
    let start: Vec<String> =
        binder.portals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    for member in start {
        binder.enqueue(&member, binder.default_mode(), None);
    }
    let mut backoff: HashMap<String, Duration> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        let first = tokio::select! {
            job = queue.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = tick.tick() => {
                ticks += 1;
                let now = binder.router.routes();
                if !Arc::ptr_eq(&now, &routes) {
                    routes = now;
                    let changed = fingerprint(&routes);
                    if changed != codes {
                        codes = changed;
                        if binder.settings.handler.is_some() {
                            tracing::info!("the plugins receive other events now: binding them on every portal");
                            let all: Vec<String> = binder.portals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
                            for member in all {
                                binder.enqueue(&member, Mode::Bind, None);
                            }
                        }
                    }
                }
                if ticks % 60 == 0 {
                    for member in binder.due() {
                        binder.enqueue(&member, Mode::Check, None);
                    }
                }
                continue;
            }
        };
        // Jobs waiting together: one pass per portal, binding if any of them asks to.
        let mut merged: BTreeMap<String, (Mode, Vec<oneshot::Sender<PortalBindings>>)> =
            BTreeMap::new();
        let mut add = |job: Job| {
            let entry = merged.entry(job.member).or_insert((job.mode, Vec::new()));
            entry.0 = entry.0.max(job.mode);
            entry.1.extend(job.reply);
        };
        add(first);
        while let Ok(job) = queue.try_recv() {
            add(job);
        }
        for (member, (mode, replies)) in merged {
            let routes = binder.router.routes();
            let outcome = pass::run(&binder.rest, &binder.settings, &routes, &member, mode).await;
            binder.record(&outcome.report);
            if outcome.retry && mode == Mode::Bind {
                let wait = backoff.get(&member).map_or(RETRY_FIRST, |w| (*w * 2).min(RETRY_CAP));
                backoff.insert(member.clone(), wait);
                tracing::warn!(member_id = %member, wait_s = wait.as_secs(), "the portal did not answer the binding pass; trying again later");
                let jobs = binder.jobs.clone();
                let again = member.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = jobs.send(Job { member: again, mode: Mode::Bind, reply: None });
                });
            } else if !outcome.retry {
                backoff.remove(&member);
            }
            for reply in replies {
                let _ = reply.send(outcome.report.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portals_domain_comes_from_its_rest_address() {
        assert_eq!(
            portal_domain("https://acme.bitrix24.com/rest/").as_deref(),
            Some("acme.bitrix24.com")
        );
        assert_eq!(portal_domain("http://127.0.0.1:8080/rest/").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(portal_domain("not a url"), None);
    }
}
