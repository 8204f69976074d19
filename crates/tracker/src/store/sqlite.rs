//! The embedded backend: SQLite, compiled into the binary.
//!
//! rusqlite is synchronous, so every call runs on a blocking thread. Two connections: the
//! writer (ingest, seed, prune, migrations) and a read-only reader (the API), so a long write
//! never delays a map refresh: in WAL mode readers see the last committed state without locks.
//! `synchronous=FULL`: a committed batch survives a power cut, which is what lets the ingest
//! commit its Kafka offsets right after.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _, Row};

use fleetstream_core::events::Trip;
use fleetstream_core::{now_ms, ProcessedPosition};

use super::model::{db_int, db_order, from_db, Bbox, EventQuery, NewEvent, SqlArg, StoreError, TripRow, WriteOutcome, TRIP_COLUMNS};

/// Versioned migrations, applied in order, each once, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "positions and vehicles_latest",
        "CREATE TABLE positions (
        obu_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        speed REAL,
        heading REAL,
        speed_computed INTEGER NOT NULL DEFAULT 0,
        heading_computed INTEGER NOT NULL DEFAULT 0,
        distance_m REAL NOT NULL DEFAULT 0,
        received_at INTEGER,
        processed_at INTEGER NOT NULL,
        out_of_order INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (obu_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX positions_by_vehicle_time ON positions (obu_id, ts);
    CREATE INDEX positions_by_time ON positions (ts);
    CREATE TABLE vehicles_latest (
        obu_id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        speed REAL,
        heading REAL,
        speed_computed INTEGER NOT NULL DEFAULT 0,
        heading_computed INTEGER NOT NULL DEFAULT 0,
        distance_m REAL NOT NULL DEFAULT 0,
        received_at INTEGER,
        processed_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    ),
    (
        2,
        "events and trips",
        // A rowid table: bodies are a few hundred bytes, too large for WITHOUT ROWID to pay.
        "CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            obu_id INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            lat REAL NOT NULL,
            lon REAL NOT NULL,
            detected_at INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX events_by_vehicle_time ON events (obu_id, ts);
        CREATE INDEX events_by_time ON events (ts);
        CREATE TABLE trips (
            event_id TEXT PRIMARY KEY,
            obu_id INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            start_ts INTEGER NOT NULL,
            start_seq INTEGER NOT NULL,
            start_lat REAL NOT NULL,
            start_lon REAL NOT NULL,
            end_ts INTEGER NOT NULL,
            end_seq INTEGER NOT NULL,
            end_lat REAL NOT NULL,
            end_lon REAL NOT NULL,
            distance_m REAL NOT NULL,
            duration_s REAL NOT NULL,
            max_speed_kmh REAL NOT NULL,
            avg_speed_kmh REAL NOT NULL
        );
        CREATE INDEX trips_by_vehicle_end ON trips (obu_id, end_ts);
        CREATE INDEX trips_by_time ON trips (ts);",
    ),
    (
        3,
        "boot in positions and vehicles_latest",
        // A restarted device counts seq from 1 again under a higher boot: the history is keyed
        // by (obu_id, boot, seq). SQLite cannot change a primary key in place, so the table is
        // rebuilt (in this migration's transaction); rows stored before boots existed get boot 0,
        // which is what such devices send.
        "CREATE TABLE positions_v3 (
            obu_id INTEGER NOT NULL,
            boot INTEGER NOT NULL DEFAULT 0,
            seq INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            lat REAL NOT NULL,
            lon REAL NOT NULL,
            speed REAL,
            heading REAL,
            speed_computed INTEGER NOT NULL DEFAULT 0,
            heading_computed INTEGER NOT NULL DEFAULT 0,
            distance_m REAL NOT NULL DEFAULT 0,
            received_at INTEGER,
            processed_at INTEGER NOT NULL,
            out_of_order INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (obu_id, boot, seq)
        ) WITHOUT ROWID;
        INSERT INTO positions_v3 (obu_id, boot, seq, ts, lat, lon, speed, heading, speed_computed, heading_computed,
                                  distance_m, received_at, processed_at, out_of_order)
            SELECT obu_id, 0, seq, ts, lat, lon, speed, heading, speed_computed, heading_computed,
                   distance_m, received_at, processed_at, out_of_order FROM positions;
        DROP TABLE positions;
        ALTER TABLE positions_v3 RENAME TO positions;
        CREATE INDEX positions_by_vehicle_time ON positions (obu_id, ts);
        CREATE INDEX positions_by_time ON positions (ts);
        ALTER TABLE vehicles_latest ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        4,
        "decommissioned vehicles",
        // One row per vehicle ever decommissioned: its latest (boot, seq) then. Positions up to
        // it were sent before and never bring the vehicle back into vehicles_latest (a replay, a
        // new consumer group, a batch in hand); a later one does.
        "CREATE TABLE decommissioned (
            obu_id INTEGER PRIMARY KEY,
            boot INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            decommissioned_at INTEGER NOT NULL
        );",
    ),
];

