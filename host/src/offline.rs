//! Offline events: pulls each configured portal's offline-event queue (`event.offline.*`) into
//! the journal, so that changes made while the host was down or unreachable still arrive.
//!
//! Safe mode (`clear=0`): `event.offline.get` reserves a batch under a `process_id`, which is
//! stored durably first; every row is journaled durably (as an `Event`/`UserFieldEvent` with
//! origin offline); only then `event.offline.clear` removes the rows from the portal. A row that
//! cannot be decoded goes back with `event.offline.error`. After a crash the stored
//! `process_id` fetches the same batch again, and the journal recognises rows it already has,
//! so each row reaches the plugins once per change. A portal answers a stored `process_id`
//! with the rows still held under it and reserves nothing new, so an empty answer means the
//! batch is gone (cleared, but the reply was lost or the host died right after): the poller
//! forgets the id and reserves afresh.
//!
//! Portals without the extended offline feature refuse `clear=0` (403 `WRONG_LICENSE` about
//! "extended offline events handling"); the poller then falls back to `clear=1` (rows leave the
//! portal when read, so a crash between that read and the journal write loses them) and says
//! so. Other refusals are reported (status `last_error` and the log), never a fallback: a plan
//! without `auth_connector`, a webhook (`WRONG_AUTH_TYPE`; the poller uses the app's OAuth
//! tokens only), a user who is not an administrator (`ACCESS_DENIED`).
//!
//! With several hosts on one shared log, one host at a time polls a portal: the poller holds
//! the journal's lease `offline.<member>` (renewed while it polls, released at stop); a host
//! not holding it waits for it to be given up or to expire, then takes over (the stored
//! `process_id` is shared, so it resumes the batch). An `ONOFFLINEEVENT` that reaches a host
//! not polling the portal wakes the holder through the log's connection
//! (`journal::State::announce_offline_rows`).
//!
//! The queue is the portal's connector queue: the REST client adds the portal's
//! `auth_connector` to every call. Who receives a row is decided by the live [`Router`].
//!
//! **Lost reservations.** `event.offline.get` reserves its rows before it answers; when the
//! answer is lost (a timeout, a crash before the `process_id` was stored) no later `get`
//! returns them, and the portal deletes them only after `PROCESS_ID_LIFETIME` (34 days). Now
//! and then (every `resume_lost_after / 2`, at least the poll interval, at most 5 minutes, and
//! after a failed `get`) the poller surveys the queue with `event.offline.list`: rows reserved
//! under a `process_id` it does not hold are noted, and one seen reserved for
//! `resume_lost_after` is taken over: stored as the poller's batch, then read, journaled and
//! cleared like any batch. The same survey lists the rows parked with `event.offline.error`
//! (`offline status`, the console).
//!
//! Rows carry no `auth` block: the journaled event gets the portal's domain from the stored
//! install's REST address, and the row's `EVENT_ADDITIONAL.user_id` as `user_id` in the
//! delivery's extra pairs (the plugin view makes it the event's user, see `call/convert.rs`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use b24_plugin_api::RestError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{
    bind::portal_domain,
    config::{Config, OfflineConfig},
    decode::{self, Format},
    journal::{Appended, Held, Log, State, now_ms},
    metrics::Metrics,
    portal_metrics::PortalLabel,
    rest::{EventContext, RestClient},
    route::Router,
};

