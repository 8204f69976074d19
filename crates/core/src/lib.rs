//! Shared building blocks of fleetstream: the wire format a vehicle speaks, the validated
//! [`Position`] the rest of the pipeline believes, rejection [`Reason`] codes, topic names, Kafka
//! client configuration, DLQ headers, telemetry and shutdown helpers.
//!
//! This crate depends on no service; every service depends on it.

pub mod attributes;
pub mod dlq;
pub mod events;
pub mod geofence;
pub mod frames;
pub mod http;
pub mod kafka;
pub mod nofile;
pub mod otel;
pub mod position;
pub mod publish;
pub mod reason;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tokens;
pub mod topics;
pub mod wire;

pub use position::{Position, ProcessedPosition, VehicleLatest};
pub use attributes::Attributes;
pub use reason::Reason;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
