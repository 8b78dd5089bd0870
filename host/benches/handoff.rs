//! Micro-benchmark of handing a plugin call from the async side to a thread that may block, and
//! getting the answer back: the worker's real path (a queue to the plugin's long-lived lane
//! thread), the `spawn_blocking` hand-off it replaced, and the same call made inline.
//!
//! The plugin is a tiny type defined here ([`FieldIdReader`]: reads `event.field_id`, returns
//! `Ok(Outcome::Done)`), created through `b24_plugin_api::__private::guarded_create` and called
//! through the stable ABI (`PluginBox::on_user_field`), held in an `Arc` as
//! `call::Local` holds it; the event is the `ONCRMDEALUSERFIELDUPDATE` fixture's ABI view
//! in an `Arc<PluginEvent>`, as the worker passes it. The runtime is built like the host's
//! (`new_multi_thread().enable_all()`, one worker thread per core).
//!
//! - `handoff/inline`: the plugin call made directly inside the async routine.
//! - `handoff/spawn_blocking`: `spawn_blocking(move || plugin.on_user_field(..))` awaited, with
//!   criterion's `to_async` (the routine runs in the runtime's `block_on`).
//! - `handoff/spawn_blocking_from_task`: the same, awaited from a task spawned on the runtime,
//!   i.e. from a runtime worker thread (the worker's path before lanes).
//! - `handoff/lane_round_trip`: from a runtime task, one event at a time through a bounded
//!   `tokio::sync::mpsc` queue to a long-lived thread that `blocking_recv`s it, calls the plugin
//!   and sends the outcome back; the task waits for each answer before sending the next.
//! - `handoff/lane_pipelined`: the same queue kept full, as when a plugin has a backlog: the
//!   task sends every event (waiting only for queue space) and then collects the answers. The
//!   figure is the cost per event; the worker's lanes work this way (they report outcomes to
//!   the journal, not back to the task).
//!
//! Not included: the lane's timeout watchdog and the REST context set around the call. No shared
//! library is loaded (see the `abi_call` bench).
//!
//! **Target**: none set. What to look at is each hand-off row minus `inline`: what reaching a
//! thread that may block adds to a plugin call. One at a time it is mostly two cross-thread
//! wake-ups, so it depends on the machine and on whether the threads are already awake;
//! `lane_pipelined` shows what is left when the lane never has to be woken.
//!
//! Run: `cargo bench -p b24-host --bench handoff`.

mod common;

use std::{
    hint::black_box,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use b24_host::call::{convert::PluginEvent, host_services};
use b24_plugin_api::{
    __private::guarded_create, HostHandle, Outcome, Plugin, PluginBox, PluginError, RResult,
    UserFieldEvent,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// The benchmark's plugin: reads the field id and says it is done.
#[derive(Default)]
struct FieldIdReader;

impl Plugin for FieldIdReader {
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        black_box(event.field_id);
        Ok(Outcome::Done)
    }
}

/// The plugin call the worker makes, on whichever thread runs it.
fn call(plugin: &PluginBox, event: &PluginEvent) -> RResult<Outcome, PluginError> {
    match event {
        PluginEvent::UserField(e) => plugin.on_user_field(e),
        PluginEvent::Generic(e) => plugin.on_event(e),
    }
}

/// One hand-off as the worker makes it: clone the two `Arc`s, run the call on a blocking thread,
/// await the answer.
async fn handoff(
    plugin: &Arc<PluginBox>,
    event: &Arc<PluginEvent>,
) -> RResult<Outcome, PluginError> {
    let (plugin, event) = (plugin.clone(), event.clone());
    tokio::task::spawn_blocking(move || call(&plugin, &event)).await.expect("the call ran")
}

/// A long-lived thread that answers each event it is sent, as a worker's lane calls the plugin.
fn lane(
    plugin: Arc<PluginBox>,
    event: Arc<PluginEvent>,
) -> (
    tokio::sync::mpsc::Sender<()>,
    tokio::sync::mpsc::UnboundedReceiver<RResult<Outcome, PluginError>>,
) {
    let (queue, mut jobs) = tokio::sync::mpsc::channel::<()>(32);
    let (answer, answers) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while jobs.blocking_recv().is_some() {
            if answer.send(call(&plugin, &event)).is_err() {
                return;
            }
        }
    });
    (queue, answers)
}

/// Inline call versus `spawn_blocking` and a lane thread, from `block_on` and from a task.
fn bench_handoff(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let services = host_services::for_plugin("bench", Path::new("."), Path::new("."), None);
    let plugin: Arc<PluginBox> = Arc::new(
        guarded_create::<FieldIdReader>("bench", "".into(), HostHandle::new(services))
            .into_result()
            .unwrap_or_else(|e| panic!("create failed: {}", e.message))
            .into_plugin(),
    );
    let event = Arc::new(common::fixture_plugin_event());
    assert!(matches!(event.as_ref(), PluginEvent::UserField(_)));
    assert_eq!(runtime.block_on(handoff(&plugin, &event)).into_result().ok(), Some(Outcome::Done));

    let mut group = c.benchmark_group("handoff");
    group.bench_function("inline", |b| {
        b.to_async(&runtime).iter(|| async { call(black_box(&plugin), black_box(&event)) })
    });
    group.bench_function("spawn_blocking", |b| {
        b.to_async(&runtime).iter(|| handoff(black_box(&plugin), black_box(&event)))
    });
    group.bench_function("spawn_blocking_from_task", |b| {
        b.iter_custom(|iters| {
            let (plugin, event) = (plugin.clone(), event.clone());
            let task = runtime.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(handoff(&plugin, &event).await);
                }
                start.elapsed()
            });
            runtime.block_on(task).unwrap_or(Duration::ZERO)
        })
    });
    group.bench_function("lane_round_trip", |b| {
        b.iter_custom(|iters| {
            let (queue, mut answers) = lane(plugin.clone(), event.clone());
            let task = runtime.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    queue.send(()).await.expect("the lane runs");
                    black_box(answers.recv().await.expect("an answer"));
                }
                start.elapsed()
            });
            runtime.block_on(task).unwrap_or(Duration::ZERO)
        })
    });
    group.bench_function("lane_pipelined", |b| {
        b.iter_custom(|iters| {
            let (queue, mut answers) = lane(plugin.clone(), event.clone());
            let task = runtime.spawn(async move {
                let start = Instant::now();
                let collect = tokio::spawn(async move {
                    for _ in 0..iters {
                        black_box(answers.recv().await.expect("an answer"));
                    }
                });
                for _ in 0..iters {
                    queue.send(()).await.expect("the lane runs");
                }
                collect.await.expect("all answers");
                start.elapsed()
            });
            runtime.block_on(task).unwrap_or(Duration::ZERO)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_handoff);
criterion_main!(benches);
