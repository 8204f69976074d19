//! Tracker integration tests: a real broker, real databases (SQLite and PostgreSQL), the real
//! service on a free port, real HTTP, and the map in a real headless Chromium.

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion (clippy.toml allows it in #[test] functions; this covers helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod api;
mod auth;
mod boots;
mod cdp;
mod decommission;
mod events;
mod geofences;
mod helpers;
mod map;
mod secrets;
mod storage;
