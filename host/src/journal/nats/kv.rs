//! The key/value state in JetStream buckets: learned application tokens, stored OAuth tokens,
//! named values (the offline pollers'), and leases.
//!
//! STUB: to be written (issue 12, item 2).

use std::collections::BTreeMap;

use b24_plugin_api::Secret;

use super::connect::Link;
use crate::journal::StoreError;

/// The buckets.
pub(super) struct State {}

fn unbuilt() -> StoreError {
    StoreError::Refused("the NATS backend's key/value state is not built yet".into())
}

impl State {
    pub async fn open(link: &Link) -> Result<State, StoreError> {
        let _ = link;
        Ok(State {})
    }

    pub async fn set_token(&self, member: &str, token: Option<Secret>) -> Result<(), StoreError> {
        let _ = (member, token);
        Err(unbuilt())
    }

    pub async fn learned_tokens(&self) -> Result<BTreeMap<String, Secret>, StoreError> {
        Err(unbuilt())
    }

    pub async fn save_oauth(&self, member: &str, tokens: Vec<u8>) -> Result<(), StoreError> {
        let _ = (member, tokens);
        Err(unbuilt())
    }

    pub async fn oauth(&self, member: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = member;
        Err(unbuilt())
    }

    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let _ = (name, value);
        Err(unbuilt())
    }

    pub async fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = name;
        Err(unbuilt())
    }
}