/// The columns of a position, in the order [`row_to_position`] reads them (`boot` last: it came
/// with migration 3).
const COLUMNS: &str = "obu_id, seq, ts, lat, lon, speed, heading, speed_computed, heading_computed, distance_m, received_at, processed_at, boot";

type Shared = Arc<Mutex<Connection>>;

#[derive(Clone)]
pub struct SqliteStore {
    writer: Shared,
    reader: Shared,
    path: Arc<str>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating) the file and applies the migrations up to version `up_to`.
    pub async fn open(path: String, up_to: i64) -> Result<SqliteStore, StoreError> {
        let path2 = path.clone();
        let (writer, reader) = tokio::task::spawn_blocking(move || -> Result<(Connection, Option<Connection>), StoreError> {
            let path = path2;
            let mut writer = Connection::open(&path)?;
            writer.busy_timeout(Duration::from_secs(10))?;
            let memory = path == ":memory:";
            if !memory {
                let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(mode, "SQLite did not switch to WAL mode; readers may wait for writes");
                }
            }
            writer.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
            migrate(&mut writer, up_to)?;
            // An in-memory database exists only inside its one connection.
            let reader = if memory {
                None
            } else {
                let r = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
                r.busy_timeout(Duration::from_secs(10))?;
                Some(r)
            };
            Ok((writer, reader))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let writer = Arc::new(Mutex::new(writer));
        let reader = reader.map(|r| Arc::new(Mutex::new(r))).unwrap_or_else(|| writer.clone());
        Ok(SqliteStore { writer, reader, path: path.into() })
    }

    pub async fn write(&self, batch: Arc<Vec<ProcessedPosition>>, latest: Vec<ProcessedPosition>) -> Result<WriteOutcome, StoreError> {
        run(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let mut outcome = WriteOutcome::default();
            {
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT INTO positions ({COLUMNS}, out_of_order) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (obu_id, boot, seq) DO NOTHING"
                ))?;
                for (i, p) in batch.iter().enumerate() {
                    let changed = insert.execute(params![
                        db_int(p.obu_id)?,
                        db_int(p.seq)?,
                        p.ts,
                        p.lat,
                        p.lon,
                        p.speed,
                        p.heading,
                        p.speed_computed,
                        p.heading_computed,
                        p.distance_m,
                        p.received_at,
                        p.processed_at,
                        db_int(p.boot)?,
                        p.out_of_order,
                    ])?;
                    if changed == 1 {
                        outcome.inserted.push(i);
                    } else {
                        outcome.duplicates += 1;
                    }
                }
            }
            upsert_latest(&tx, &latest)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub async fn seed_latest(&self, latest: Vec<ProcessedPosition>) -> Result<u64, StoreError> {
        run(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let changed = upsert_latest(&tx, &latest)?;
            tx.commit()?;
            Ok(changed)
        })
        .await
    }

    pub async fn latest(&self, bbox: Option<Bbox>) -> Result<Vec<ProcessedPosition>, StoreError> {
        run(&self.reader, move |conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM vehicles_latest ORDER BY obu_id"))?;
            let rows = stmt.query_map([], |r| row_to_position(r, false))?;
            let mut out = Vec::new();
            for row in rows {
                let p = row?;
                // Filtered here rather than in SQL: a full scan either way, and the antimeridian
                // case stays in one place (Bbox::contains).
                if bbox.is_none_or(|b| b.contains(p.lat, p.lon)) {
                    out.push(p);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn vehicle(&self, obu_id: i64) -> Result<Option<ProcessedPosition>, StoreError> {
        run(&self.reader, move |conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM vehicles_latest WHERE obu_id = ?1"))?;
            Ok(stmt.query_row([obu_id], |r| row_to_position(r, false)).optional()?)
        })
        .await
    }

    pub async fn known(&self, obu_id: i64) -> Result<bool, StoreError> {
        run(&self.reader, move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM vehicles_latest WHERE obu_id = ?1) OR EXISTS (SELECT 1 FROM decommissioned WHERE obu_id = ?1)",
            )?;
            Ok(stmt.query_row([obu_id], |r| r.get(0))?)
        })
        .await
    }

    pub async fn decommission(&self, obu_id: i64, after: Option<u128>) -> Result<bool, StoreError> {
        run(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let after = match after {
                Some(order) => Some(db_order(order)?),
                None => tx
                    .query_row("SELECT boot, seq FROM vehicles_latest WHERE obu_id = ?1", [obu_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?,
            };
            // Nothing stored and nothing said: nothing to remove, nothing to hold back.
            let Some((boot, seq)): Option<(i64, i64)> = after else { return Ok(false) };
            tx.execute(
                "INSERT INTO decommissioned (obu_id, boot, seq, decommissioned_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (obu_id) DO UPDATE SET boot = excluded.boot, seq = excluded.seq, decommissioned_at = excluded.decommissioned_at
                 WHERE (excluded.boot, excluded.seq) > (decommissioned.boot, decommissioned.seq)",
                params![obu_id, boot, seq, now_ms()],
            )?;
            let removed = tx.execute("DELETE FROM vehicles_latest WHERE obu_id = ?1 AND (boot, seq) <= (?2, ?3)", params![obu_id, boot, seq])?;
            tx.commit()?;
            Ok(removed > 0)
        })
        .await
    }

    pub async fn track(&self, obu_id: i64, from: i64, to: i64, limit: i64) -> Result<Vec<ProcessedPosition>, StoreError> {
        run(&self.reader, move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS}, out_of_order FROM positions
                 WHERE obu_id = ?1 AND ts >= ?2 AND ts <= ?3 ORDER BY ts, boot, seq LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![obu_id, from, to, limit], |r| row_to_position(r, true))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn prune(&self, before: i64) -> Result<u64, StoreError> {
        run(&self.writer, move |conn| {
            let mut deleted = 0u64;
            // In slices, so the writer lock (and the ingest behind it) is never held for long.
            loop {
                let n = conn.execute(
                    "DELETE FROM positions WHERE (obu_id, boot, seq) IN (SELECT obu_id, boot, seq FROM positions WHERE ts < ?1 LIMIT 10000)",
                    [before],
                )?;
                deleted += n as u64;
                if n < 10_000 {
                    return Ok(deleted);
                }
            }
        })
        .await
    }

    pub async fn write_events(&self, events: Arc<Vec<NewEvent>>) -> Result<WriteOutcome, StoreError> {
        run(&self.writer, move |conn| {
            let tx = conn.transaction()?;
            let mut outcome = WriteOutcome::default();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (event_id, obu_id, type, ts, seq, lat, lon, detected_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (event_id) DO NOTHING",
                )?;
                let mut insert_trip = tx.prepare_cached(&format!(
                    "INSERT INTO trips ({TRIP_COLUMNS}, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (event_id) DO NOTHING"
                ))?;
                for (i, new) in events.iter().enumerate() {
                    let e = new.event();
                    let changed = insert.execute(params![
                        e.event_id,
                        db_int(e.obu_id)?,
                        e.type_name(),
                        e.ts,
                        db_int(e.seq)?,
                        e.lat,
                        e.lon,
                        e.detected_at,
                        new.body(),
                    ])?;
                    if changed != 1 {
                        outcome.duplicates += 1;
                        continue;
                    }
                    outcome.inserted.push(i);
                    if let Some(t) = new.trip() {
                        insert_trip.execute(params![
                            e.event_id,
                            db_int(e.obu_id)?,
                            t.start_ts,
                            db_int(t.start_seq)?,
                            t.start_lat,
                            t.start_lon,
                            t.end_ts,
                            db_int(t.end_seq)?,
                            t.end_lat,
                            t.end_lon,
                            t.distance_m,
                            t.duration_s,
                            t.max_speed_kmh,
                            t.avg_speed_kmh,
                            e.ts,
                        ])?;
                    }
                }
            }
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub async fn events(&self, query: EventQuery) -> Result<Vec<String>, StoreError> {
        run(&self.reader, move |conn| {
            let (sql, args) = query.sql('?')?;
            let args = args.into_iter().map(|a| match a {
                SqlArg::Int(i) => Value::Integer(i),
                SqlArg::Text(t) => Value::Text(t.to_string()),
            });
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn trips(&self, obu_id: i64, from: i64, to: i64, limit: i64) -> Result<Vec<TripRow>, StoreError> {
        run(&self.reader, move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {TRIP_COLUMNS} FROM trips
                 WHERE obu_id = ?1 AND end_ts >= ?2 AND start_ts <= ?3 ORDER BY end_ts DESC, event_id LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![obu_id, from, to, limit], |r| {
                Ok(TripRow {
                    event_id: r.get(0)?,
                    obu_id: from_db(r.get(1)?),
                    trip: Trip {
                        start_ts: r.get(2)?,
                        start_seq: from_db(r.get(3)?),
                        start_lat: r.get(4)?,
                        start_lon: r.get(5)?,
                        end_ts: r.get(6)?,
                        end_seq: from_db(r.get(7)?),
                        end_lat: r.get(8)?,
                        end_lon: r.get(9)?,
                        distance_m: r.get(10)?,
                        duration_s: r.get(11)?,
                        max_speed_kmh: r.get(12)?,
                        avg_speed_kmh: r.get(13)?,
                    },
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        run(&self.writer, move |conn| {
            let mut deleted = 0u64;
            // Trips go with their events (the same ts); only events are counted.
            for table in ["trips", "events"] {
                loop {
                    let n = conn.execute(
                        &format!("DELETE FROM {table} WHERE event_id IN (SELECT event_id FROM {table} WHERE ts < ?1 LIMIT 10000)"),
                        [before],
                    )?;
                    if table == "events" {
                        deleted += n as u64;
                    }
                    if n < 10_000 {
                        break;
                    }
                }
            }
            Ok(deleted)
        })
        .await
    }

    pub async fn event_count(&self) -> Result<i64, StoreError> {
        run(&self.reader, |conn| Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)).await
    }

    pub async fn vehicle_count(&self) -> Result<i64, StoreError> {
        run(&self.reader, |conn| Ok(conn.query_row("SELECT count(*) FROM vehicles_latest", [], |r| r.get(0))?)).await
    }

    pub async fn position_count(&self) -> Result<i64, StoreError> {
        run(&self.reader, |conn| Ok(conn.query_row("SELECT count(*) FROM positions", [], |r| r.get(0))?)).await
    }

    pub async fn migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        run(&self.reader, |conn| {
            let mut stmt = conn.prepare("SELECT version, name FROM schema_migrations ORDER BY version")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Runs `f` with the connection on a blocking thread.
async fn run<T: Send + 'static>(
    conn: &Shared,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        // A panic while the lock was held cannot leave a transaction open (rusqlite rolls back
        // on drop), so the connection is still good.
        let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

fn migrate(conn: &mut Connection, up_to: i64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= up_to) {
        // IMMEDIATE takes the write lock first: two trackers starting on one file cannot both
        // apply a migration.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)", [version], |r| r.get(0))?;
        if !applied {
            tx.execute_batch(sql)?;
            tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)", params![version, name, now_ms()])?;
            tracing::info!(version, name, "SQLite migration applied");
        }
        tx.commit()?;
    }
    Ok(())
}

fn upsert_latest(tx: &rusqlite::Transaction<'_>, latest: &[ProcessedPosition]) -> Result<u64, StoreError> {
    // A decommissioned vehicle comes back only with a position after its decommission.
    let mut upsert = tx.prepare_cached(&format!(
        "INSERT INTO vehicles_latest ({COLUMNS}, updated_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14
         WHERE NOT EXISTS (SELECT 1 FROM decommissioned d WHERE d.obu_id = ?1 AND (d.boot, d.seq) >= (?13, ?2))
         ON CONFLICT (obu_id) DO UPDATE SET
            boot = excluded.boot, seq = excluded.seq, ts = excluded.ts, lat = excluded.lat, lon = excluded.lon,
            speed = excluded.speed, heading = excluded.heading,
            speed_computed = excluded.speed_computed, heading_computed = excluded.heading_computed,
            distance_m = excluded.distance_m, received_at = excluded.received_at,
            processed_at = excluded.processed_at, updated_at = excluded.updated_at
         WHERE (excluded.boot, excluded.seq) > (vehicles_latest.boot, vehicles_latest.seq)"
    ))?;
    let now = now_ms();
    let mut changed = 0u64;
    for p in latest {
        changed += upsert.execute(params![
            db_int(p.obu_id)?,
            db_int(p.seq)?,
            p.ts,
            p.lat,
            p.lon,
            p.speed,
            p.heading,
            p.speed_computed,
            p.heading_computed,
            p.distance_m,
            p.received_at,
            p.processed_at,
            db_int(p.boot)?,
            now,
        ])? as u64;
    }
    Ok(changed)
}

fn row_to_position(r: &Row<'_>, with_out_of_order: bool) -> rusqlite::Result<ProcessedPosition> {
    Ok(ProcessedPosition {
        obu_id: from_db(r.get(0)?),
        seq: from_db(r.get(1)?),
        boot: from_db(r.get(12)?),
        ts: r.get(2)?,
        lat: r.get(3)?,
        lon: r.get(4)?,
        speed: r.get(5)?,
        heading: r.get(6)?,
        speed_computed: r.get(7)?,
        heading_computed: r.get(8)?,
        distance_m: r.get(9)?,
        received_at: r.get(10)?,
        processed_at: r.get(11)?,
        out_of_order: if with_out_of_order { r.get(13)? } else { false },
        attributes: None,
    })
}
