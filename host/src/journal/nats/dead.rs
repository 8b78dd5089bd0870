//! Dead letters on the log: the stream `<stream>_DEAD`, one message per (plugin, event).
//!
//! STUB: to be written (issue 12, part `ops`).

use bytes::Bytes;

use super::connect::Link;
use crate::journal::{StoreError, record::DeadLetter};

/// Publishes `plugin`'s dead letter of event `id` (its sealed `payload`, from portal `member`,
/// event `code`) and waits for the log's acknowledgement. Idempotent: the same (plugin, id)
/// published twice is stored once (`Nats-Msg-Id` = `dead:<plugin>:<id>`).
pub(super) async fn bury(
    link: &Link,
    plugin: &str,
    id: u64,
    payload: Bytes,
    member: &str,
    code: &str,
    dead: &DeadLetter,
) -> Result<(), StoreError> {
    let _ = (link, plugin, id, payload, member, code, dead);
    Err(StoreError::Refused("the NATS backend's dead letters are not built yet".into()))
}
