//! Apache Kafka on this machine, for development, tests, the demo and the benchmarks: the one
//! piece of code that installs and starts the broker.
//!
//! - [`install`] fetches a pinned Apache Kafka ([`KAFKA_VERSION`]) from Maven Central into a
//!   cache (`~/.cache/fleetstream/kafka-<version>/`), once, with Maven's strict checksums;
//!   Java and Maven come from the system package manager when they are missing.
//! - [`ClusterSpec`] describes one combined broker+controller node or a KRaft cluster of
//!   several on distinct ports and data directories; [`Cluster::start`] formats the storage
//!   and starts the nodes, and its methods stop, kill and restart single nodes for failover
//!   drills.
//!
//! The `kafka-local` binary (and `scripts/kafka-local`, which runs it) wraps this for the
//! command line; `fleetstream-testkit` uses it for the tests.

pub mod access;
mod admin_ffi;
pub mod cluster;
pub mod install;
pub mod node;
pub mod secure;
pub mod topics;

pub use cluster::{Cluster, ClusterSpec, Lifetime};
pub use install::Installation;
pub use secure::Security;

/// The Apache Kafka release every test, the demo, the benchmarks and docker-compose.yml use.
pub const KAFKA_VERSION: &str = "4.4.0";
