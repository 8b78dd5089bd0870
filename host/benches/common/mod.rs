//! What the plugin-call benchmarks share: the event they hand to a plugin.

use std::path::Path;

use b24_host::{
    call::{
        Envelope,
        convert::{PluginEvent, plugin_event},
    },
    decode::{self, Format, decode},
    journal::now_ms,
    record::Source,
};
use bytes::Bytes;

/// The ABI view of the `ONCRMDEALUSERFIELDUPDATE` fixture, as a lane hands it to a plugin on
/// the first attempt.
pub fn fixture_plugin_event() -> PluginEvent {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ONCRMDEALUSERFIELDUPDATE.form");
    let body =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let event = decode(&body, Format::Form).expect("fixture decodes");
    let key = decode::dedup_key(&event);
    let record = decode::record(
        &event,
        Bytes::from(body),
        Format::Form,
        Source::Online,
        &key,
        vec![],
        now_ms(),
    );
    let envelope = Envelope::new(1, record);
    plugin_event(&envelope, &event, 1)
}
