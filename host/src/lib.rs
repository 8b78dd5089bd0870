//! **b24-host**: receives Bitrix24 events over HTTP, verifies them, and delivers them to plugins
//! loaded from shared libraries.
//!
//! Data flows one way: [`ingress`] (HTTP) -> [`decode`] -> [`auth`] -> [`journal`] (durable;
//! then 200) -> [`dispatch`] (one worker per plugin) -> the plugin -> the outcome back into the
//! journal. See ARCHITECTURE.md for the map.

pub mod activation;
pub mod auth;
pub mod bind;
pub mod call;
pub mod cli;
pub mod cmd;
pub mod codes;
pub mod config;
pub mod conn;
pub mod console;
pub mod control;
pub mod decode;
pub mod dispatch;
pub mod drain;

pub mod forward;
pub mod ingress;
pub mod journal;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod offline;
pub mod operations;
pub mod ops;
pub mod plugin_output;
pub mod portal_metrics;
pub mod record;
pub mod rest;
pub mod route;
pub mod runner;
pub mod server;
pub mod state_dir;
pub mod supervisor;
pub mod throttle;
