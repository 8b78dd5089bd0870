//! Micro-benchmark of one plugin call through the stable ABI, against a direct Rust trait call
//! to the same code.
//!
//! The plugin is a tiny type defined here ([`FieldIdReader`]): its `on_user_field` reads
//! `event.field_id` and returns `Ok(Outcome::Done)`. It is marked `#[inline(never)]`, so both
//! variants make one real call into the same function and differ only in how they reach it:
//!
//! - `abi_call/direct`: [`Plugin::on_user_field`] on the concrete type (static dispatch).
//! - `abi_call/abi`: the instance made by `b24_plugin_api::__private::guarded_create` (what
//!   `export_plugin!`'s `create` calls) and unwrapped with `PluginHandle::into_plugin`, then
//!   `PluginBox::on_user_field`, exactly as the worker calls a loaded plugin: through the
//!   `#[sabi_trait]` vtable, into the plugin-side `catch_unwind` guard, and back as an
//!   `RResult`.
//!
//! The event is the decoded `ONCRMDEALUSERFIELDUPDATE` fixture turned into the ABI view by
//! `call::convert::plugin_event`, once, outside the timed loop.
//!
//! No shared library is loaded: the plugin lives in this binary. Loading a real `.so` through
//! `loader.rs` adds nothing per call (the vtable is the same indirect call, just into another
//! object file); it only costs at load time, which is not measured here.
//!
//! **Target**: the ABI overhead (`abi` minus `direct`) under 100 ns.
//!
//! Run: `cargo bench -p b24-host --bench abi_call`.

mod common;

use std::{hint::black_box, path::Path};

use b24_host::call::{convert::PluginEvent, host_services};
use b24_plugin_api::{
    __private::guarded_create, HostHandle, Outcome, Plugin, PluginError, UserFieldEvent,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// The benchmark's plugin: reads the field id and says it is done.
#[derive(Default)]
struct FieldIdReader;

impl Plugin for FieldIdReader {
    #[inline(never)]
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        black_box(event.field_id);
        Ok(Outcome::Done)
    }
}

/// The fixture's user-field view (see `common::fixture_plugin_event`).
fn user_field_event() -> UserFieldEvent {
    match common::fixture_plugin_event() {
        PluginEvent::UserField(event) => event,
        PluginEvent::Generic(event) => panic!("{} is not a user-field event", event.code),
    }
}

/// The direct call and the call through the ABI, on the same event.
fn bench_abi_call(c: &mut Criterion) {
    let event = user_field_event();

    let direct = FieldIdReader;
    let services = host_services::for_plugin("bench", Path::new("."), Path::new("."), None);
    let abi = guarded_create::<FieldIdReader>("bench", "".into(), HostHandle::new(services))
        .into_result()
        .unwrap_or_else(|e| panic!("create failed: {}", e.message))
        .into_plugin();

    assert_eq!(direct.on_user_field(&event).ok(), Some(Outcome::Done));
    assert_eq!(abi.on_user_field(&event).into_result().ok(), Some(Outcome::Done));

    let mut group = c.benchmark_group("abi_call");
    group.bench_function("direct", |b| {
        b.iter(|| black_box(&direct).on_user_field(black_box(&event)))
    });
    group.bench_function("abi", |b| b.iter(|| black_box(&abi).on_user_field(black_box(&event))));
    group.finish();
}

criterion_group!(benches, bench_abi_call);
criterion_main!(benches);
