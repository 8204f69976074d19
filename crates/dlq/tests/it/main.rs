//! `dlq` integration tests on Apache Kafka (the shared broker, unique topics per test): dead
//! letters written as the receiver and processor write them, read back through the library and
//! through the `dlq` binary, and redriven into a real processor.

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod secrets;
mod inspect;
mod redrive;
