//! Why a position was refused or rejected: one machine-readable code per rule.
//!
//! The same codes appear in the receiver's error frames, in the `reason` label of the refusal
//! metrics and in the DLQ's `fleetstream.reason` header, so a device, an operator and a DLQ
//! consumer all speak of a rejection with the same word. The list is documented in
//! docs/wire-format.md; the codes are stable API.

use serde::{Deserialize, Serialize};

/// A rejection reason. `as_str()` is the stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // --- structural: the bytes are not a position ---------------------------------------------
    /// A text frame (or record value) with no content.
    EmptyFrame,
    /// Not valid UTF-8 JSON.
    MalformedJson,
    /// `NaN`, `Infinity` or a number too large for a double.
    NonFiniteNumber,
    /// Valid JSON that is neither a position object nor an array of them.
    WrongShape,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (a string where a number belongs, ...).
    WrongType,
    /// A number does not fit its type (negative or fractional `obu_id`, `seq` beyond u64, ...).
    OutOfRange,
    /// A binary WebSocket frame: fleetstream speaks JSON text frames only.
    BinaryFrame,
    /// A frame larger than `--max-frame-bytes`.
    FrameTooLarge,
    /// A frame with more positions than `--max-positions-per-frame`.
    TooManyPositions,
    /// The device's token does not allow this `obu_id`.
    ObuNotAllowed,
    /// The Kafka record key is not the position's `obu_id`.
    KeyMismatch,

    // --- retryable: the position was fine, the moment was not -----------------------------------
    /// Over the per-connection rate limit; resend later.
    RateLimited,
    /// The receiver could not hand the position to Kafka within the delivery timeout.
    KafkaUnavailable,
    /// The receiver is shutting down; reconnect and resend.
    ShuttingDown,
    /// The receiver is at its connection limit.
    TooManyConnections,

    // --- semantic: a position, but not a believable one (processor) -----------------------------
    /// Latitude outside [-90, 90].
    LatOutOfRange,
    /// Longitude outside [-180, 180].
    LonOutOfRange,
    /// Speed negative or above the configured maximum.
    SpeedOutOfRange,
    /// Heading outside [0, 360).
    HeadingOutOfRange,
    /// Timestamp further in the future than the tolerance.
    FutureTimestamp,
    /// Timestamp older than the maximum age.
    StaleTimestamp,
    /// The (0, 0) fix a receiver without a GPS lock reports.
    NullIsland,
    /// Implied speed from the previous fix of this vehicle is above the maximum.
    Teleport,
    /// `seq` is further behind the vehicle's highest seq than the duplicate window can judge.
    SeqTooOld,
}

impl Reason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [Reason; 25] = [
        Reason::EmptyFrame,
        Reason::MalformedJson,
        Reason::NonFiniteNumber,
        Reason::WrongShape,
        Reason::MissingField,
        Reason::WrongType,
        Reason::OutOfRange,
        Reason::BinaryFrame,
        Reason::FrameTooLarge,
        Reason::TooManyPositions,
        Reason::ObuNotAllowed,
        Reason::KeyMismatch,
        Reason::RateLimited,
        Reason::KafkaUnavailable,
        Reason::ShuttingDown,
        Reason::TooManyConnections,
        Reason::LatOutOfRange,
        Reason::LonOutOfRange,
        Reason::SpeedOutOfRange,
        Reason::HeadingOutOfRange,
        Reason::FutureTimestamp,
        Reason::StaleTimestamp,
        Reason::NullIsland,
        Reason::Teleport,
        Reason::SeqTooOld,
    ];

    /// The stable machine-readable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyFrame => "empty_frame",
            Reason::MalformedJson => "malformed_json",
            Reason::NonFiniteNumber => "non_finite_number",
            Reason::WrongShape => "wrong_shape",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::BinaryFrame => "binary_frame",
            Reason::FrameTooLarge => "frame_too_large",
            Reason::TooManyPositions => "too_many_positions",
            Reason::ObuNotAllowed => "obu_not_allowed",
            Reason::KeyMismatch => "key_mismatch",
            Reason::RateLimited => "rate_limited",
            Reason::KafkaUnavailable => "kafka_unavailable",
            Reason::ShuttingDown => "shutting_down",
            Reason::TooManyConnections => "too_many_connections",
            Reason::LatOutOfRange => "lat_out_of_range",
            Reason::LonOutOfRange => "lon_out_of_range",
            Reason::SpeedOutOfRange => "speed_out_of_range",
            Reason::HeadingOutOfRange => "heading_out_of_range",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::StaleTimestamp => "stale_timestamp",
            Reason::NullIsland => "null_island",
            Reason::Teleport => "teleport",
            Reason::SeqTooOld => "seq_too_old",
        }
    }

    /// Whether the sender should resend the same position later. Retryable refusals are not
    /// written to the DLQ: the device still holds the position.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Reason::RateLimited
                | Reason::KafkaUnavailable
                | Reason::ShuttingDown
                | Reason::TooManyConnections
        )
    }

    /// Parses a code back into a reason (for DLQ consumers and tests).
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the reason code plus a human message saying exactly what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {r}");
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap_or_default(), format!("\"{r}\""));
        }
    }
}