/// What `offline status` shows for a portal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalStatus {
    /// The portal.
    pub member_id: String,
    /// `safe` (clear=0) or `clear` (the fallback).
    pub mode: String,
    /// When the last poll ended, ms since the epoch.
    pub last_poll_ms: Option<i64>,
    /// Rows journaled since the start.
    pub rows_pulled: u64,
    /// Rows the journal already had (a batch fetched again after a crash).
    pub duplicates: u64,
    /// Rows sent back with `event.offline.error`.
    pub rows_failed: u64,
    /// Polls that failed.
    pub errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// With a shared log: the host that polls the portal (its lease holder), if known.
    #[serde(default)]
    pub poller: Option<String>,
    /// Rows removed from the portal's queue with `event.offline.clear` (or read with `clear=1`).
    #[serde(default)]
    pub rows_cleared: u64,
    /// Since when (ms since the epoch) the oldest reservation on the queue that the poller
    /// knows of is held: its own batch, or one whose reply was lost; `None` when none.
    #[serde(default)]
    pub oldest_reservation_ms: Option<i64>,
    /// Batches whose reply was lost that the poller took over.
    #[serde(default)]
    pub lost_batches_resumed: u64,
    /// The rows parked on the portal with `event.offline.error`, as of the last survey (the
    /// first [`PARKED_SHOWN`]).
    #[serde(default)]
    pub parked: Vec<ParkedRow>,
    /// How many rows are parked (counted up to [`SURVEY_PAGES`] pages of 50).
    #[serde(default)]
    pub parked_total: u64,
    /// When the queue was last surveyed, ms since the epoch.
    #[serde(default)]
    pub surveyed_ms: Option<i64>,
}

/// A row parked on the portal's queue with `event.offline.error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRow {
    /// The row's `ID`.
    pub id: String,
    /// Its `MESSAGE_ID`.
    pub message_id: String,
    /// Its `EVENT_NAME`.
    pub event_name: String,
    /// Its `TIMESTAMP_X`.
    pub timestamp: String,
}

/// How many parked rows a status lists.
pub const PARKED_SHOWN: usize = 50;
/// Pages of `event.offline.list` (50 rows each) a survey reads at most per question.
pub const SURVEY_PAGES: u64 = 10;

/// The running pollers: one per portal with `offline` enabled.
#[derive(Default)]
pub struct Pollers {
    wakers: HashMap<String, Arc<Notify>>,
    status: Arc<Mutex<HashMap<String, PortalStatus>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Each poller's lease `offline.<member>`, given up at stop.
    leases: Mutex<Vec<Arc<Mutex<Option<Held>>>>>,
}

impl Pollers {
    /// Starts a poller for every portal whose `offline` table is enabled.
    pub fn start(
        config: &Config,
        rest: Arc<RestClient>,
        log: Log,
        state: State,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> Pollers {
        let mut pollers = Pollers::default();
        for (member, portal) in &config.rest.portals {
            let Some(offline) = portal.offline.clone().filter(|o| o.enabled) else { continue };
            let wake = Arc::new(Notify::new());
            pollers.wakers.insert(member.clone(), wake.clone());
            pollers.status.lock().unwrap_or_else(|p| p.into_inner()).insert(
                member.clone(),
                PortalStatus {
                    member_id: member.clone(),
                    mode: "safe".into(),
                    ..PortalStatus::default()
                },
            );
            metrics.portals.poller_started(member);
            let lease = Arc::new(Mutex::new(None));
            pollers.leases.lock().unwrap_or_else(|p| p.into_inner()).push(lease.clone());
            let poller = Poller {
                member: member.clone(),
                config: offline,
                rest: rest.clone(),
                log: log.clone(),
                state: state.clone(),
                router: router.clone(),
                status: pollers.status.clone(),
                safe: true,
                lease,
                metrics: metrics.clone(),
                foreign: BTreeMap::new(),
                batch_since: None,
                survey_due: true,
                last_survey: None,
            };
            pollers
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tokio::spawn(poller.run(wake)));
        }
        // With a shared log: other hosts' ONOFFLINEEVENTs for the portals polled here.
        let wakes = if pollers.wakers.is_empty() { None } else { state.offline_wakes() };
        if let Some(mut wakes) = wakes {
            let wakers = pollers.wakers.clone();
            let task = tokio::spawn(async move {
                while let Some(member) = wakes.recv().await {
                    if let Some(wake) = wakers.get(&member) {
                        wake.notify_one();
                    }
                }
            });
            pollers.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        }
        pollers
    }

