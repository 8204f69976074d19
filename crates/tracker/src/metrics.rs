//! The tracker's metrics. Labels are bounded: route templates, status codes, reasons.

use fleetstream_core::telemetry::{self as t, LATENCY_BUCKETS};
use fleetstream_core::events::TYPES;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub consumed: IntCounter,
    pub skipped: IntCounterVec,
    pub written: IntCounter,
    pub duplicates: IntCounter,
    pub batch_size: Histogram,
    pub flush_seconds: Histogram,
    pub db_errors: IntCounterVec,
    pub commits: IntCounter,
    pub latest_seeded: IntCounter,
    pub latest_followed: IntCounter,
    pub api_requests: IntCounterVec,
    pub live_clients: IntGaugeVec,
    pub live_lagged: IntCounterVec,
    pub pruned: IntCounter,
    pub vehicles: IntGauge,
    pub events_consumed: IntCounter,
    pub events_stored: IntCounterVec,
    pub event_duplicates: IntCounter,
    pub events_skipped: IntCounterVec,
    pub events_pruned: IntCounter,
    pub geofences: IntGauge,
    pub geofence_records_invalid: IntCounter,
    pub geofence_writes: IntCounterVec,
    pub api_auth_refused: IntCounterVec,
    pub decommissions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            consumed: t::counter(&r, "fleetstream_tracker_positions_consumed_total", "Records read from the positions topic."),
            skipped: t::counter_vec(&r, "fleetstream_tracker_positions_skipped_total", "Records of the positions topic that cannot be stored, by reason (undecodable, out_of_range).", &["reason"]),
            written: t::counter(&r, "fleetstream_tracker_positions_written_total", "Positions newly stored in the history."),
            duplicates: t::counter(&r, "fleetstream_tracker_duplicates_skipped_total", "Positions not stored because their (obu_id, boot, seq) was already in the history (replays)."),
            batch_size: t::histogram(&r, "fleetstream_tracker_batch_size", "Positions per database write.", &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]),
            flush_seconds: t::histogram(&r, "fleetstream_tracker_flush_seconds", "Time to write one batch to the database and commit its offsets.", LATENCY_BUCKETS),
            db_errors: t::counter_vec(&r, "fleetstream_tracker_db_errors_total", "Failed database operations, by operation.", &["op"]),
            commits: t::counter(&r, "fleetstream_tracker_commits_total", "Offset commits after a batch was durably stored."),
            latest_seeded: t::counter(&r, "fleetstream_tracker_latest_seeded_total", "Records read from vehicle-latest at start-up."),
            latest_followed: t::counter(&r, "fleetstream_tracker_latest_followed_total", "Records read from vehicle-latest after start-up (following it for tombstones and where vehicles are)."),
            api_requests: t::counter_vec(&r, "fleetstream_tracker_api_requests_total", "HTTP requests, by route template and status code.", &["route", "status"]),
            live_clients: t::gauge_vec(&r, "fleetstream_tracker_live_clients", "Clients connected to a live feed, by feed (positions, events).", &["feed"]),
            live_lagged: t::counter_vec(&r, "fleetstream_tracker_live_lagged_total", "Times a live-feed client fell behind and missed updates, by feed.", &["feed"]),
            pruned: t::counter(&r, "fleetstream_tracker_retention_pruned_total", "Positions deleted because they were older than the retention."),
            vehicles: t::gauge(&r, "fleetstream_tracker_vehicles", "Vehicles with a latest position."),
            events_consumed: t::counter(&r, "fleetstream_tracker_events_consumed_total", "Records read from the events topic."),
            events_stored: t::counter_vec(&r, "fleetstream_tracker_events_stored_total", "Fleet events newly stored, by type.", &["type"]),
            event_duplicates: t::counter(&r, "fleetstream_tracker_event_duplicates_skipped_total", "Events not stored because their event_id was already stored (replays, recomputations)."),
            events_skipped: t::counter_vec(&r, "fleetstream_tracker_events_skipped_total", "Records of the events topic that cannot be stored, by reason (undecodable, out_of_range).", &["reason"]),
            events_pruned: t::counter(&r, "fleetstream_tracker_events_pruned_total", "Events (with their trips) deleted because they were older than the retention."),
            geofences: t::gauge(&r, "fleetstream_tracker_geofences", "Geofences in the geofences topic, as this tracker follows it."),
            geofence_records_invalid: t::counter(&r, "fleetstream_tracker_geofence_records_invalid_total", "Records of the geofences topic that are not a valid fence (ignored)."),
            geofence_writes: t::counter_vec(&r, "fleetstream_tracker_geofence_writes_total", "Geofence writes to Kafka from the API, by op (put, delete) and outcome (ok, failed).", &["op", "outcome"]),
            api_auth_refused: t::counter_vec(&r, "fleetstream_tracker_api_auth_refused_total", "API requests refused, by reason (missing: no token, invalid: unknown token, forbidden: the token's role may not do this).", &["reason"]),
            decommissions: t::counter_vec(&r, "fleetstream_tracker_decommissions_total", "Decommissions, by source (api: a DELETE /api/vehicles/{id} this tracker answered 204; topic: a tombstone read from vehicle-latest that took a vehicle off this tracker's view, whoever wrote it).", &["source"]),
            registry: r,
        }
        .with_known_labels()
    }
}

impl Metrics {
    /// Every bounded label value starts at 0, so /metrics lists the series (and rate() works)
    /// before the first occurrence.
    pub(crate) fn with_known_labels(self) -> Self {
        for op in ["write", "write_events", "seed", "count", "latest", "vehicle", "known", "track", "events", "trips", "prune", "decommission"] {
            let _ = self.db_errors.with_label_values(&[op]);
        }
        for reason in ["undecodable", "out_of_range"] {
            let _ = self.skipped.with_label_values(&[reason]);
            let _ = self.events_skipped.with_label_values(&[reason]);
        }
        for ty in TYPES {
            let _ = self.events_stored.with_label_values(&[ty]);
        }
        for feed in ["positions", "events"] {
            let _ = self.live_clients.with_label_values(&[feed]);
            let _ = self.live_lagged.with_label_values(&[feed]);
        }
        for source in ["api", "topic"] {
            let _ = self.decommissions.with_label_values(&[source]);
        }
        for op in ["put", "delete"] {
            for outcome in ["ok", "failed"] {
                let _ = self.geofence_writes.with_label_values(&[op, outcome]);
            }
        }
        self
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
