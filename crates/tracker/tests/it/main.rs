//! Tracker integration tests: a real broker, real databases (SQLite and PostgreSQL), the real
//! service on a free port, real HTTP, and the map in a real headless Chromium.

mod api;
mod cdp;
mod helpers;
mod map;
mod storage;
