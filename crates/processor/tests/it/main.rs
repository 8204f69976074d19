//! Processor integration tests: a real broker, real processors (in-process and as child
//! processes that are killed), asserting exact accounting of every record.

mod catalogue;
mod failures;
mod helpers;
mod transactions;
