//! What both backends speak: the error type, the bounding box a query filters by, what a
//! write did, the events a write takes and a query asks for, and how u64 ids and seqs are
//! stored. A leaf of the store: the backends and the
//! `Store` that dispatches to them all import it, and it imports none of them.

use fleetstream_core::events::{Event, EventKind, Trip};

/// Why a database operation failed. Every variant is treated as transient by the ingest (it
/// retries) and as `503 database_unavailable` by the API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] deadpool_postgres::tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
    #[error("{0} is beyond the largest storable value {max}", max = i64::MAX)]
    OutOfRange(u64),
}

impl StoreError {
    /// The error with its causes ("pool: creating a connection: connection refused"): the
    /// drivers' own messages often name only the outermost step.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = e.source();
        }
        out
    }
}

/// A latitude/longitude rectangle. `min_lon > max_lon` means it crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bbox {
    min_lon: f64,
    min_lat: f64,
    max_lon: f64,
    max_lat: f64,
}

/// Why four numbers are not a [`Bbox`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BboxError {
    #[error("longitude {0} is outside [-180, 180]")]
    Longitude(f64),
    #[error("latitude {0} is outside [-90, 90]")]
    Latitude(f64),
    #[error("min_lat {min_lat} is above max_lat {max_lat}")]
    Inverted { min_lat: f64, max_lat: f64 },
}

impl Bbox {
    /// A box from its corners in the GeoJSON order. Longitudes in [-180, 180], latitudes in
    /// [-90, 90], `min_lat <= max_lat`; `min_lon > max_lon` is a box across the antimeridian.
    pub fn new(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64) -> Result<Bbox, BboxError> {
        for lon in [min_lon, max_lon] {
            if !(-180.0..=180.0).contains(&lon) {
                return Err(BboxError::Longitude(lon));
            }
        }
        for lat in [min_lat, max_lat] {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(BboxError::Latitude(lat));
            }
        }
        if min_lat > max_lat {
            return Err(BboxError::Inverted { min_lat, max_lat });
        }
        Ok(Bbox { min_lon, min_lat, max_lon, max_lat })
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lon_ok = if self.min_lon <= self.max_lon {
            lon >= self.min_lon && lon <= self.max_lon
        } else {
            lon >= self.min_lon || lon <= self.max_lon
        };
        lon_ok && lat >= self.min_lat && lat <= self.max_lat
    }
}

/// What writing a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    /// Indices (into the batch) of the positions newly stored, in batch order.
    pub inserted: Vec<usize>,
    /// Positions that were already stored (or appeared twice in the batch).
    pub duplicates: u64,
}

/// A fleet event to store: the event, and its record's JSON text as it came (the `body` column,
/// what the API answers). Built from a record by [`NewEvent::from_record`] only, so every id and
/// seq in it fits the database.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    event: Event,
    body: String,
}

/// Why a record of the events topic cannot be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventRecordError {
    #[error("the record has no value")]
    NoValue,
    #[error("not a fleet event: {0}")]
    Undecodable(String),
    #[error("event {event_id}: {field} {value} is beyond the largest storable value {max}", max = i64::MAX)]
    OutOfRange { event_id: String, field: &'static str, value: u64 },
}

impl EventRecordError {
    /// The bounded label of `fleetstream_tracker_events_skipped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EventRecordError::NoValue | EventRecordError::Undecodable(_) => "undecodable",
            EventRecordError::OutOfRange { .. } => "out_of_range",
        }
    }
}

