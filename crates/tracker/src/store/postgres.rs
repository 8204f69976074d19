//! The production backend: PostgreSQL through a connection pool.
//!
//! A batch is one transaction of two statements, each taking the whole batch as arrays
//! (`UNNEST`), so a thousand positions cost two round trips. Connections are plain TCP or a
//! Unix socket (`host=/run/postgresql`); TLS is not built in.

use std::time::Duration;

use deadpool_postgres::tokio_postgres::{self, types::ToSql, NoTls, Row};
use deadpool_postgres::{GenericClient as _, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use fleetstream_core::events::Trip;
use fleetstream_core::{now_ms, ProcessedPosition};

use super::model::{db_int, db_order, from_db, Bbox, EventQuery, NewEvent, SqlArg, StoreError, TripRow, WriteOutcome, TRIP_COLUMNS};

/// Versioned migrations, applied in order, each once, under an advisory lock so that trackers
/// starting together do not race.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "positions and vehicles_latest",
        "CREATE TABLE positions (
        obu_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        lat DOUBLE PRECISION NOT NULL,
        lon DOUBLE PRECISION NOT NULL,
        speed DOUBLE PRECISION,
        heading DOUBLE PRECISION,
        speed_computed BOOLEAN NOT NULL DEFAULT false,
        heading_computed BOOLEAN NOT NULL DEFAULT false,
        distance_m DOUBLE PRECISION NOT NULL DEFAULT 0,
        received_at BIGINT,
        processed_at BIGINT NOT NULL,
        out_of_order BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (obu_id, seq)
    );
    CREATE INDEX positions_by_vehicle_time ON positions (obu_id, ts);
    CREATE INDEX positions_by_time ON positions (ts);
    CREATE TABLE vehicles_latest (
        obu_id BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        lat DOUBLE PRECISION NOT NULL,
        lon DOUBLE PRECISION NOT NULL,
        speed DOUBLE PRECISION,
        heading DOUBLE PRECISION,
        speed_computed BOOLEAN NOT NULL DEFAULT false,
        heading_computed BOOLEAN NOT NULL DEFAULT false,
        distance_m DOUBLE PRECISION NOT NULL DEFAULT 0,
        received_at BIGINT,
        processed_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
    ),
    (
        2,
        "events and trips",
        // The body is TEXT, not JSONB: it is answered as it came, and JSONB refuses some valid
        // JSON text (\u0000), which would stop the ingest on one record.
        "CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            obu_id BIGINT NOT NULL,
            type TEXT NOT NULL,
            ts BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            lat DOUBLE PRECISION NOT NULL,
            lon DOUBLE PRECISION NOT NULL,
            detected_at BIGINT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX events_by_vehicle_time ON events (obu_id, ts);
        CREATE INDEX events_by_time ON events (ts);
        CREATE TABLE trips (
            event_id TEXT PRIMARY KEY,
            obu_id BIGINT NOT NULL,
            ts BIGINT NOT NULL,
            start_ts BIGINT NOT NULL,
            start_seq BIGINT NOT NULL,
            start_lat DOUBLE PRECISION NOT NULL,
            start_lon DOUBLE PRECISION NOT NULL,
            end_ts BIGINT NOT NULL,
            end_seq BIGINT NOT NULL,
            end_lat DOUBLE PRECISION NOT NULL,
            end_lon DOUBLE PRECISION NOT NULL,
            distance_m DOUBLE PRECISION NOT NULL,
            duration_s DOUBLE PRECISION NOT NULL,
            max_speed_kmh DOUBLE PRECISION NOT NULL,
            avg_speed_kmh DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX trips_by_vehicle_end ON trips (obu_id, end_ts);
        CREATE INDEX trips_by_time ON trips (ts);",
    ),
    (
        3,
        "boot in positions and vehicles_latest",
        // A restarted device counts seq from 1 again under a higher boot: the history is keyed
        // by (obu_id, boot, seq). Rows stored before boots existed get boot 0, which is what such
        // devices send (a constant default: no table rewrite; the key's index is rebuilt).
        "ALTER TABLE positions ADD COLUMN boot BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE positions DROP CONSTRAINT positions_pkey;
        ALTER TABLE positions ADD PRIMARY KEY (obu_id, boot, seq);
        ALTER TABLE vehicles_latest ADD COLUMN boot BIGINT NOT NULL DEFAULT 0;",
    ),
    (
        4,
        "decommissioned vehicles",
        // One row per vehicle ever decommissioned: its latest (boot, seq) then. Positions up to
        // it were sent before and never bring the vehicle back into vehicles_latest (a replay, a
        // new consumer group, a batch in hand); a later one does.
        "CREATE TABLE decommissioned (
            obu_id BIGINT PRIMARY KEY,
            boot BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            decommissioned_at BIGINT NOT NULL
        );",
    ),
];

