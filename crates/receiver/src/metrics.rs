//! The receiver's metrics. Labels are bounded: reason codes, frame types, close kinds.

use fleetstream_core::telemetry::{self as t, LATENCY_BUCKETS};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub connections_opened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub token_reloads: IntCounterVec,
    pub positions_received: IntCounter,
    pub positions_acked: IntCounter,
    pub positions_refused: IntCounterVec,
    pub bytes_received: IntCounter,
    pub frames: IntCounterVec,
    pub kafka_delivery: Histogram,
    pub ack_latency: Histogram,
    pub in_flight: IntGauge,
    pub dlq_records: IntCounter,
    pub dlq_failures: IntCounter,
    pub kafka_up: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::unlabelled();
        // Every known label value exists from the start at 0, so rate() sees the first event
        // and dashboards and alerts have a series before anything went wrong.
        for reason in fleetstream_core::Reason::ALL {
            m.positions_refused.with_label_values(&[reason.as_str()]);
        }
        for reason in [
            "client_gone",
            "client_closed",
            "shutdown",
            "abuse",
            "frame_too_big",
            "read_error",
            "token_revoked",
            "write_timeout",
            "invalid_utf8",
            "protocol_error",
        ] {
            m.connections_closed.with_label_values(&[reason]);
        }
        for reason in ["unauthorized", "too_many_connections", "per_ip_limit", "upgrade_timeout", "headers_too_large", "bad_request"] {
            m.connections_refused.with_label_values(&[reason]);
        }
        for reason in ["missing", "invalid"] {
            m.auth_failures.with_label_values(&[reason]);
        }
        for outcome in ["ok", "error"] {
            m.token_reloads.with_label_values(&[outcome]);
        }
        for kind in ["text", "binary", "ping", "pong", "close"] {
            m.frames.with_label_values(&[kind]);
        }
        m
    }

    fn unlabelled() -> Self {
        let r = Registry::new();
        Metrics {
            connections: t::gauge(&r, "fleetstream_receiver_connections", "Device WebSocket connections open now."),
            connections_opened: t::counter(&r, "fleetstream_receiver_connections_opened_total", "Device WebSocket connections accepted."),
            connections_closed: t::counter_vec(&r, "fleetstream_receiver_connections_closed_total", "Device connections closed, by who closed them and why.", &["reason"]),
            connections_refused: t::counter_vec(&r, "fleetstream_receiver_connections_refused_total", "Connection attempts refused, by reason.", &["reason"]),
            token_reloads: t::counter_vec(&r, "fleetstream_receiver_token_reloads_total", "Device token reloads (SIGHUP or a changed file), by outcome (error: the previous tokens stay).", &["outcome"]),
            auth_failures: t::counter_vec(&r, "fleetstream_receiver_auth_failures_total", "Connection attempts with a missing or invalid token.", &["reason"]),
            positions_received: t::counter(&r, "fleetstream_receiver_positions_received_total", "Positions received from devices (including refused ones)."),
            positions_acked: t::counter(&r, "fleetstream_receiver_positions_acked_total", "Positions acked to devices after Kafka's delivery report."),
            positions_refused: t::counter_vec(&r, "fleetstream_receiver_positions_refused_total", "Positions or frames refused with an error frame, by reason code.", &["reason"]),
            bytes_received: t::counter(&r, "fleetstream_receiver_bytes_received_total", "Bytes of WebSocket message payloads received."),
            frames: t::counter_vec(&r, "fleetstream_receiver_frames_total", "WebSocket messages received, by type.", &["type"]),
            kafka_delivery: t::histogram(&r, "fleetstream_receiver_kafka_delivery_seconds", "Time from handing a record to the producer to its delivery report.", LATENCY_BUCKETS),
            ack_latency: t::histogram(&r, "fleetstream_receiver_ack_latency_seconds", "Time from receiving a position to sending its ack frame.", LATENCY_BUCKETS),
            in_flight: t::gauge(&r, "fleetstream_receiver_in_flight", "Positions handed to Kafka and not yet acked."),
            dlq_records: t::counter(&r, "fleetstream_receiver_dlq_records_total", "Refused inputs written to the dead-letter topic."),
            dlq_failures: t::counter(&r, "fleetstream_receiver_dlq_failures_total", "Refused inputs that could not be written to the dead-letter topic."),
            kafka_up: t::gauge(&r, "fleetstream_receiver_kafka_up", "1 when the Kafka cluster answered the last metadata probe, else 0."),
            registry: r,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