    /// Wakes the poller of `member_id` now (an `ONOFFLINEEVENT` arrived).
    pub fn wake(&self, member_id: &str) {
        if let Some(wake) = self.wakers.get(member_id) {
            wake.notify_one();
        }
    }

    /// Every poller's status.
    pub fn status(&self) -> Vec<PortalStatus> {
        let mut out: Vec<_> =
            self.status.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        out.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        out
    }

    /// Stops every poller (a batch in progress is abandoned; its stored `process_id` resumes
    /// it at the next start).
    pub async fn stop(&self) {
        let tasks: Vec<_> =
            self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let leases: Vec<_> =
            self.leases.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for lease in leases {
            let held = lease.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(held) = held {
                held.release().await;
            }
        }
    }
}

struct Poller {
    member: String,
    config: OfflineConfig,
    rest: Arc<RestClient>,
    log: Log,
    state: State,
    router: Router,
    status: Arc<Mutex<HashMap<String, PortalStatus>>>,
    safe: bool,
    /// The lease `offline.<member>` while this host holds it.
    lease: Arc<Mutex<Option<Held>>>,
    metrics: Arc<Metrics>,
    /// Reservations of others (lost replies, or another poller's batch in progress) by
    /// `process_id`, with when each was first seen (ms since the epoch).
    foreign: BTreeMap<String, i64>,
    /// Since when this poller's stored batch is reserved (ms since the epoch).
    batch_since: Option<i64>,
    /// Survey at the next round (after a failed `get`, after parking rows, at start).
    survey_due: bool,
    /// When the last survey ran.
    last_survey: Option<tokio::time::Instant>,
}

/// How often a host that does not poll a portal (another host holds its lease) looks again.
const LEASE_RETRY: Duration = Duration::from_secs(3);

/// The journal state key of a portal's reserved batch.
fn process_key(member: &str) -> String {
    format!("offline_process:{member}")
}

/// What a refusal of an `event.offline.*` call means for the poller.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The plan lacks the extended offline mode: `clear=0` is refused, `clear=1` works.
    SafeModeUnlicensed,
    /// The plan lacks `auth_connector` support.
    ConnectorUnlicensed,
    /// Not the application's OAuth (a webhook).
    WrongAuthType,
    /// The user whose tokens the host holds is not a portal administrator.
    NotAdmin,
    /// Anything else.
    Other,
}

fn classify(e: &RestError) -> Refusal {
    let description = e.description.as_str().to_ascii_lowercase();
    match e.error.as_str() {
        "WRONG_LICENSE" if description.contains("extended offline events") => {
            Refusal::SafeModeUnlicensed
        }
        "WRONG_LICENSE" if description.contains("connector") => Refusal::ConnectorUnlicensed,
        "WRONG_AUTH_TYPE" => Refusal::WrongAuthType,
        "ACCESS_DENIED" => Refusal::NotAdmin,
        _ => Refusal::Other,
    }
}

/// The operator's reading of a failed `event.offline.*` call.
fn explain(member: &str, connector: Option<&str>, method: &str, e: &RestError) -> String {
    match classify(e) {
        Refusal::ConnectorUnlicensed => format!(
            "the portal's plan does not allow auth_connector {:?} ({e}): remove auth_connector from [rest.portals.\"{member}\".offline] or change the plan; the host does not fall back to another queue",
            connector.unwrap_or_default()
        ),
        Refusal::WrongAuthType => format!(
            "the portal refuses {method} with these credentials ({e}): the offline queue needs the application's OAuth tokens, a webhook cannot read it; install the app while the host runs"
        ),
        Refusal::NotAdmin => format!(
            "the portal refuses {method} ({e}): the user whose tokens the host holds is not a portal administrator; install the app again as an administrator"
        ),
        _ => format!("{method} failed: {e}"),
    }
}

