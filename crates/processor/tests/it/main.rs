//! Processor integration tests on Apache Kafka: real processors (in-process, and as child
//! processes that are killed, terminated and frozen), asserting the exact accounting of every
//! record as a read_committed consumer sees it.

mod catalogue;
mod failures;
mod helpers;
mod transactions;
mod workload;
