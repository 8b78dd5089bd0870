//! The host's integration tests, one binary (one link, one run): each module a subject.
//! `php_differential` needs php-cli (it fails, not skips, without it).

mod architecture;
mod common;
mod config_load;
mod decode_view;
mod php_differential;
mod php_fixtures;
mod roundtrip;
mod testkit;