/// Key of the advisory lock held while migrating ("fleetstr" in ASCII).
const MIGRATION_LOCK: i64 = 0x666c_6565_7473_7472;

/// The columns of a position, in the order [`row_to_position`] reads them and [`Columns`] holds
/// them (`boot` last: it came with migration 3).
const COLUMNS: &str = "obu_id, seq, ts, lat, lon, speed, heading, speed_computed, heading_computed, distance_m, received_at, processed_at, boot";
const ARRAYS: &str = "$1::int8[], $2::int8[], $3::int8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], \
                      $8::bool[], $9::bool[], $10::float8[], $11::int8[], $12::int8[], $13::int8[]";

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("status", &self.pool.status()).finish()
    }
}

/// The columns of a batch as arrays, in `COLUMNS` order.
struct Columns {
    obu_id: Vec<i64>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    speed: Vec<Option<f64>>,
    heading: Vec<Option<f64>>,
    speed_computed: Vec<bool>,
    heading_computed: Vec<bool>,
    distance_m: Vec<f64>,
    received_at: Vec<Option<i64>>,
    processed_at: Vec<i64>,
    boot: Vec<i64>,
}

impl Columns {
    fn of<'a>(positions: impl ExactSizeIterator<Item = &'a ProcessedPosition>) -> Result<Columns, StoreError> {
        let n = positions.len();
        let mut c = Columns {
            obu_id: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            lat: Vec::with_capacity(n),
            lon: Vec::with_capacity(n),
            speed: Vec::with_capacity(n),
            heading: Vec::with_capacity(n),
            speed_computed: Vec::with_capacity(n),
            heading_computed: Vec::with_capacity(n),
            distance_m: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
            processed_at: Vec::with_capacity(n),
            boot: Vec::with_capacity(n),
        };
        for p in positions {
            c.obu_id.push(db_int(p.obu_id)?);
            c.seq.push(db_int(p.seq)?);
            c.ts.push(p.ts);
            c.lat.push(p.lat);
            c.lon.push(p.lon);
            c.speed.push(p.speed);
            c.heading.push(p.heading);
            c.speed_computed.push(p.speed_computed);
            c.heading_computed.push(p.heading_computed);
            c.distance_m.push(p.distance_m);
            c.received_at.push(p.received_at);
            c.processed_at.push(p.processed_at);
            c.boot.push(db_int(p.boot)?);
        }
        Ok(c)
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.obu_id,
            &self.seq,
            &self.ts,
            &self.lat,
            &self.lon,
            &self.speed,
            &self.heading,
            &self.speed_computed,
            &self.heading_computed,
            &self.distance_m,
            &self.received_at,
            &self.processed_at,
            &self.boot,
        ]
    }
}

/// The columns of an events batch as arrays.
#[derive(Default)]
struct EventColumns<'a> {
    event_id: Vec<&'a str>,
    obu_id: Vec<i64>,
    kind: Vec<&'static str>,
    ts: Vec<i64>,
    seq: Vec<i64>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    detected_at: Vec<i64>,
    body: Vec<&'a str>,
}

/// The columns of the trips of an events batch as arrays, in `TRIP_COLUMNS` order, then `ts`.
#[derive(Default)]
struct TripColumns<'a> {
    event_id: Vec<&'a str>,
    obu_id: Vec<i64>,
    start_ts: Vec<i64>,
    start_seq: Vec<i64>,
    start_lat: Vec<f64>,
    start_lon: Vec<f64>,
    end_ts: Vec<i64>,
    end_seq: Vec<i64>,
    end_lat: Vec<f64>,
    end_lon: Vec<f64>,
    distance_m: Vec<f64>,
    duration_s: Vec<f64>,
    max_speed_kmh: Vec<f64>,
    avg_speed_kmh: Vec<f64>,
    ts: Vec<i64>,
}

