//! The runner protocol: what the host and a runner process say to each other over their
//! socketpair (descriptor 3 in the runner; never stdout, which a plugin may print to).
//!
//! A frame is `[u32 LE length of the rest][u32 LE length of the header][header JSON][tail]`:
//! the header is one message below as JSON, the tail carries an event's record as the journal
//! stores it (`EventRecord::encode`: its metadata and the body as received, not JSON-escaped).
//! The runner decodes the body once, for its plugin; the host does not decode it at all. Frames above [`MAX_FRAME`] are refused: a runner that sends one
//! is broken and is restarted.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::config::PluginLogLimits;

/// The largest frame either side accepts (a journaled body plus its metadata).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The runner's end of the socketpair.
pub const RUNNER_FD: i32 = 3;

/// Host -> runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToRunner {
    /// First frame: load `library` as plugin `plugin` and create it with `settings`.
    Init {
        /// The plugin's name (as enabled).
        plugin: String,
        /// The content-addressed copy of its library.
        library: String,
        /// Its settings table as TOML text.
        settings: String,
        /// `HostServices::config_dir`.
        config_dir: String,
        /// `HostServices::state_dir`.
        state_dir: String,
        /// What the plugin may log (the runner cuts and limits `HostServices::log` lines
        /// before they become frames).
        log: PluginLogLimits,
        /// The most detailed level the host's log writes for plugins (0 error .. 4 trace);
        /// `None`: none. Finer lines are not sent.
        log_level: Option<u8>,
    },
    /// Call the plugin with one event on lane `lane` (the tail is the event's record).
    Call {
        /// The host's id for this call.
        call: u64,
        /// The host lane that makes it; a runner lane runs one call at a time.
        lane: usize,
        /// The journal's event id.
        id: u64,
        /// The attempt (1-based).
        attempt: u32,
    },
    /// Call the plugin with several events, strictly in this order, on lane `lane`; the
    /// tail is their records one after the other (`len` bytes each). The runner
    /// answers each with its own [`FromRunner::Outcome`] as soon as it has it and stops at the
    /// first that is not Done or Skipped: the calls after it are not attempted.
    CallBatch {
        /// The host lane that makes them.
        lane: usize,
        /// The calls, in order.
        items: Vec<BatchCall>,
    },
    /// Delivery stops (the plugin is disabled, the host shuts down): the batch whose first
    /// call is `call` ends after the call it is making; the runner answers
    /// [`FromRunner::NotAttempted`] for the next.
    StopBatch {
        /// The host lane.
        lane: usize,
        /// The batch's first call id.
        call: u64,
    },
    /// The host's answer to [`FromRunner::Rest`].
    RestAnswer {
        /// The runner's request id.
        request: u64,
        /// The `result` JSON, or the error.
        result: Result<String, WireRestError>,
    },
    /// Finish the calls in flight, shut the plugin down, answer [`FromRunner::ShutdownDone`]
    /// and exit.
    Shutdown,
}

/// One call of a [`ToRunner::CallBatch`]: the fields of [`ToRunner::Call`] and its record's
/// length in the tail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchCall {
    /// The host's id for this call (REST requests made during it name it).
    pub call: u64,
    /// The journal's event id.
    pub id: u64,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The record's length in the frame's tail.
    pub len: usize,
}

/// Runner -> host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromRunner {
    /// The plugin loaded and was created.
    Ready {
        /// Its declared name.
        name: String,
        /// Its version.
        version: String,
        /// The event globs it subscribes to.
        events: Vec<String>,
        /// Whether it may be called from several threads at once.
        concurrent: bool,
        /// The b24-plugin-api version it was built against.
        api_version: String,
        /// How long loading took, in microseconds.
        load_us: u64,
    },
    /// Loading or creating failed; the runner exits.
    InitFailed {
        /// Why, as the loader says it.
        reason: String,
    },
    /// How call `call` ended.
    Outcome {
        /// The host's call id.
        call: u64,
        /// `Ok(done?)` (true = Done, false = Skipped) or the plugin's error.
        result: Result<bool, WireError>,
    },
    /// A batch was stopped ([`ToRunner::StopBatch`]): call `call` and the ones after it were
    /// not attempted.
    NotAttempted {
        /// The first call not attempted.
        call: u64,
    },
    /// A `HostServices::log` line.
    Log {
        /// 0 error .. 4 trace.
        level: u8,
        /// The text.
        message: String,
    },
    /// `HostServices::log` lines the runner dropped past the plugin's rate since its last
    /// such frame (sent at most once a second).
    LogDropped {
        /// How many.
        lines: u64,
    },
    /// A `HostServices::rest` call made during call `call`.
    Rest {
        /// The runner's request id.
        request: u64,
        /// The call it belongs to (`None`: made outside an event).
        call: Option<u64>,
        /// The REST method.
        method: String,
        /// Its parameters, JSON.
        params: String,
    },
    /// Shutdown finished; the runner exits.
    ShutdownDone,
}