impl Poller {
    async fn run(mut self, wake: Arc<Notify>) {
        loop {
            if !self.hold().await {
                continue;
            }
            if !self.installed().await {
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = wake.notified() => {}
                }
                continue;
            }
            if self.status_mode() == "not installed" {
                let mode = if self.safe { "safe" } else { "clear" };
                self.update(|s| s.mode = mode.into());
            }
            if self.safe {
                if self.survey_is_due()
                    && let Err(message) = self.survey().await
                {
                    tracing::warn!(member_id = %self.member, "offline queue survey failed: {message}");
                }
                if let Err(message) = self.take_over_lost().await {
                    tracing::warn!(member_id = %self.member, "{message}");
                }
            }
            // Pull until a batch comes back short, then wait for the interval or a wake-up.
            loop {
                match self.pull_once().await {
                    Ok(full) if full && self.holds() => continue,
                    Ok(_) => break,
                    Err(message) => {
                        tracing::warn!(member_id = %self.member, "offline poll failed: {message}");
                        self.metrics
                            .portals
                            .offline_poll_errors
                            .get_or_create(&PortalLabel { portal: self.member.clone() })
                            .inc();
                        self.update(|s| {
                            s.last_poll_ms = Some(now_ms());
                            s.errors += 1;
                            s.last_error = Some(message.clone());
                        });
                        // The reply may have been lost after the portal reserved rows.
                        self.survey_due = true;
                        break;
                    }
                }
            }
            self.export_reservations();
            tokio::select! {
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = wake.notified() => tracing::debug!(member_id = %self.member, "offline poll woken"),
            }
        }
    }

    fn lease_name(&self) -> String {
        format!("offline.{}", self.member)
    }

    /// Whether this host holds the portal's lease now.
    fn holds(&self) -> bool {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(Held::is_held)
    }

    /// Makes sure this host holds the portal's lease before it polls; `false` after waiting
    /// a little (`LEASE_RETRY`, at most the poll interval) when another host holds it.
    async fn hold(&self) -> bool {
        if self.holds() {
            return true;
        }
        let lost = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lost) = lost {
            tracing::warn!(member_id = %self.member, "this host lost the lease on polling the portal's offline queue");
            lost.release().await;
        }
        let name = self.lease_name();
        match self.state.lease(&name, Duration::ZERO).await {
            Ok(Some(held)) => {
                let me = self.state.host_id();
                if me.is_some() {
                    tracing::info!(member_id = %self.member, "this host polls the portal's offline queue now");
                }
                self.update(|s| s.poller = me);
                *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
                true
            }
            Ok(None) => {
                let holder = self.state.lease_holder(&name).await.ok().flatten();
                tracing::debug!(member_id = %self.member, ?holder, "another host polls the portal's offline queue");
                self.update(|s| s.poller = holder);
                // One read of the lease now and then (not a watch per portal): a released or
                // expired lease is taken within this.
                tokio::time::sleep(self.config.poll_interval.min(LEASE_RETRY)).await;
                false
            }
            Err(e) => {
                let message = format!("cannot take the lease on polling the portal: {e}");
                tracing::warn!(member_id = %self.member, "{message}");
                self.update(|s| {
                    s.errors += 1;
                    s.last_error = Some(message);
                });
                tokio::time::sleep(self.config.poll_interval).await;
                false
            }
        }
    }

    fn status_mode(&self) -> String {
        let all = self.status.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&self.member).map(|s| s.mode.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut PortalStatus)) {
        let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = all.get_mut(&self.member) {
            f(status);
        }
    }

    async fn context(&self) -> EventContext {
        let (client, server) = self.rest.stored_endpoints(&self.member).await;
        EventContext {
            member_id: self.member.clone(),
            // Rows carry no auth block: the domain is the stored install's.
            domain: client.as_deref().and_then(portal_domain).unwrap_or_default(),
            client_endpoint: client,
            server_endpoint: server,
            ..EventContext::app(&self.member)
        }
    }

    /// Whether the portal's app is installed (a pair is stored); else says why not in the
    /// status, without a REST call: an uninstalled portal is not polled (and nothing is
    /// refreshed for it) until an `ONAPPINSTALL` stores a new pair and wakes the poller.
    async fn installed(&self) -> bool {
        if self.rest.install(&self.member).await.is_some() {
            return true;
        }
        let why = match self.rest.uninstalled_at(&self.member).await {
            Some(_) => {
                "the app was uninstalled from the portal (ONAPPUNINSTALL): not polling until it is installed again"
            }
            None => {
                "no OAuth tokens stored for the portal: the offline queue needs the application's OAuth tokens (a webhook cannot read it); not polling until the app is installed (ONAPPINSTALL) while the host runs"
            }
        };
        self.update(|s| {
            s.mode = "not installed".into();
            s.last_poll_ms = Some(now_ms());
            s.last_error = Some(why.to_owned());
        });
        false
    }

    /// One `event.offline.get` and what follows; `Ok(true)` when the batch was full (more wait).
    async fn pull_once(&mut self) -> Result<bool, String> {
        let ctx = self.context().await;
        let resume = if self.safe {
            self.state
                .state(&process_key(&self.member))
                .await
                .map_err(|e| e.to_string())?
                .and_then(|v| String::from_utf8(v).ok())
        } else {
            None
        };
        let mut params =
            json!({ "limit": self.config.batch, "clear": if self.safe { 0 } else { 1 } });
        if let Some(pid) = &resume {
            params["process_id"] = json!(pid);
        }
        // The REST client adds the portal's auth_connector, as to every call for the portal.
        let connector = self.config.auth_connector.as_deref();
        let answer = match self.rest.call_as_app(&ctx, "event.offline.get", params).await {
            Ok(answer) => answer,
            Err(e) if self.safe && classify(&e) == Refusal::SafeModeUnlicensed => {
                tracing::warn!(
                    member_id = %self.member,
                    "the portal refuses safe offline reads (clear=0): {e}; falling back to clear=1, where rows read but not yet journaled are lost if the host dies in between"
                );
                self.safe = false;
                self.update(|s| s.mode = "clear".into());
                return Ok(true);
            }
            Err(e) => return Err(explain(&self.member, connector, "event.offline.get", &e)),
        };
        let process_id =
            answer.get("process_id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let rows = answer.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(stale) = resume.as_deref().filter(|_| rows.is_empty()) {
            // The portal holds nothing under the stored id any more (the clear went through
            // but its reply was lost, or the host died right after it) and never reserves new
            // rows under an old id: forget it and reserve afresh.
            tracing::info!(member_id = %self.member, process_id = %stale, "the stored offline batch is empty on the portal; reserving a new one");
            self.state
                .set_state(&process_key(&self.member), None)
                .await
                .map_err(|e| format!("cannot forget the batch's process_id: {e}"))?;
            self.batch_since = None;
            return Ok(true);
        }
        if self.safe && !rows.is_empty() && resume.as_deref() != Some(process_id.as_str()) {
            self.state
                .set_state(&process_key(&self.member), Some(process_id.clone().into_bytes()))
                .await
                .map_err(|e| format!("cannot store the batch's process_id: {e}"))?;
            self.batch_since = Some(now_ms());
        }
        if self.safe && !rows.is_empty() && self.batch_since.is_none() {
            // A batch stored before a restart: held since at least now.
            self.batch_since = Some(now_ms());
        }
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        let (mut pulled, mut duplicates) = (0, 0);
        for row in &rows {
            let message_id =
                row.get("MESSAGE_ID").and_then(Value::as_str).unwrap_or_default().to_owned();
            match self.journal_row(&ctx, row).await {
                Ok(Appended::New(id)) => {
                    pulled += 1;
                    tracing::info!(event_id = id, member_id = %self.member, %message_id, "offline event journaled");
                    done.push(message_id);
                }
                Ok(Appended::Duplicate(id)) => {
                    duplicates += 1;
                    tracing::info!(event_id = id, member_id = %self.member, %message_id, "offline event already journaled");
                    done.push(message_id);
                }
                Err(RowError::Undecodable(reason)) => {
                    tracing::warn!(member_id = %self.member, %message_id, "offline row cannot be decoded: {reason}");
                    failed.push(message_id);
                }
                Err(RowError::Storage(e)) => {
                    return Err(format!("cannot journal an offline row: {e}"));
                }
            }
        }
        let portals = &self.metrics.portals;
        portals.rows(&self.member, "pulled", pulled);
        portals.rows(&self.member, "duplicate", duplicates);
        let mut cleared = if self.safe { 0 } else { rows.len() as u64 };
        if self.safe && !rows.is_empty() {
            if !done.is_empty() {
                let params = json!({ "process_id": process_id, "message_id": done });
                self.rest
                    .call_as_app(&ctx, "event.offline.clear", params)
                    .await
                    .map_err(|e| explain(&self.member, connector, "event.offline.clear", &e))?;
                cleared = done.len() as u64;
            }
            if !failed.is_empty() {
                let params = json!({ "process_id": process_id, "message_id": failed });
                self.rest
                    .call_as_app(&ctx, "event.offline.error", params)
                    .await
                    .map_err(|e| explain(&self.member, connector, "event.offline.error", &e))?;
                // The parked rows show in the next survey.
                self.survey_due = true;
            }
            self.state
                .set_state(&process_key(&self.member), None)
                .await
                .map_err(|e| format!("cannot forget the batch's process_id: {e}"))?;
            self.batch_since = None;
        }
        let rows_failed = failed.len() as u64;
        portals.rows(&self.member, "cleared", cleared);
        portals.rows(&self.member, "error", rows_failed);
        self.update(|s| {
            s.last_poll_ms = Some(now_ms());
            s.rows_pulled += pulled;
            s.duplicates += duplicates;
            s.rows_failed += rows_failed;
            s.rows_cleared += cleared;
            s.last_error = None;
        });
        Ok(rows.len() >= self.config.batch as usize)
    }

    /// How often the queue is surveyed: half of `resume_lost_after`, at least the poll interval
    /// (and a second), at most five minutes.
    fn survey_every(&self) -> Duration {
        let cap = Duration::from_secs(300);
        (self.config.resume_lost_after / 2)
            .min(cap)
            .max(self.config.poll_interval.min(cap))
            .max(Duration::from_secs(1))
    }

    fn survey_is_due(&self) -> bool {
        self.survey_due || self.last_survey.is_none_or(|at| at.elapsed() >= self.survey_every())
    }

    /// Up to [`SURVEY_PAGES`] pages of `event.offline.list` with `filter`, in `ID` order.
    async fn list(&self, ctx: &EventContext, filter: Value) -> Result<Vec<Value>, String> {
        let mut rows = Vec::new();
        for page in 0..SURVEY_PAGES {
            let params = json!({ "filter": filter, "order": { "ID": "ASC" }, "start": page * 50 });
            let connector = self.config.auth_connector.as_deref();
            let got = self
                .rest
                .call_as_app(ctx, "event.offline.list", params)
                .await
                .map_err(|e| explain(&self.member, connector, "event.offline.list", &e))?;
            let got = got.as_array().cloned().unwrap_or_default();
            let full = got.len() >= 50;
            rows.extend(got);
            if !full {
                break;
            }
        }
        Ok(rows)
    }

    /// Looks at the queue: reservations under a `process_id` this poller does not hold (noted
    /// with when they were first seen), and the parked rows.
    async fn survey(&mut self) -> Result<(), String> {
        self.survey_due = false;
        self.last_survey = Some(tokio::time::Instant::now());
        let ctx = self.context().await;
        let ours = self
            .state
            .state(&process_key(&self.member))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|v| String::from_utf8(v).ok());
        // Any reserved row: `PROCESS_ID` > "" (the portal allows no negation).
        let reserved = self.list(&ctx, json!({ ">PROCESS_ID": "" })).await?;
        let now = now_ms();
        let held: std::collections::BTreeSet<String> = reserved
            .iter()
            .filter_map(|row| row.get("PROCESS_ID").and_then(Value::as_str))
            .filter(|pid| !pid.is_empty() && Some(*pid) != ours.as_deref())
            .map(str::to_owned)
            .collect();
        self.foreign.retain(|pid, _| held.contains(pid));
        for pid in held {
            self.foreign.entry(pid).or_insert(now);
        }
        let parked = self.list(&ctx, json!({ "ERROR": 1 })).await?;
        let total = parked.len() as u64;
        let shown: Vec<ParkedRow> = parked
            .iter()
            .take(PARKED_SHOWN)
            .map(|row| {
                let text = |key: &str| {
                    row.get(key)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default()
                };
                ParkedRow {
                    id: text("ID"),
                    message_id: text("MESSAGE_ID"),
                    event_name: text("EVENT_NAME"),
                    timestamp: text("TIMESTAMP_X"),
                }
            })
            .collect();
        self.metrics
            .portals
            .offline_parked_rows
            .get_or_create(&PortalLabel { portal: self.member.clone() })
            .set(total as i64);
        self.update(|s| {
            s.parked = shown;
            s.parked_total = total;
            s.surveyed_ms = Some(now);
        });
        Ok(())
    }

    /// Takes over the oldest reservation of another `process_id` seen for
    /// `resume_lost_after`, when this poller holds no batch: its reply was lost, and nobody
    /// else will ever read those rows.
    async fn take_over_lost(&mut self) -> Result<(), String> {
        let key = process_key(&self.member);
        let stored = self.state.state(&key).await.map_err(|e| e.to_string())?;
        if stored.is_some() {
            return Ok(());
        }
        let limit = self.config.resume_lost_after.as_millis() as i64;
        let now = now_ms();
        let Some((pid, since)) = self
            .foreign
            .iter()
            .filter(|(_, since)| now - **since >= limit)
            .min_by_key(|(_, since)| **since)
            .map(|(pid, since)| (pid.clone(), *since))
        else {
            return Ok(());
        };
        self.state
            .set_state(&key, Some(pid.clone().into_bytes()))
            .await
            .map_err(|e| format!("cannot store a lost batch's process_id: {e}"))?;
        self.foreign.remove(&pid);
        self.batch_since = Some(since);
        tracing::warn!(
            member_id = %self.member,
            process_id = %pid,
            reserved_for_s = (now - since) / 1000,
            "taking over an offline batch reserved on the portal whose reply was lost (else its rows would wait 34 days for the portal to drop them)"
        );
        self.metrics
            .portals
            .offline_lost_batches_resumed
            .get_or_create(&PortalLabel { portal: self.member.clone() })
            .inc();
        self.update(|s| s.lost_batches_resumed += 1);
        Ok(())
    }

    /// The oldest reservation known, into the status and the gauge.
    fn export_reservations(&self) {
        let oldest = self.foreign.values().copied().chain(self.batch_since).min();
        let age = oldest.map_or(0.0, |since| (now_ms() - since).max(0) as f64 / 1000.0);
        self.metrics
            .portals
            .offline_oldest_reservation_seconds
            .get_or_create(&PortalLabel { portal: self.member.clone() })
            .set(age);
        self.update(|s| s.oldest_reservation_ms = oldest);
    }

    /// Journals one row as the event it stands for.
    async fn journal_row(&self, ctx: &EventContext, row: &Value) -> Result<Appended, RowError> {
        let name = row
            .get("EVENT_NAME")
            .and_then(Value::as_str)
            .ok_or(RowError::Undecodable("no EVENT_NAME".into()))?;
        let message_id = row.get("MESSAGE_ID").and_then(Value::as_str).unwrap_or_default();
        let data = row.get("EVENT_DATA").cloned().unwrap_or(Value::Null);
        let timestamp = row.get("TIMESTAMP_X").map(|t| t.to_string()).unwrap_or_default();
        let payload = json!({
            "event": name,
            "data": data,
            "auth": {
                "member_id": self.member,
                "domain": ctx.domain,
                "client_endpoint": ctx.client_endpoint,
                "server_endpoint": ctx.server_endpoint,
            },
        });
        let raw = Bytes::from(payload.to_string());
        let event =
            decode::decode(&raw, Format::Json).map_err(|e| RowError::Undecodable(e.to_string()))?;
        let plugins = self.router.recipients(&event);
        let mut extra = vec![("message_id".to_owned(), message_id.to_owned())];
        if let Some(id) = row.get("ID") {
            extra.push((
                "offline_id".into(),
                id.as_str().map_or_else(|| id.to_string(), str::to_owned),
            ));
        }
        if let Some(user) = row.pointer("/EVENT_ADDITIONAL/user_id") {
            extra.push((
                "user_id".into(),
                user.as_str().map_or_else(|| user.to_string(), str::to_owned),
            ));
        }
        extra.push(("timestamp".into(), timestamp.trim_matches('"').to_owned()));
        let row_key = format!(
            "{message_id}\n{}\n{timestamp}",
            row.get("EVENT_DATA").map(|d| d.to_string()).unwrap_or_default()
        );
        let key = crate::record::key_of(&[
            b"offline",
            event.auth.member_id.as_bytes(),
            row_key.as_bytes(),
        ]);
        let record = decode::record(
            &event,
            raw,
            Format::Json,
            crate::record::Source::Offline,
            &key,
            extra,
            crate::journal::now_ms(),
        );
        self.log
            .append_offline(record, key, plugins)
            .await
            .map_err(|e| RowError::Storage(e.to_string()))
    }
}

