//! What both backends speak: the error type, the bounding box a query filters by, what a
//! write did, and how u64 ids and seqs are stored. A leaf of the store: the backends and the
//! `Store` that dispatches to them all import it, and it imports none of them.

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

/// A u64 id or seq as the databases store it.
pub fn db_int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange(v))
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
    }

    #[test]
    fn boxes_are_checked() {
        assert_eq!(Bbox::new(-181.0, 0.0, 0.0, 1.0), Err(BboxError::Longitude(-181.0)));
        assert_eq!(Bbox::new(0.0, 0.0, 0.0, 91.0), Err(BboxError::Latitude(91.0)));
        assert_eq!(Bbox::new(0.0, 10.0, 1.0, 5.0), Err(BboxError::Inverted { min_lat: 10.0, max_lat: 5.0 }));
        assert!(Bbox::new(f64::NAN, 0.0, 1.0, 1.0).is_err(), "not a number is not a longitude");
    }
}
