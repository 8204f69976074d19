//! Processor integration tests on Apache Kafka: real processors (in-process, and as child
//! processes that are killed, terminated and frozen), asserting the exact accounting of every
//! record as a read_committed consumer sees it.

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion (clippy.toml allows it in #[test] functions; this covers helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalogue;
mod events;
mod failures;
mod helpers;
mod restarts;
mod secrets;
mod transactions;
mod workload;
