//! What the receiver sends back to a device: one [`ServerFrame`] per position, in the order the
//! positions arrived on the connection.

use serde::{Deserialize, Serialize};

use crate::reason::{Reason, Rejection};

/// A frame from the receiver to a device (JSON text, tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The position is durably in Kafka (delivery report received, acks=all).
    Ack { obu_id: u64, seq: u64 },
    /// The position (or the whole frame) was refused.
    Error(ErrorFrame),
}

/// Why a position or frame was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The position's obu_id, where it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obu_id: Option<u64>,
    /// The position's seq, where it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// 1-based number of the frame on this connection the refusal is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// 0-based index of the position inside an array frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Machine-readable reason code.
    pub reason: Reason,
    /// What exactly was wrong, for a human.
    pub message: String,
    /// True when the same position should be sent again later.
    pub retryable: bool,
}

impl ErrorFrame {
    pub fn new(rejection: Rejection) -> Self {
        ErrorFrame {
            obu_id: None,
            seq: None,
            frame: None,
            index: None,
            retryable: rejection.reason.retryable(),
            reason: rejection.reason,
            message: rejection.message,
        }
    }
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        // Plain data: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shape() {
        assert_eq!(ServerFrame::Ack { obu_id: 7, seq: 3 }.to_json(), r#"{"type":"ack","obu_id":7,"seq":3}"#);
        let mut e = ErrorFrame::new(Rejection::new(Reason::RateLimited, "slow down"));
        e.obu_id = Some(7);
        e.seq = Some(4);
        e.frame = Some(2);
        assert_eq!(
            ServerFrame::Error(e).to_json(),
            r#"{"type":"error","obu_id":7,"seq":4,"frame":2,"reason":"rate_limited","message":"slow down","retryable":true}"#
        );
    }
}
