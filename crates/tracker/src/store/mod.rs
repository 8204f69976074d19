//! Where positions are kept: one interface, two backends.
//!
//! - SQLite (default, `sqlite://FILE`): embedded, compiled into the binary, nothing to set up.
//!   One writer connection and one reader connection (WAL mode, so readers never wait for the
//!   writer), each used from a blocking thread.
//! - PostgreSQL (`postgres://...`): a connection pool; batches go in as arrays (`UNNEST`).
//!
//! Both hold the same tables (see the migrations in each backend):
//! - `positions`: the history, one row per `(obu_id, boot, seq)` (the primary key), so writing a
//!   batch again (a replay after a crash, a new consumer group) inserts nothing twice, and a
//!   device that restarted its seq under a higher boot collides with nothing;
//! - `vehicles_latest`: one row per vehicle, replaced only by a later position (a higher
//!   `(boot, seq)`, [`ProcessedPosition::order`]), so neither a late position nor a replay moves
//!   it backwards;
//! - `events`: fleet events, one row per `event_id` (deterministic, so an event redelivered or
//!   computed again is stored once), with the record's JSON as it came in `body`;
//! - `trips`: one row per `trip` event (same `event_id`), its fields as columns, so trips can be
//!   asked for by the time they overlap. Pruned with the events;
//! - `decommissioned`: one row per vehicle taken off the map (a tombstone in `vehicle-latest`),
//!   with its latest `(boot, seq)` then: positions up to it never put it back into
//!   `vehicles_latest` (a replay, a new consumer group), a later one does. Its history stays.
//!
//! obu_id, boot and seq are u64 on the wire and signed 64-bit integers in both databases: values
//! above `i64::MAX` cannot be stored (the ingest counts them as skipped, the API refuses such ids).

mod model;
mod postgres;
mod sqlite;

use std::sync::Arc;

use fleetstream_core::ProcessedPosition;

pub use self::model::{db_int, storable, Bbox, BboxError, EventQuery, EventRecordError, NewEvent, StoreError, TripRow, WriteOutcome};
pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;

/// A database holding the history and the latest position of every vehicle.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connects (creating an SQLite file if needed) and applies pending migrations.
    pub async fn open(url: &str, pool_size: usize) -> Result<Store, StoreError> {
        Store::open_migrated_to(url, pool_size, i64::MAX).await
    }

    /// [`Store::open`], applying the migrations up to version `up_to` only: a database as an
    /// earlier tracker left it, for upgrade tests.
    pub async fn open_migrated_to(url: &str, pool_size: usize, up_to: i64) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::open(url, pool_size, up_to).await?))
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::open(sqlite_path(rest)?, up_to).await?))
        } else {
            Err(StoreError::Url("expected sqlite://FILE, sqlite::memory: or postgres://...".into()))
        }
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// In one transaction: inserts the positions not stored yet into the history, and moves
    /// each vehicle's latest position forward to its latest in-order position of the batch.
    pub async fn write(&self, batch: Arc<Vec<ProcessedPosition>>) -> Result<WriteOutcome, StoreError> {
        let latest = newest_per_vehicle(batch.iter().filter(|p| !p.out_of_order));
        match self {
            Store::Sqlite(s) => s.write(batch, latest).await,
            Store::Postgres(s) => s.write(&batch, &latest).await,
        }
    }

    /// Moves latest positions forward (never backwards), without touching the history: the
    /// start-up seed from `vehicle-latest`. Returns how many vehicles changed.
    pub async fn seed_latest(&self, latest: Vec<ProcessedPosition>) -> Result<u64, StoreError> {
        let latest = newest_per_vehicle(latest.iter());
        match self {
            Store::Sqlite(s) => s.seed_latest(latest).await,
            Store::Postgres(s) => s.seed_latest(&latest).await,
        }
    }

    /// The latest position of every vehicle (inside `bbox` if given), by obu_id.
    pub async fn latest(&self, bbox: Option<Bbox>) -> Result<Vec<ProcessedPosition>, StoreError> {
        match self {
            Store::Sqlite(s) => s.latest(bbox).await,
            Store::Postgres(s) => s.latest(bbox).await,
        }
    }

    /// The latest position of one vehicle.
    pub async fn vehicle(&self, obu_id: u64) -> Result<Option<ProcessedPosition>, StoreError> {
        let id = db_int(obu_id)?;
        match self {
            Store::Sqlite(s) => s.vehicle(id).await,
            Store::Postgres(s) => s.vehicle(id).await,
        }
    }

    /// Whether the tracker knows the vehicle: it has a latest position, or had one until it was
    /// decommissioned (its history may still be stored).
    pub async fn known(&self, obu_id: u64) -> Result<bool, StoreError> {
        let id = db_int(obu_id)?;
        match self {
            Store::Sqlite(s) => s.known(id).await,
            Store::Postgres(s) => s.known(id).await,
        }
    }

    /// In one transaction: removes the vehicle's latest position if it is not after `after` (an
    /// [`ProcessedPosition::order`]; `None`: the stored one), and remembers `after` so that no
    /// position up to it puts the vehicle back. The history is kept. Whether a latest position was
    /// removed.
    pub async fn decommission(&self, obu_id: u64, after: Option<u128>) -> Result<bool, StoreError> {
        let id = db_int(obu_id)?;
        match self {
            Store::Sqlite(s) => s.decommission(id, after).await,
            Store::Postgres(s) => s.decommission(id, after).await,
        }
    }

    /// The stored positions of a vehicle with `from <= ts <= to` (device time, Unix ms), by
    /// time, then boot and seq; at most `limit`.
    pub async fn track(&self, obu_id: u64, from: i64, to: i64, limit: usize) -> Result<Vec<ProcessedPosition>, StoreError> {
        let id = db_int(obu_id)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Store::Sqlite(s) => s.track(id, from, to, limit).await,
            Store::Postgres(s) => s.track(id, from, to, limit).await,
        }
    }

    /// Deletes history rows with `ts < before` (device time, Unix ms). Returns how many.
    pub async fn prune(&self, before: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune(before).await,
            Store::Postgres(s) => s.prune(before).await,
        }
    }

    /// In one transaction: inserts the events not stored yet (by event_id), and the trip of
    /// each new `trip` event.
    pub async fn write_events(&self, events: Arc<Vec<NewEvent>>) -> Result<WriteOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.write_events(events).await,
            Store::Postgres(s) => s.write_events(&events).await,
        }
    }

    /// The JSON bodies of the stored events the query asks for, newest first (by `ts`).
    pub async fn events(&self, query: EventQuery) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.events(query).await,
            Store::Postgres(s) => s.events(query).await,
        }
    }

    /// The trips of a vehicle that overlap `from ..= to` (`start_ts <= to` and `end_ts >= from`,
    /// device time, Unix ms), the latest-ending first; at most `limit`.
    pub async fn trips(&self, obu_id: u64, from: i64, to: i64, limit: usize) -> Result<Vec<TripRow>, StoreError> {
        let id = db_int(obu_id)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Store::Sqlite(s) => s.trips(id, from, to, limit).await,
            Store::Postgres(s) => s.trips(id, from, to, limit).await,
        }
    }

    /// Deletes events (and their trips) with `ts < before` (device time, Unix ms). Returns how
    /// many events.
    pub async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune_events(before).await,
            Store::Postgres(s) => s.prune_events(before).await,
        }
    }

    /// How many events are stored.
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.event_count().await,
            Store::Postgres(s) => s.event_count().await,
        }
    }

    /// How many vehicles have a latest position.
    pub async fn vehicle_count(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.vehicle_count().await,
            Store::Postgres(s) => s.vehicle_count().await,
        }
    }

    /// How many positions the history holds.
    pub async fn position_count(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.position_count().await,
            Store::Postgres(s) => s.position_count().await,
        }
    }

    /// The applied migrations, oldest first: (version, name).
    pub async fn migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.migrations().await,
            Store::Postgres(s) => s.migrations().await,
        }
    }
}

