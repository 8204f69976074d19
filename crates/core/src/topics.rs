//! Default topic names. Every service takes each name it uses as a flag and env var.

/// Raw positions from the receivers, key = obu_id.
pub const RAW: &str = "gpscoords";
/// Validated, enriched positions, key = obu_id.
pub const POSITIONS: &str = "positions";
/// Latest valid position per vehicle, compacted, key = obu_id.
pub const LATEST: &str = "vehicle-latest";
/// Rejected records with headers saying why.
pub const DLQ: &str = "gpscoords-dlq";
/// Fleet events computed by the processor (geofence, overspeed, motion, online/offline,
/// ignition, alarm, trip), key = obu_id.
pub const EVENTS: &str = "events";
/// Geofence definitions (GeoJSON Features), compacted, key = fence id; a tombstone deletes.
pub const GEOFENCES: &str = "geofences";

/// Topic-level settings `vehicle-latest` is created with, wherever it is created: the
/// processor's `--create-topics`, kafka-local (tests, demo, benchmarks) and docker-compose.yml's
/// kafka-init, whose copy `scripts/check-ops` compares with `kafka-local topic-settings`.
///
/// A processor assigned a partition reads that partition of `vehicle-latest` whole to rebuild
/// its vehicles' state (docs/processing.md), so what it reads is one record per vehicle plus
/// whatever compaction has not removed yet. Kafka never compacts the active segment, and by
/// default rolls it after 7 days or 1 GiB: a week of every vehicle's every update. So:
///
/// - `segment.ms` 10 minutes (and `segment.bytes` 100 MiB, as Kafka's own compacted
///   `__consumer_offsets`): at most ten minutes of updates stay uncompacted in the active
///   segment, whatever the fleet's size;
/// - `min.cleanable.dirty.ratio` 0.1 (default 0.5): the cleaner runs once a tenth of the log
///   is superseded records, not half; the log is small (one record per vehicle), so cleaning it
///   often is cheap;
/// - `delete.retention.ms` 1 hour (default 1 day): how long compaction keeps tombstones and the
///   markers of committed transactions (one per partition per batch the processor commits)
///   after their records are cleaned. It only has to outlast one read of a partition from the
///   start (a rebuild takes seconds), so an hour is ample, and the markers stop piling up for a
///   day. (The processor writes no tombstones here; an operator deleting a vehicle might.)
pub const LATEST_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("segment.bytes", "104857600"),
    ("min.cleanable.dirty.ratio", "0.1"),
    ("delete.retention.ms", "3600000"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_latest_is_compacted_with_small_segments() {
        let get = |key: &str| LATEST_CONFIGS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        assert_eq!(get("cleanup.policy"), Some("compact"));
        let keys: std::collections::HashSet<_> = LATEST_CONFIGS.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), LATEST_CONFIGS.len(), "a key set twice");
        // What Kafka accepts: segment.ms >= 1, segment.bytes >= 1 MiB, a ratio in [0, 1].
        let number = |key: &str| get(key).and_then(|v| v.parse::<f64>().ok());
        assert!(number("segment.ms").is_some_and(|ms| (1.0..=3_600_000.0).contains(&ms)));
        assert!(number("segment.bytes").is_some_and(|b| b >= 1_048_576.0));
        assert!(number("min.cleanable.dirty.ratio").is_some_and(|r| (0.0..=1.0).contains(&r)));
        assert!(number("delete.retention.ms").is_some_and(|ms| ms >= 60_000.0));
    }
}
