//! End-to-end tests: each starts a real `b24-host` process with real compiled plugins and
//! talks HTTP to it. One test binary; the modules group the tests by what they cover.

mod support;

mod auth;
mod console;
mod console_browser;
mod console_journal;
mod crash;
mod damage;
mod damage_live;
mod delivery;
mod guide;
mod hostile;
mod http;
mod isolation;
mod journal;
mod loading;
mod nats_auth;
mod nats_journal;
mod nats_multi;
mod nats_offline;
mod offline;
mod operator;
mod ops;
mod pipeline;
mod poison;
mod registry;
mod restart;