impl<'a> TripColumns<'a> {
    fn push(&mut self, event_id: &'a str, obu_id: i64, ts: i64, t: &Trip) -> Result<(), StoreError> {
        self.event_id.push(event_id);
        self.obu_id.push(obu_id);
        self.start_ts.push(t.start_ts);
        self.start_seq.push(db_int(t.start_seq)?);
        self.start_lat.push(t.start_lat);
        self.start_lon.push(t.start_lon);
        self.end_ts.push(t.end_ts);
        self.end_seq.push(db_int(t.end_seq)?);
        self.end_lat.push(t.end_lat);
        self.end_lon.push(t.end_lon);
        self.distance_m.push(t.distance_m);
        self.duration_s.push(t.duration_s);
        self.max_speed_kmh.push(t.max_speed_kmh);
        self.avg_speed_kmh.push(t.avg_speed_kmh);
        self.ts.push(ts);
        Ok(())
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.event_id,
            &self.obu_id,
            &self.start_ts,
            &self.start_seq,
            &self.start_lat,
            &self.start_lon,
            &self.end_ts,
            &self.end_seq,
            &self.end_lat,
            &self.end_lon,
            &self.distance_m,
            &self.duration_s,
            &self.max_speed_kmh,
            &self.avg_speed_kmh,
            &self.ts,
        ]
    }
}