impl NewEvent {
    /// The value of an `events` record, parsed and checked.
    pub fn from_record(payload: Option<&[u8]>) -> Result<NewEvent, EventRecordError> {
        let payload = payload.ok_or(EventRecordError::NoValue)?;
        let body = std::str::from_utf8(payload).map_err(|e| EventRecordError::Undecodable(e.to_string()))?;
        let event: Event = serde_json::from_str(body).map_err(|e| EventRecordError::Undecodable(e.to_string()))?;
        // The id is a primary key and a text column: PostgreSQL refuses NUL in text.
        if event.event_id.is_empty() || event.event_id.contains('\0') {
            return Err(EventRecordError::Undecodable(format!("invalid event_id {:?}", event.event_id)));
        }
        let mut ints = vec![("obu_id", event.obu_id), ("seq", event.seq)];
        if let EventKind::Trip(trip) = &event.kind {
            ints.extend([("start_seq", trip.start_seq), ("end_seq", trip.end_seq)]);
        }
        if let Some((field, value)) = ints.into_iter().find(|(_, v)| db_int(*v).is_err()) {
            return Err(EventRecordError::OutOfRange { event_id: event.event_id, field, value });
        }
        Ok(NewEvent { event, body: body.to_string() })
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The record's JSON text.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The trip, if it is a `trip` event.
    pub fn trip(&self) -> Option<&Trip> {
        match &self.event.kind {
            EventKind::Trip(trip) => Some(trip),
            _ => None,
        }
    }
}

/// Which stored events a query asks for: `from <= ts <= to` (device time, Unix ms), of one
/// vehicle or all, of some types or all (an empty list); newest first, at most `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventQuery {
    pub obu_id: Option<u64>,
    pub types: Vec<&'static str>,
    pub from: i64,
    pub to: i64,
    pub limit: usize,
}

/// An argument of a query built by [`EventQuery::sql`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SqlArg {
    Int(i64),
    Text(&'static str),
}

impl EventQuery {
    /// The query of the bodies, with placeholders `<mark>1`, `<mark>2`... (`?` for SQLite, `$`
    /// for PostgreSQL), and its arguments in order. Built here once for both backends; each
    /// filter is a plain condition so that the indexes on `(obu_id, ts)` and `(ts)` serve it.
    pub(super) fn sql(&self, mark: char) -> Result<(String, Vec<SqlArg>), StoreError> {
        let mut args = vec![SqlArg::Int(self.from), SqlArg::Int(self.to)];
        let mut sql = format!("SELECT body FROM events WHERE ts >= {mark}1 AND ts <= {mark}2");
        if let Some(id) = self.obu_id {
            args.push(SqlArg::Int(db_int(id)?));
            sql.push_str(&format!(" AND obu_id = {mark}{}", args.len()));
        }
        if !self.types.is_empty() {
            let first = args.len() + 1;
            args.extend(self.types.iter().map(|t| SqlArg::Text(t)));
            let marks: Vec<String> = (first..=args.len()).map(|i| format!("{mark}{i}")).collect();
            sql.push_str(&format!(" AND type IN ({})", marks.join(", ")));
        }
        args.push(SqlArg::Int(i64::try_from(self.limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY ts DESC, obu_id, seq DESC, event_id LIMIT {mark}{}", args.len()));
        Ok((sql, args))
    }
}

/// The columns of the `trips` table a [`TripRow`] is read from, in order.
pub(super) const TRIP_COLUMNS: &str = "event_id, obu_id, start_ts, start_seq, start_lat, start_lon, \
    end_ts, end_seq, end_lat, end_lon, distance_m, duration_s, max_speed_kmh, avg_speed_kmh";

/// A stored trip: the `trip` event's id and vehicle, and the trip.
#[derive(Debug, Clone, PartialEq)]
pub struct TripRow {
    pub event_id: String,
    pub obu_id: u64,
    pub trip: Trip,
}

/// Whether the databases can hold a position's obu_id, boot and seq (signed 64-bit columns).
pub fn storable(p: &fleetstream_core::ProcessedPosition) -> bool {
    db_int(p.obu_id).is_ok() && db_int(p.boot).is_ok() && db_int(p.seq).is_ok()
}

/// A u64 id or seq as the databases store it.
pub fn db_int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange(v))
}

/// An order key ([`ProcessedPosition::order`](fleetstream_core::ProcessedPosition::order)) as
/// the databases store it: `(boot, seq)`, compared as a row value.
pub(super) fn db_order(order: u128) -> Result<(i64, i64), StoreError> {
    Ok((db_int((order >> 64) as u64)?, db_int(order as u64)?))
}

/// Back from the database: never negative, since only `db_int` values are written.
pub(super) fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_handles_the_antimeridian() {
        let b = Bbox::new(13.0, 52.0, 14.0, 53.0).expect("a valid box");
        assert!(b.contains(52.5, 13.4));
        assert!(!b.contains(52.5, 14.5));
        assert!(!b.contains(51.9, 13.4));
        let wrap = Bbox::new(170.0, -10.0, -170.0, 10.0).expect("a box across the antimeridian");
        assert!(wrap.contains(0.0, 175.0) && wrap.contains(0.0, -175.0));
        assert!(!wrap.contains(0.0, 0.0));
    }

