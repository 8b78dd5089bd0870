//! **b24-host**: receives Bitrix24 events over HTTP, verifies them, and delivers them to plugins
//! loaded from shared libraries.
//!
//! Data flows one way: [`ingress`] (HTTP) -> [`decode`] -> [`auth`] -> [`queue`] (acked 200) ->
//! [`dispatch`] (one worker per plugin) -> the plugin. See ARCHITECTURE.md for the map.

pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod decode;
pub mod dispatch;
pub mod encode;
pub mod ingress;
pub mod loader;
pub mod logging;
pub mod queue;
pub mod send;
pub mod server;

pub use server::serve;