impl PgStore {
    /// Connects and applies the migrations up to version `up_to`.
    pub async fn open(url: &str, pool_size: usize, up_to: i64) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| StoreError::Url(e.to_string()))?;
        // An unreachable server fails the attempt (and the ingest retries) instead of hanging.
        config.connect_timeout(Duration::from_secs(5));
        if config.get_application_name().is_none() {
            config.application_name("fleetstream-tracker");
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Url(e.to_string()))?;
        let store = PgStore { pool };
        store.migrate(up_to).await?;
        Ok(store)
    }

    async fn migrate(&self, up_to: i64) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await?;
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v <= up_to) {
            let applied = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await?.is_some();
            if !applied {
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)", &[version, name, &now_ms()])
                    .await?;
                tracing::info!(version, name, "PostgreSQL migration applied");
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn write(&self, batch: &[ProcessedPosition], latest: &[ProcessedPosition]) -> Result<WriteOutcome, StoreError> {
        // One row per key: inside one statement a repeated key would be reported as inserted
        // once and skipped once anyway, but indices are easier to map back without repeats.
        let mut seen = std::collections::HashSet::with_capacity(batch.len());
        let firsts: Vec<usize> = (0..batch.len()).filter(|&i| seen.insert((batch[i].obu_id, batch[i].boot, batch[i].seq))).collect();
        let cols = Columns::of(firsts.iter().map(|&i| &batch[i]))?;
        let out_of_order: Vec<bool> = firsts.iter().map(|&i| batch[i].out_of_order).collect();
        let latest_cols = Columns::of(latest.iter())?;

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO positions ({COLUMNS}, out_of_order)
                 SELECT * FROM UNNEST({ARRAYS}, $14::bool[])
                 ON CONFLICT (obu_id, boot, seq) DO NOTHING
                 RETURNING obu_id, boot, seq"
            ))
            .await?;
        let mut params = cols.params();
        params.push(&out_of_order);
        let rows = tx.query(&insert, &params).await?;
        let mut new: std::collections::HashSet<(i64, i64, i64)> = std::collections::HashSet::with_capacity(rows.len());
        for row in rows {
            new.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        }
        upsert_latest(&tx, &latest_cols).await?;
        tx.commit().await?;

        let mut outcome = WriteOutcome::default();
        for (i, p) in batch.iter().enumerate() {
            let key = (db_int(p.obu_id)?, db_int(p.boot)?, db_int(p.seq)?);
            if new.remove(&key) {
                outcome.inserted.push(i);
            } else {
                outcome.duplicates += 1;
            }
        }
        Ok(outcome)
    }

    pub async fn seed_latest(&self, latest: &[ProcessedPosition]) -> Result<u64, StoreError> {
        let cols = Columns::of(latest.iter())?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let changed = upsert_latest(&tx, &cols).await?;
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn latest(&self, bbox: Option<Bbox>) -> Result<Vec<ProcessedPosition>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&format!("SELECT {COLUMNS} FROM vehicles_latest ORDER BY obu_id")).await?;
        let rows = client.query(&stmt, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let p = row_to_position(&row, false)?;
            if bbox.is_none_or(|b| b.contains(p.lat, p.lon)) {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub async fn vehicle(&self, obu_id: i64) -> Result<Option<ProcessedPosition>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&format!("SELECT {COLUMNS} FROM vehicles_latest WHERE obu_id = $1")).await?;
        match client.query_opt(&stmt, &[&obu_id]).await? {
            Some(row) => Ok(Some(row_to_position(&row, false)?)),
            None => Ok(None),
        }
    }

    pub async fn known(&self, obu_id: i64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM vehicles_latest WHERE obu_id = $1) OR EXISTS (SELECT 1 FROM decommissioned WHERE obu_id = $1)",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&obu_id]).await?.try_get(0)?)
    }

    pub async fn decommission(&self, obu_id: i64, after: Option<u128>) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let after = match after {
            Some(order) => Some(db_order(order)?),
            None => match tx.query_opt("SELECT boot, seq FROM vehicles_latest WHERE obu_id = $1", &[&obu_id]).await? {
                Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
                None => None,
            },
        };
        // Nothing stored and nothing said: nothing to remove, nothing to hold back.
        let Some((boot, seq)): Option<(i64, i64)> = after else { return Ok(false) };
        tx.execute(
            "INSERT INTO decommissioned (obu_id, boot, seq, decommissioned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (obu_id) DO UPDATE SET boot = EXCLUDED.boot, seq = EXCLUDED.seq, decommissioned_at = EXCLUDED.decommissioned_at
             WHERE (EXCLUDED.boot, EXCLUDED.seq) > (decommissioned.boot, decommissioned.seq)",
            &[&obu_id, &boot, &seq, &now_ms()],
        )
        .await?;
        let removed = tx.execute("DELETE FROM vehicles_latest WHERE obu_id = $1 AND (boot, seq) <= ($2, $3)", &[&obu_id, &boot, &seq]).await?;
        tx.commit().await?;
        Ok(removed > 0)
    }

    pub async fn track(&self, obu_id: i64, from: i64, to: i64, limit: i64) -> Result<Vec<ProcessedPosition>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, out_of_order FROM positions
                 WHERE obu_id = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts, boot, seq LIMIT $4"
            ))
            .await?;
        let rows = client.query(&stmt, &[&obu_id, &from, &to, &limit]).await?;
        rows.iter().map(|r| row_to_position(r, true)).collect()
    }

    pub async fn prune(&self, before: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let mut deleted = 0u64;
        // In slices, so no single statement holds locks on millions of rows.
        loop {
            let n = client
                .execute(
                    "DELETE FROM positions WHERE (obu_id, boot, seq) IN (SELECT obu_id, boot, seq FROM positions WHERE ts < $1 LIMIT 10000)",
                    &[&before],
                )
                .await?;
            deleted += n;
            if n < 10_000 {
                return Ok(deleted);
            }
        }
    }

    pub async fn write_events(&self, events: &[NewEvent]) -> Result<WriteOutcome, StoreError> {
        // One row per event_id, as for positions: indices map back without repeats.
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        let firsts: Vec<&NewEvent> = events.iter().filter(|e| seen.insert(e.event().event_id.as_str())).collect();
        let mut c = EventColumns::default();
        let mut t = TripColumns::default();
        for new in &firsts {
            let e = new.event();
            c.event_id.push(&e.event_id);
            c.obu_id.push(db_int(e.obu_id)?);
            c.kind.push(e.type_name());
            c.ts.push(e.ts);
            c.seq.push(db_int(e.seq)?);
            c.lat.push(e.lat);
            c.lon.push(e.lon);
            c.detected_at.push(e.detected_at);
            c.body.push(new.body());
            if let Some(trip) = new.trip() {
                t.push(&e.event_id, db_int(e.obu_id)?, e.ts, trip)?;
            }
        }

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO events (event_id, obu_id, type, ts, seq, lat, lon, detected_at, body)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::float8[], $7::float8[], $8::int8[], $9::text[])
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id",
            )
            .await?;
        let rows = tx
            .query(&insert, &[&c.event_id, &c.obu_id, &c.kind, &c.ts, &c.seq, &c.lat, &c.lon, &c.detected_at, &c.body])
            .await?;
        let mut new = std::collections::HashSet::with_capacity(rows.len());
        for row in rows {
            new.insert(row.try_get::<_, String>(0)?);
        }
        if !t.event_id.is_empty() {
            let insert_trips = tx
                .prepare_cached(&format!(
                    "INSERT INTO trips ({TRIP_COLUMNS}, ts)
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::float8[], $6::float8[], $7::int8[], $8::int8[],
                                          $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::float8[], $14::float8[], $15::int8[])
                     ON CONFLICT (event_id) DO NOTHING"
                ))
                .await?;
            tx.execute(&insert_trips, &t.params()).await?;
        }
        tx.commit().await?;

        let mut outcome = WriteOutcome::default();
        for (i, e) in events.iter().enumerate() {
            if new.remove(&e.event().event_id) {
                outcome.inserted.push(i);
            } else {
                outcome.duplicates += 1;
            }
        }
        Ok(outcome)
    }

    pub async fn events(&self, query: EventQuery) -> Result<Vec<String>, StoreError> {
        let (sql, args) = query.sql('$')?;
        let args: Vec<Box<dyn ToSql + Sync + Send>> = args
            .into_iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    SqlArg::Int(i) => Box::new(i),
                    SqlArg::Text(t) => Box::new(t),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &params).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn trips(&self, obu_id: i64, from: i64, to: i64, limit: i64) -> Result<Vec<TripRow>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TRIP_COLUMNS} FROM trips
                 WHERE obu_id = $1 AND end_ts >= $2 AND start_ts <= $3 ORDER BY end_ts DESC, event_id LIMIT $4"
            ))
            .await?;
        let rows = client.query(&stmt, &[&obu_id, &from, &to, &limit]).await?;
        rows.iter()
            .map(|r| {
                Ok(TripRow {
                    event_id: r.try_get(0)?,
                    obu_id: from_db(r.try_get(1)?),
                    trip: Trip {
                        start_ts: r.try_get(2)?,
                        start_seq: from_db(r.try_get(3)?),
                        start_lat: r.try_get(4)?,
                        start_lon: r.try_get(5)?,
                        end_ts: r.try_get(6)?,
                        end_seq: from_db(r.try_get(7)?),
                        end_lat: r.try_get(8)?,
                        end_lon: r.try_get(9)?,
                        distance_m: r.try_get(10)?,
                        duration_s: r.try_get(11)?,
                        max_speed_kmh: r.try_get(12)?,
                        avg_speed_kmh: r.try_get(13)?,
                    },
                })
            })
            .collect()
    }

    pub async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let mut deleted = 0u64;
        // Trips go with their events (the same ts); only events are counted.
        for table in ["trips", "events"] {
            loop {
                let n = client
                    .execute(
                        &format!("DELETE FROM {table} WHERE event_id IN (SELECT event_id FROM {table} WHERE ts < $1 LIMIT 10000)"),
                        &[&before],
                    )
                    .await?;
                if table == "events" {
                    deleted += n;
                }
                if n < 10_000 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    pub async fn event_count(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_one("SELECT count(*) FROM events", &[]).await?.try_get(0)?)
    }

    pub async fn vehicle_count(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_one("SELECT count(*) FROM vehicles_latest", &[]).await?.try_get(0)?)
    }

    pub async fn position_count(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_one("SELECT count(*) FROM positions", &[]).await?.try_get(0)?)
    }

    pub async fn migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT version, name FROM schema_migrations ORDER BY version", &[]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