/// A plugin error on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// 0 retry, 1 reject, 2 panicked.
    pub kind: u8,
    /// The message.
    pub message: String,
}

/// A REST error on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRestError {
    /// 0 api, 1 unavailable, 2 credentials, 3 usage.
    pub kind: u8,
    /// HTTP status.
    pub status: u16,
    /// Bitrix24's error code.
    pub error: String,
    /// Its description.
    pub description: String,
}

impl From<b24_plugin_api::RestError> for WireRestError {
    fn from(e: b24_plugin_api::RestError) -> Self {
        use b24_plugin_api::RestErrorKind::*;
        let kind = match e.kind {
            Api => 0,
            Unavailable => 1,
            Credentials => 2,
            Usage => 3,
        };
        WireRestError {
            kind,
            status: e.status,
            error: e.error.into_string(),
            description: e.description.into_string(),
        }
    }
}

impl From<WireRestError> for b24_plugin_api::RestError {
    fn from(e: WireRestError) -> Self {
        use b24_plugin_api::RestErrorKind::*;
        let kind = match e.kind {
            0 => Api,
            1 => Unavailable,
            2 => Credentials,
            _ => Usage,
        };
        b24_plugin_api::RestError {
            kind,
            status: e.status,
            error: e.error.into(),
            description: e.description.into(),
        }
    }
}

impl From<&b24_plugin_api::PluginError> for WireError {
    fn from(e: &b24_plugin_api::PluginError) -> Self {
        use b24_plugin_api::ErrorKind::*;
        let kind = match e.kind {
            Retry => 0,
            Reject => 1,
            Panicked => 2,
        };
        WireError { kind, message: e.message.to_string() }
    }
}

impl From<WireError> for b24_plugin_api::PluginError {
    fn from(e: WireError) -> Self {
        use b24_plugin_api::ErrorKind::*;
        let kind = match e.kind {
            0 => Retry,
            1 => Reject,
            _ => Panicked,
        };
        b24_plugin_api::PluginError { kind, message: e.message.into() }
    }
}

/// Writes one frame: `message` as the header, `tail` after it.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T, tail: &[u8]) -> io::Result<()> {
    let header = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = 4 + header.len() + tail.len();
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(tail);
    out.write_all(&frame)
}

/// Reads one frame: the message and the tail. `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> io::Result<Option<(T, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    let mut frame = vec![0u8; len];
    input.read_exact(&mut frame)?;
    let header_len = u32::from_le_bytes(frame[..4].try_into().unwrap_or_default()) as usize;
    let header = frame
        .get(4..4 + header_len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header length"))?;
    let message = serde_json::from_slice(header).map_err(io::Error::other)?;
    let tail = frame.split_off(4 + header_len);
    Ok(Some((message, tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &FromRunner::Log { level: 2, message: "hi".into() }, b"").unwrap();
        write_frame(&mut buf, &ToRunner::Shutdown, b"tail\x00\xff").unwrap();
        let mut input = &buf[..];
        let (first, tail) = read_frame::<FromRunner>(&mut input).unwrap().unwrap();
        assert!(matches!(first, FromRunner::Log { level: 2, ref message } if message == "hi"));
        assert!(tail.is_empty());
        let (second, tail) = read_frame::<ToRunner>(&mut input).unwrap().unwrap();
        assert!(matches!(second, ToRunner::Shutdown));
        assert_eq!(tail, b"tail\x00\xff");
        assert!(read_frame::<ToRunner>(&mut input).unwrap().is_none());
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(read_frame::<ToRunner>(&mut &huge[..]).is_err());
    }
}
