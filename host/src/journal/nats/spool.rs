//! The local spool: an embedded journal in `state_dir/spool/` that takes an event the log did
//! not acknowledge within `ack_timeout_ms`, and forwards it later with the same `Nats-Msg-Id`.
//!
//! STUB: to be written (issue 12, item 3).
