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