    #[test]
    fn ids_beyond_i64_are_refused() {
        assert_eq!(db_int(17).expect("17 fits"), 17);
        assert!(matches!(db_int(u64::MAX), Err(StoreError::OutOfRange(_))));
        let order = fleetstream_core::position::order_key(3, 12);
        assert_eq!(db_order(order).expect("boot 3 seq 12 fits"), (3, 12));
        assert!(db_order(fleetstream_core::position::order_key(u64::MAX, 1)).is_err());
    }

    #[test]
    fn event_records_are_parsed_and_checked() {
        use fleetstream_core::events::Event;
        let e = Event::new(7, 42, 1_000, 52.5, 13.4, 2_000, EventKind::IgnitionOn {});
        let json = e.to_json();
        let new = NewEvent::from_record(Some(&json)).expect("an event record");
        assert_eq!((new.event(), new.body().as_bytes()), (&e, json.as_slice()), "the body is kept as it came");
        assert!(new.trip().is_none());

        let reason = |payload: Option<&[u8]>| NewEvent::from_record(payload).err().map(|e| e.reason());
        assert_eq!(reason(None), Some("undecodable"));
        assert_eq!(reason(Some(b"garbage")), Some("undecodable"));
        assert_eq!(reason(Some(br#"{"event_id":"x","obu_id":1,"ts":1,"seq":1,"lat":0,"lon":0,"detected_at":1,"type":"teleport"}"#)), Some("undecodable"));
        let empty_id = Event { event_id: String::new(), ..e.clone() };
        assert_eq!(reason(Some(&empty_id.to_json())), Some("undecodable"));
        let huge = Event::new(u64::MAX, 1, 1, 0.0, 0.0, 1, EventKind::IgnitionOff {});
        let err = NewEvent::from_record(Some(&huge.to_json())).expect_err("refused");
        assert_eq!(err.reason(), "out_of_range");
        assert!(err.to_string().contains("obu_id 18446744073709551615"), "{err}");
    }

    #[test]
    fn event_queries_use_plain_conditions() {
        let q = EventQuery { obu_id: Some(7), types: vec!["trip", "alarm"], from: 1, to: 2, limit: 10 };
        let (sql, args) = q.sql('$').expect("a query");
        assert_eq!(
            sql,
            "SELECT body FROM events WHERE ts >= $1 AND ts <= $2 AND obu_id = $3 AND type IN ($4, $5) \
             ORDER BY ts DESC, obu_id, seq DESC, event_id LIMIT $6"
        );
        assert_eq!(args, vec![SqlArg::Int(1), SqlArg::Int(2), SqlArg::Int(7), SqlArg::Text("trip"), SqlArg::Text("alarm"), SqlArg::Int(10)]);
        let all = EventQuery { obu_id: None, types: vec![], from: 1, to: 2, limit: 10 };
        let (sql, args) = all.sql('?').expect("a query");
        assert_eq!(sql, "SELECT body FROM events WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts DESC, obu_id, seq DESC, event_id LIMIT ?3");
        assert_eq!(args.len(), 3);
    }

    #[test]
    fn boxes_are_checked() {
        assert_eq!(Bbox::new(-181.0, 0.0, 0.0, 1.0), Err(BboxError::Longitude(-181.0)));
        assert_eq!(Bbox::new(0.0, 0.0, 0.0, 91.0), Err(BboxError::Latitude(91.0)));
        assert_eq!(Bbox::new(0.0, 10.0, 1.0, 5.0), Err(BboxError::Inverted { min_lat: 10.0, max_lat: 5.0 }));
        assert!(Bbox::new(f64::NAN, 0.0, 1.0, 1.0).is_err(), "not a number is not a longitude");
    }
}