enum RowError {
    Undecodable(String),
    Storage(String),
}

#[cfg(test)]
mod tests {
    use b24_plugin_api::RestErrorKind;

    use super::*;

    fn refusal(code: &str, description: &str) -> RestError {
        RestError {
            kind: RestErrorKind::Api,
            status: 403,
            error: code.into(),
            description: description.into(),
        }
    }

    #[test]
    fn only_the_exact_safe_mode_refusal_means_falling_back() {
        let safe = refusal(
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: extended offline events handling",
        );
        assert_eq!(classify(&safe), Refusal::SafeModeUnlicensed);
        let connector = refusal(
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: auth_connector",
        );
        assert_eq!(classify(&connector), Refusal::ConnectorUnlicensed);
        // Text about licences with another code, or another licence refusal: no fallback.
        assert_eq!(classify(&refusal("ERROR", "license expired")), Refusal::Other);
        assert_eq!(classify(&refusal("WRONG_LICENSE", "something else")), Refusal::Other);
        assert_eq!(classify(&refusal("WRONG_AUTH_TYPE", "")), Refusal::WrongAuthType);
        assert_eq!(classify(&refusal("ACCESS_DENIED", "Access denied!")), Refusal::NotAdmin);
    }

    #[test]
    fn refusals_are_explained_in_the_operators_terms() {
        let m = "abc";
        let text = explain(
            m,
            Some("b24host"),
            "event.offline.get",
            &refusal("WRONG_LICENSE", "x: auth_connector"),
        );
        assert!(
            text.contains("auth_connector") && text.contains("[rest.portals.\"abc\".offline]"),
            "{text}"
        );
        let text = explain(m, None, "event.offline.get", &refusal("WRONG_AUTH_TYPE", "denied"));
        assert!(text.contains("webhook") && text.contains("install"), "{text}");
        let text =
            explain(m, None, "event.offline.get", &refusal("ACCESS_DENIED", "Access denied!"));
        assert!(text.contains("administrator"), "{text}");
    }
}
