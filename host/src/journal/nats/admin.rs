//! The operator's view of the log: stats, listings, dead letters, replay, purge, skip.
//!
//! STUB: to be written (issue 12, item 2 and 4).

use super::{append::Appender, connect::Link, deliver::Shared};
use crate::journal::{
    StoreError,
    admin::{DeadRow, EventDetail, EventSummary, Selection, Stats},
};

fn unbuilt() -> StoreError {
    StoreError::Refused("the NATS backend's journal commands are not built yet".into())
}

pub(super) async fn stats(
    link: &Link,
    appender: &Appender,
    enabled: Vec<String>,
) -> Result<Stats, StoreError> {
    let _ = (link, appender, enabled);
    Err(unbuilt())
}

pub(super) async fn list(link: &Link, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
    let _ = (link, limit);
    Err(unbuilt())
}

pub(super) async fn show(link: &Link, id: u64) -> Result<Option<EventDetail>, StoreError> {
    let _ = (link, id);
    Err(unbuilt())
}

pub(super) async fn dead(link: &Link, plugin: Option<String>) -> Result<Vec<DeadRow>, StoreError> {
    let _ = (link, plugin);
    Err(unbuilt())
}

pub(super) async fn replay(
    link: &Link,
    which: Selection,
) -> Result<Vec<(String, u64)>, StoreError> {
    let _ = (link, which);
    Err(unbuilt())
}

pub(super) async fn purge(link: &Link, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
    let _ = (link, which);
    Err(unbuilt())
}

pub(super) async fn skip(
    link: &Link,
    shared: &Shared,
    plugin: String,
    ids: Vec<u64>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let _ = (link, shared, plugin, ids);
    Err(unbuilt())
}
