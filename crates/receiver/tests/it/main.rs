//! Receiver integration tests: a real broker, the real receiver on port 0, real sockets.

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion (clippy.toml allows it in #[test] functions; this covers helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod bad_input;
mod delivery;
mod helpers;
mod secrets;
mod limits;
