//! The processor's metrics. Labels are bounded: reason codes, partitions, stages.

use fleetstream_core::telemetry::{self as t, LATENCY_BUCKETS};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

/// The steps of a batch, as `fleetstream_processor_batch_step_seconds` labels them.
pub const STEPS: [&str; 5] = ["poll", "decide", "produce", "offsets", "commit"];

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub consumed: IntCounter,
    pub valid: IntCounter,
    pub invalid: IntCounterVec,
    pub duplicates: IntCounter,
    pub out_of_order: IntCounter,
    pub replayed: IntCounter,
    pub dlq: IntCounter,
    pub latest_writes: IntCounter,
    pub retries: IntCounterVec,
    pub batch_seconds: Histogram,
    pub batch_records: Histogram,
    pub batch_step_seconds: HistogramVec,
    /// fleetstream_processor_end_to_end_seconds{from="device"} and {from="receiver"}, looked
    /// up once: they are observed for every valid position.
    pub end_to_end_device: Histogram,
    pub end_to_end_receiver: Histogram,
    pub lag: IntGaugeVec,
    pub rebalances: IntCounterVec,
    pub assigned: IntGauge,
    pub vehicles: IntGauge,
    pub state_loads: IntCounter,
    pub state_load_seconds: Histogram,
    pub commits: IntCounter,
    pub aborts: IntCounter,
    pub fenced: IntCounter,
    pub producers_renewed: IntCounter,
    pub events: IntCounterVec,
    pub geofences: IntGauge,
    pub geofences_invalid: IntCounter,
    pub geofence_lookup_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::unlabelled();
        // Every known label value exists from the start at 0, so rate() sees the first event
        // and dashboards and alerts have a series before anything went wrong.
        for reason in fleetstream_core::Reason::ALL.iter().filter(|r| !r.retryable()) {
            m.invalid.with_label_values(&[reason.as_str()]);
        }
        for stage in ["produce", "restore", "commit", "abort", "fetch"] {
            m.retries.with_label_values(&[stage]);
        }
        for step in STEPS {
            m.batch_step_seconds.with_label_values(&[step]);
        }
        for kind in ["assign", "revoke"] {
            m.rebalances.with_label_values(&[kind]);
        }
        for kind in fleetstream_core::events::TYPES {
            m.events.with_label_values(&[kind]);
        }
        m
    }

    fn unlabelled() -> Self {
        let r = Registry::new();
        let end_to_end = t::histogram_vec(&r, "fleetstream_processor_end_to_end_seconds", "Latency of valid positions up to processing, from the device timestamp or from receipt.", &["from"], LATENCY_BUCKETS);
        Metrics {
            consumed: t::counter(&r, "fleetstream_processor_records_consumed_total", "Records read from the input topic."),
            valid: t::counter(&r, "fleetstream_processor_positions_valid_total", "Valid positions written to the positions topic."),
            invalid: t::counter_vec(&r, "fleetstream_processor_positions_invalid_total", "Invalid records sent to the DLQ, by reason code.", &["reason"]),
            duplicates: t::counter(&r, "fleetstream_processor_duplicates_total", "Positions dropped because their (obu_id, seq) was already processed."),
            out_of_order: t::counter(&r, "fleetstream_processor_out_of_order_total", "Valid positions that arrived after a higher seq of their vehicle."),
            replayed: t::counter(&r, "fleetstream_processor_replayed_total", "Records skipped because their output was already written before a crash or retry."),
            dlq: t::counter(&r, "fleetstream_processor_dlq_records_total", "Records written to the dead-letter topic."),
            latest_writes: t::counter(&r, "fleetstream_processor_latest_writes_total", "Records written to the vehicle-latest topic."),
            retries: t::counter_vec(&r, "fleetstream_processor_retries_total", "Retries after a transient failure, by stage.", &["stage"]),
            batch_seconds: t::histogram(&r, "fleetstream_processor_batch_seconds", "Time to validate, write and commit one batch.", LATENCY_BUCKETS),
            batch_step_seconds: t::histogram_vec(&r, "fleetstream_processor_batch_step_seconds", "Time a batch spends in each step: poll (waiting for and fetching records), decide (validation, state, events), produce (records handed over until all acknowledged; in a transaction this overlaps offsets), offsets (sent to the transaction), commit.", &["step"], LATENCY_BUCKETS),
            batch_records: t::histogram(&r, "fleetstream_processor_batch_records", "Records per batch.", &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
            end_to_end_device: end_to_end.with_label_values(&["device"]),
            end_to_end_receiver: end_to_end.with_label_values(&["receiver"]),
            lag: t::gauge_vec(&r, "fleetstream_processor_consumer_lag", "Records in the input partition not yet processed (high watermark minus position).", &["partition"]),
            rebalances: t::counter_vec(&r, "fleetstream_processor_rebalances_total", "Partition assignments and revocations.", &["kind"]),
            assigned: t::gauge(&r, "fleetstream_processor_assigned_partitions", "Input partitions assigned to this processor."),
            vehicles: t::gauge(&r, "fleetstream_processor_vehicles", "Vehicles whose state this processor holds."),
            state_loads: t::counter(&r, "fleetstream_processor_state_loads_total", "Partition states rebuilt from vehicle-latest and the positions tail."),
            state_load_seconds: t::histogram(&r, "fleetstream_processor_state_load_seconds", "Time to rebuild one partition's state.", LATENCY_BUCKETS),
            commits: t::counter(&r, "fleetstream_processor_commits_total", "Batches committed (offsets after their outputs, or one transaction each)."),
            aborts: t::counter(&r, "fleetstream_processor_transactions_aborted_total", "Transactions aborted after a failure; their batches were rewound and retried."),
            fenced: t::counter(&r, "fleetstream_processor_commits_refused_total", "Batches not committed because this member may have left the group (assignment lost, or a batch older than the session allows)."),
            producers_renewed: t::counter(&r, "fleetstream_processor_producers_renewed_total", "Transactional producers made again after Kafka fenced them (a transaction outlived its timeout)."),
            events: t::counter_vec(&r, "fleetstream_processor_events_total", "Fleet events written to the events topic, by type.", &["type"]),
            geofences: t::gauge(&r, "fleetstream_processor_geofences", "Geofences loaded (from --geofences and the geofences topic)."),
            geofences_invalid: t::counter(&r, "fleetstream_processor_geofences_invalid_total", "Records of the geofences topic ignored because they are not a valid fence."),
            geofence_lookup_seconds: t::histogram(&r, "fleetstream_processor_geofence_lookup_seconds", "Time to find the fences holding one position (R-tree, then point in polygon).", &[1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2]),
            registry: r,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
