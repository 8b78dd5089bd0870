//! What the plugin-call benchmarks share: the event they hand to a plugin.

use std::path::Path;

use b24_host::{
    call::convert::{PluginEvent, plugin_event},
    decode::{BodyFormat, decode},
    journal::{Envelope, Source, now_ms},
};
use bytes::Bytes;

/// The ABI view of the `ONCRMDEALUSERFIELDUPDATE` fixture, as a lane hands it to a plugin on
/// the first attempt.
pub fn fixture_plugin_event() -> PluginEvent {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ONCRMDEALUSERFIELDUPDATE.form");
    let body =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let event = decode(&body, BodyFormat::Form).expect("fixture decodes");
    let envelope = Envelope {
        id: 1,
        received_at_ms: now_ms(),
        raw: Bytes::from(body),
        event,
        source: Source::Online,
        extra: vec![],
    };
    plugin_event(&envelope, 1)
}