/// The file path of an `sqlite:` URL (the part after `sqlite:`): `//relative.db`,
/// `///absolute/path.db`, `relative.db`, or `:memory:`. Query parameters are not supported.
fn sqlite_path(rest: &str) -> Result<String, StoreError> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(StoreError::Url("sqlite:// needs a file name, e.g. sqlite://fleetstream-tracker.db".into()));
    }
    if path.contains('?') {
        return Err(StoreError::Url("query parameters are not supported in an sqlite URL".into()));
    }
    Ok(path.to_string())
}

/// The latest position (highest `(boot, seq)`) of each vehicle, by obu_id (an upsert may touch a
/// row once).
fn newest_per_vehicle<'a>(positions: impl Iterator<Item = &'a ProcessedPosition>) -> Vec<ProcessedPosition> {
    let mut newest: std::collections::BTreeMap<u64, &ProcessedPosition> = std::collections::BTreeMap::new();
    for p in positions {
        match newest.get(&p.obu_id) {
            Some(q) if q.order() >= p.order() => {}
            _ => {
                newest.insert(p.obu_id, p);
            }
        }
    }
    newest.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(obu_id: u64, seq: u64, out_of_order: bool) -> ProcessedPosition {
        ProcessedPosition {
            obu_id,
            seq,
            boot: 0,
            ts: seq as i64 * 1000,
            lat: 52.5,
            lon: 13.4,
            speed: None,
            heading: None,
            speed_computed: false,
            heading_computed: false,
            distance_m: 0.0,
            received_at: None,
            processed_at: 0,
            out_of_order,
            attributes: None,
        }
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        assert_eq!(sqlite_path("//fleetstream-tracker.db").expect("a valid sqlite URL"), "fleetstream-tracker.db");
        assert_eq!(sqlite_path("///var/lib/tracker.db").expect("a valid sqlite URL"), "/var/lib/tracker.db");
        assert_eq!(sqlite_path(":memory:").expect("a valid sqlite URL"), ":memory:");
        assert!(sqlite_path("//").is_err());
        assert!(sqlite_path("//x.db?mode=ro").is_err());
    }

    #[test]
    fn newest_per_vehicle_keeps_the_highest_seq() {
        let batch = [pos(1, 5, false), pos(2, 1, false), pos(1, 7, false), pos(1, 6, false)];
        let newest = newest_per_vehicle(batch.iter());
        assert_eq!(newest.iter().map(|p| (p.obu_id, p.seq)).collect::<Vec<_>>(), vec![(1, 7), (2, 1)]);
    }

    #[test]
    fn a_later_boot_is_newer_whatever_its_seq() {
        let restarted = ProcessedPosition { boot: 2, ..pos(1, 1, false) };
        let batch = [pos(1, 90, false), restarted, ProcessedPosition { boot: 1, ..pos(1, 500, false) }];
        let newest = newest_per_vehicle(batch.iter());
        assert_eq!(newest.iter().map(|p| (p.boot, p.seq)).collect::<Vec<_>>(), vec![(2, 1)]);
    }
}
