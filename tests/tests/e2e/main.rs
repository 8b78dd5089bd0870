//! End-to-end tests: each starts a real `b24-host` process with real compiled plugins and
//! talks HTTP to it. One test binary; the modules group the tests by what they cover.

mod support;

mod auth;
mod binding;
mod console;
mod console_browser;
mod console_journal;
mod crash;
mod crash_loop;
mod damage;
mod damage_live;
mod delivery;
mod exec_plugins;
mod guide;
mod hostile;
mod http;
mod http_plugins;
mod isolation;
mod journal;
mod languages;
mod limits;
mod listeners;
mod loading;
mod monitoring;
mod nats_auth;
mod nats_cluster;
mod nats_journal;
mod nats_kv;
mod nats_multi;
mod nats_offline;
mod nats_spool;
mod offline;
mod operator;
mod ops;
mod package;
mod pause;
mod pipeline;
mod plugin_log;
mod plugin_new;
mod poison;
mod registry;
mod restart;
mod slow_start;
mod supervision;
mod tokens;