async fn upsert_latest(tx: &deadpool_postgres::Transaction<'_>, cols: &Columns) -> Result<u64, StoreError> {
    // A decommissioned vehicle comes back only with a position after its decommission.
    let upsert = tx
        .prepare_cached(&format!(
            "INSERT INTO vehicles_latest ({COLUMNS}, updated_at)
             SELECT u.*, $14::int8 FROM UNNEST({ARRAYS}) AS u({COLUMNS})
             WHERE NOT EXISTS (SELECT 1 FROM decommissioned d WHERE d.obu_id = u.obu_id AND (d.boot, d.seq) >= (u.boot, u.seq))
             ON CONFLICT (obu_id) DO UPDATE SET
                boot = EXCLUDED.boot, seq = EXCLUDED.seq, ts = EXCLUDED.ts, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
                speed = EXCLUDED.speed, heading = EXCLUDED.heading,
                speed_computed = EXCLUDED.speed_computed, heading_computed = EXCLUDED.heading_computed,
                distance_m = EXCLUDED.distance_m, received_at = EXCLUDED.received_at,
                processed_at = EXCLUDED.processed_at, updated_at = EXCLUDED.updated_at
             WHERE (EXCLUDED.boot, EXCLUDED.seq) > (vehicles_latest.boot, vehicles_latest.seq)"
        ))
        .await?;
    let now = now_ms();
    let mut params = cols.params();
    params.push(&now);
    Ok(tx.execute(&upsert, &params).await?)
}

fn row_to_position(r: &Row, with_out_of_order: bool) -> Result<ProcessedPosition, StoreError> {
    Ok(ProcessedPosition {
        obu_id: from_db(r.try_get(0)?),
        seq: from_db(r.try_get(1)?),
        boot: from_db(r.try_get(12)?),
        ts: r.try_get(2)?,
        lat: r.try_get(3)?,
        lon: r.try_get(4)?,
        speed: r.try_get(5)?,
        heading: r.try_get(6)?,
        speed_computed: r.try_get(7)?,
        heading_computed: r.try_get(8)?,
        distance_m: r.try_get(9)?,
        received_at: r.try_get(10)?,
        processed_at: r.try_get(11)?,
        out_of_order: if with_out_of_order { r.try_get(13)? } else { false },
        attributes: None,
    })
}
