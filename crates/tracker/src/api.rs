//! The HTTP API (JSON, GeoJSON for geofences), documented in docs/api.md: vehicles, tracks,
//! fleet events, trips, the geofences (read and written through their Kafka topic), and
//! decommissioning a vehicle (through `vehicle-latest`, see `latest.rs`).
//!
//! Parameters and bodies are parsed into their types before anything is asked of the database
//! or Kafka; a bad one is a `400` (a fence that is not valid GeoJSON: `422`) naming the
//! parameter and what it must look like. Every error body has the same shape:
//! `{"error": CODE, "message": TEXT}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use fleetstream_core::events::{Trip, TYPES};
use fleetstream_core::geofence::{Fence, FenceError};
use fleetstream_core::now_ms;

use crate::config::Config;
use crate::geofences::{Geofences, Unavailable, WriteError};
use crate::latest::{DecommissionError, Vehicles};
use crate::metrics::Metrics;
use crate::store::{db_int, Bbox, EventQuery, Store, StoreError};
use crate::view::{millis as ms, VehicleView};

/// The largest request body accepted (a geofence): larger ones get `413 body_too_large`.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler of the API needs.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    config: Arc<Config>,
    store: Store,
    metrics: Metrics,
    fences: Geofences,
    vehicles: Vehicles,
}

impl AppState {
    pub(crate) fn new(config: Arc<Config>, store: Store, metrics: Metrics, fences: Geofences, vehicles: Vehicles) -> Self {
        AppState { config, store, metrics, fences, vehicles }
    }
}

/// An API error: the status, a stable code, and a message for a human.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "geofences_unavailable", e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Unavailable(e) => e.into(),
            // Logged and counted where it happened.
            WriteError::Kafka(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                format!("{e}; the write may or may not have happened: repeat it (a PUT or DELETE can be repeated safely)"),
            ),
        }
    }
}

impl From<DecommissionError> for ApiError {
    fn from(e: DecommissionError) -> Self {
        match e {
            DecommissionError::NotFound(_) => ApiError::not_found(e.to_string()),
            DecommissionError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "vehicles_unavailable", e.to_string()),
            DecommissionError::NotInTopic { .. } => ApiError::new(StatusCode::CONFLICT, "not_in_vehicle_latest", e.to_string()),
            // Failures are logged and counted where they happened.
            DecommissionError::Kafka(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                format!("{e}; the vehicle may or may not be decommissioned: repeat the DELETE"),
            ),
            DecommissionError::Lookup => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", format!("{e}; try again shortly")),
            DecommissionError::Remove => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", format!("{e}; repeat the DELETE shortly")),
        }
    }
}

impl From<FenceError> for ApiError {
    fn from(e: FenceError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_geofence", e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.code, message: &self.message })).into_response()
    }
}

impl AppState {
    /// A database failure: logged and counted here; the client learns only that it failed.
    fn db_error(&self, op: &'static str, error: StoreError) -> ApiError {
        self.metrics.db_errors.with_label_values(&[op]).inc();
        tracing::warn!(error = error.chain(), op, "database query failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "database_unavailable",
            message: "the database did not answer; try again shortly".into(),
        }
    }
}

#[derive(Serialize)]
struct VehicleList<'a> {
    generated_at: i64,
    online_timeout_ms: i64,
    count: usize,
    vehicles: Vec<VehicleView<'a>>,
}

#[derive(Serialize)]
struct Track {
    obu_id: u64,
    from: i64,
    to: i64,
    count: usize,
    truncated: bool,
    points: Vec<TrackPoint>,
}

#[derive(Serialize)]
struct TrackPoint {
    /// Only for devices that send one: a track of a restarted device shows where seq began again.
    #[serde(skip_serializing_if = "is_zero")]
    boot: u64,
    seq: u64,
    ts: i64,
    lat: f64,
    lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading: Option<f64>,
    distance_m: f64,
    out_of_order: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct EventList {
    #[serde(skip_serializing_if = "Option::is_none")]
    obu_id: Option<u64>,
    from: i64,
    to: i64,
    count: usize,
    truncated: bool,
    /// The stored bodies, as they came from the events topic.
    events: Vec<Box<RawValue>>,
}

#[derive(Serialize)]
struct TripList {
    obu_id: u64,
    from: i64,
    to: i64,
    count: usize,
    truncated: bool,
    trips: Vec<TripView>,
}

#[derive(Serialize)]
struct TripView {
    event_id: String,
    #[serde(flatten)]
    trip: Trip,
    /// The trip's positions: the track endpoint over the trip's time range.
    track: String,
}

#[derive(Serialize)]
struct MapConfig<'a> {
    tile_url: &'a str,
    tile_attribution: &'a str,
    online_timeout_ms: i64,
    trail_ms: i64,
    retention_ms: i64,
}

type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Query parameters, checked against the names a route accepts. Public, as are the `parse_*`
/// functions the handlers read them with, so fuzz/ drives the same checks with any query string.
#[derive(Debug)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The query as axum's `Query` extracted it, refused if a name is not `allowed` or repeated.
    pub fn parse(query: RawQuery, allowed: &[&str]) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::bad("invalid_query", format!("the query string cannot be read: {}", e.body_text())))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let expected = if allowed.is_empty() { "this endpoint takes none".to_string() } else { format!("expected {}", allowed.join(", ")) };
                return Err(ApiError::bad("unknown_parameter", format!("unknown parameter `{name}`; {expected}")));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad("duplicate_parameter", format!("parameter `{name}` is given more than once")));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of parameter `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An obu_id from the path.
pub fn parse_id(raw: &str) -> Result<u64, ApiError> {
    let invalid = || ApiError::bad("invalid_id", format!("`{raw}` is not an obu_id: expected an integer from 0 to {}", i64::MAX));
    let id: u64 = raw.parse().map_err(|_| invalid())?;
    db_int(id).map_err(|_| invalid())?;
    Ok(id)
}

/// A point in time: Unix milliseconds, an RFC 3339 UTC time, `now`, or `-DURATION` (before now).
pub fn parse_time(name: &str, raw: &str, now: i64) -> Result<i64, ApiError> {
    let invalid = |why: &str| {
        ApiError::bad(
            "invalid_time",
            format!("`{name}` must be Unix milliseconds, an RFC 3339 UTC time like 2026-11-22T09:30:00Z, `now` or `-DURATION` like -15m; got `{raw}`{why}"),
        )
    };
    let raw_trim = raw.trim();
    if raw_trim.is_empty() {
        return Err(invalid(""));
    }
    if raw_trim == "now" {
        return Ok(now);
    }
    if let Some(ago) = raw_trim.strip_prefix('-') {
        if ago.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(" (negative timestamp)"));
        }
        let d = humantime::parse_duration(ago).map_err(|e| invalid(&format!(" ({e})")))?;
        return Ok(now.saturating_sub(ms(d)));
    }
    if raw_trim.bytes().all(|b| b.is_ascii_digit()) {
        return raw_trim.parse::<i64>().map_err(|_| invalid(" (too large)"));
    }
    let t = humantime::parse_rfc3339_weak(raw_trim).map_err(|e| invalid(&format!(" ({e})")))?;
    let since = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| invalid(" (before 1970)"))?;
    Ok(ms(since))
}

/// `min_lon,min_lat,max_lon,max_lat` (the GeoJSON and OpenStreetMap order).
pub fn parse_bbox(raw: &str) -> Result<Bbox, ApiError> {
    let invalid = |why: String| ApiError::bad("invalid_bbox", format!("`bbox` must be min_lon,min_lat,max_lon,max_lat in degrees; {why}"));
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.len() != 4 {
        return Err(invalid(format!("got {} values in `{raw}`", parts.len())));
    }
    let mut v = [0f64; 4];
    for (slot, part) in v.iter_mut().zip(&parts) {
        *slot = part.parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| invalid(format!("`{part}` is not a number")))?;
    }
    let [min_lon, min_lat, max_lon, max_lat] = v;
    Bbox::new(min_lon, min_lat, max_lon, max_lat).map_err(|e| invalid(e.to_string()))
}

/// `true`/`1` or `false`/`0`.
pub fn parse_bool(name: &str, raw: &str) -> Result<bool, ApiError> {
    match raw {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad("invalid_parameter", format!("`{name}` must be true or false, got `{raw}`"))),
    }
}

/// `from` and `to` of a time range (device time): `to` defaults to now, `from` to an hour
/// before `to`; `from` may not be after `to`.
pub fn parse_range(params: &Params, now: i64) -> Result<(i64, i64), ApiError> {
    let to = params.get("to").map(|v| parse_time("to", v, now)).transpose()?.unwrap_or(now);
    let from = params.get("from").map(|v| parse_time("from", v, now)).transpose()?.unwrap_or(to.saturating_sub(3_600_000));
    if from > to {
        return Err(ApiError::bad("invalid_range", format!("`from` ({from}) is after `to` ({to})")));
    }
    Ok((from, to))
}

/// `limit`: 1 ..= `max`, default `max`.
pub fn parse_limit(params: &Params, max: usize) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(max),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad("invalid_limit", format!("`limit` must be an integer from 1 to {max}, got `{raw}`"))),
    }
}

/// A track's range (`from` <= `to`) spans at most `max` (`--max-track-range`).
pub fn check_track_range(from: i64, to: i64, max: Duration) -> Result<(), ApiError> {
    // `from` and `to` may each be near an end of i64 (`from=-100000000000h&to=<i64::MAX>`):
    // their distance is counted without overflowing.
    let span = to.saturating_sub(from);
    if span > ms(max) {
        return Err(ApiError::bad(
            "range_too_large",
            format!(
                "the range spans {}; at most {} can be asked at once",
                humantime::format_duration(Duration::from_millis(u64::try_from(span).unwrap_or(u64::MAX))),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// `type`: one event type, or several separated by commas.
pub fn parse_types(raw: &str) -> Result<Vec<&'static str>, ApiError> {
    let mut types = raw
        .split(',')
        .map(str::trim)
        .map(|t| {
            TYPES.iter().find(|known| **known == t).copied().ok_or_else(|| {
                ApiError::bad("invalid_type", format!("unknown event type `{t}`; `type` takes one or more of {}, separated by commas", TYPES.join(", ")))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Each type once, in one order: a bounded set of distinct queries (prepared statements
    // are cached per query text), whatever the request repeats.
    types.sort_unstable();
    types.dedup();
    Ok(types)
}

/// `GET /api/vehicles?bbox=&online=`
pub(crate) async fn vehicles(State(app): State<AppState>, query: RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["bbox", "online"])?;
    let bbox = params.get("bbox").map(parse_bbox).transpose()?;
    let online = params.get("online").map(|v| parse_bool("online", v)).transpose()?;
    let latest = app.store.latest(bbox).await.map_err(|e| app.db_error("latest", e))?;
    let now = now_ms();
    let timeout = app.config.online_timeout;
    let vehicles: Vec<VehicleView<'_>> = latest
        .iter()
        .map(|p| VehicleView::at(p, now, timeout))
        .filter(|v| online.is_none_or(|want| v.online() == Some(want)))
        .collect();
    Ok(Json(VehicleList { generated_at: now, online_timeout_ms: ms(timeout), count: vehicles.len(), vehicles }).into_response())
}

/// `GET /api/vehicles/{id}`
pub(crate) async fn vehicle(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let id = parse_id(&path_id(path)?)?;
    let found = app.store.vehicle(id).await.map_err(|e| app.db_error("vehicle", e))?;
    let p = found.ok_or_else(|| ApiError::not_found(format!("no vehicle with obu_id {id}")))?;
    Ok(Json(VehicleView::at(&p, now_ms(), app.config.online_timeout)).into_response())
}

/// `DELETE /api/vehicles/{id}` (admin): decommissions the vehicle (see `latest.rs`).
pub(crate) async fn decommission(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let id = parse_id(&path_id(path)?)?;
    app.vehicles.decommission(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/vehicles/{id}/track?from=&to=&limit=`
pub(crate) async fn track(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["from", "to", "limit"])?;
    let id = parse_id(&path_id(path)?)?;
    let (from, to) = parse_range(&params, now_ms())?;
    check_track_range(from, to, app.config.max_track_range)?;
    let limit = parse_limit(&params, app.config.max_track_points)?;
    // A decommissioned vehicle keeps its history until the retention.
    if !app.store.known(id).await.map_err(|e| app.db_error("known", e))? {
        return Err(ApiError::not_found(format!("no vehicle with obu_id {id}")));
    }
    // One more than asked tells whether there is more.
    let mut rows = app.store.track(id, from, to, limit + 1).await.map_err(|e| app.db_error("track", e))?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let points: Vec<TrackPoint> = rows
        .into_iter()
        .map(|p| TrackPoint {
            boot: p.boot,
            seq: p.seq,
            ts: p.ts,
            lat: p.lat,
            lon: p.lon,
            speed: p.speed,
            heading: p.heading,
            distance_m: p.distance_m,
            out_of_order: p.out_of_order,
        })
        .collect();
    Ok(Json(Track { obu_id: id, from, to, count: points.len(), truncated, points }).into_response())
}

/// `GET /api/events?from=&to=&type=&obu_id=&limit=`
pub(crate) async fn events(State(app): State<AppState>, query: RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["from", "to", "type", "obu_id", "limit"])?;
    let obu_id = params.get("obu_id").map(parse_id).transpose()?;
    app.event_list(&params, obu_id).await
}

/// `GET /api/vehicles/{id}/events?from=&to=&type=&limit=`
pub(crate) async fn vehicle_events(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["from", "to", "type", "limit"])?;
    let id = parse_id(&path_id(path)?)?;
    app.event_list(&params, Some(id)).await
}

impl AppState {
    /// The stored events in the range of `params`, newest first, of one vehicle or all.
    async fn event_list(&self, params: &Params, obu_id: Option<u64>) -> Result<Response, ApiError> {
        let (from, to) = parse_range(params, now_ms())?;
        let types = params.get("type").map(parse_types).transpose()?.unwrap_or_default();
        let limit = parse_limit(params, self.config.max_events)?;
        // One more than asked tells whether there is more.
        let query = EventQuery { obu_id, types, from, to, limit: limit + 1 };
        let mut bodies = self.store.events(query).await.map_err(|e| self.db_error("events", e))?;
        let truncated = bodies.len() > limit;
        bodies.truncate(limit);
        // Every stored body was parsed as an event before it was stored.
        let events: Vec<Box<RawValue>> = bodies.into_iter().filter_map(|b| RawValue::from_string(b).ok()).collect();
        Ok(Json(EventList { obu_id, from, to, count: events.len(), truncated, events }).into_response())
    }
}

/// `GET /api/vehicles/{id}/trips?from=&to=&limit=`
pub(crate) async fn trips(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["from", "to", "limit"])?;
    let id = parse_id(&path_id(path)?)?;
    let (from, to) = parse_range(&params, now_ms())?;
    let limit = parse_limit(&params, app.config.max_events)?;
    let mut rows = app.store.trips(id, from, to, limit + 1).await.map_err(|e| app.db_error("trips", e))?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let trips: Vec<TripView> = rows
        .into_iter()
        .map(|r| TripView {
            track: format!("/api/vehicles/{}/track?from={}&to={}", r.obu_id, r.trip.start_ts, r.trip.end_ts),
            event_id: r.event_id,
            trip: r.trip,
        })
        .collect();
    Ok(Json(TripList { obu_id: id, from, to, count: trips.len(), truncated, trips }).into_response())
}

/// A GeoJSON answer (`application/geo+json`).
fn geojson(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/geo+json")], Json(body)).into_response()
}

/// `201 Created` with the fence's address and the fence.
fn fence_created(id: &str, feature: Value) -> Response {
    let location = format!("/api/geofences/{id}");
    (StatusCode::CREATED, [(header::LOCATION, location.as_str()), (header::CONTENT_TYPE, "application/geo+json")], Json(feature)).into_response()
}

fn fence_path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|e| ApiError::bad("invalid_id", format!("the geofence id cannot be read: {}", e.body_text())))
}

fn no_fence(id: &str) -> ApiError {
    ApiError::not_found(format!("no geofence with id `{id}`"))
}

/// A request body that must be JSON (whatever its Content-Type says).
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"))
        }
        status => ApiError::new(status, "invalid_body", format!("the request body cannot be read: {}", e.body_text())),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("invalid_json", format!("the body is not JSON: {e}")))
}

/// `GET /api/geofences`: a FeatureCollection of every fence, by id.
pub(crate) async fn geofences(State(app): State<AppState>, query: RawQuery) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let features = app.fences.list()?;
    Ok(geojson(StatusCode::OK, serde_json::json!({ "type": "FeatureCollection", "features": features })))
}

/// `GET /api/geofences/{id}`
pub(crate) async fn geofence(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let id = fence_path_id(path)?;
    let feature = app.fences.get(&id)?.ok_or_else(|| no_fence(&id))?;
    Ok(geojson(StatusCode::OK, feature))
}

/// `POST /api/geofences`: a new fence, with the Feature's id or a generated one.
pub(crate) async fn create_geofence(State(app): State<AppState>, query: RawQuery, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let value = json_body(body)?;
    let generated = match value.get("id") {
        None | Some(Value::Null) => Some(format!("{:016x}", rand::random::<u64>())),
        Some(_) => None,
    };
    let fence = Fence::from_feature(&value, generated.as_deref())?;
    if app.fences.get(&fence.id)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("geofence `{0}` already exists; PUT /api/geofences/{0} replaces it", fence.id),
        ));
    }
    let (_, feature) = app.fences.put(&fence).await?;
    Ok(fence_created(&fence.id, feature))
}

/// `PUT /api/geofences/{id}`: creates or replaces the fence.
pub(crate) async fn put_geofence(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let id = fence_path_id(path)?;
    let value = json_body(body)?;
    // The path names the fence; an id in the Feature that says otherwise is a mistake.
    if let Some(given) = value.get("id").filter(|v| !v.is_null()) {
        let same = match given {
            Value::String(s) => *s == id,
            Value::Number(n) => n.to_string() == id,
            _ => false,
        };
        if !same {
            return Err(ApiError::bad("id_mismatch", format!("the Feature's id {given} differs from the id in the path `{id}`; leave it out or make them equal")));
        }
    }
    let fence = Fence::from_feature(&value, Some(&id))?;
    let (created, feature) = app.fences.put(&fence).await?;
    Ok(if created { fence_created(&fence.id, feature) } else { geojson(StatusCode::OK, feature) })
}

/// `DELETE /api/geofences/{id}`
pub(crate) async fn delete_geofence(State(app): State<AppState>, path: Result<Path<String>, PathRejection>, query: RawQuery) -> Result<Response, ApiError> {
    Params::parse(query, &[])?;
    let id = fence_path_id(path)?;
    if app.fences.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(no_fence(&id))
    }
}

/// `GET /api/config`: what the map page needs to know.
pub(crate) async fn map_config(State(app): State<AppState>) -> Response {
    let c = &app.config;
    Json(MapConfig {
        tile_url: &c.tile_url,
        tile_attribution: &c.tile_attribution,
        online_timeout_ms: ms(c.online_timeout),
        trail_ms: ms(c.trail),
        retention_ms: ms(c.retention),
    })
    .into_response()
}

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|e| ApiError::bad("invalid_id", format!("the vehicle id cannot be read: {}", e.body_text())))
}

/// Unknown routes: a JSON 404 like every other API error.
pub(crate) async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// Counts every request by route template (never the raw path: ids would make the label set
/// unbounded) and status.
pub(crate) async fn count_requests(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    let route = route.as_deref().unwrap_or("unmatched");
    metrics.api_requests.with_label_values(&[route, response.status().as_str()]).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    #[test]
    fn ids_are_integers_that_fit_the_database() {
        assert_eq!(parse_id("17"), Ok(17));
        for bad in ["abc", "-1", "1.5", "", "9223372036854775808", "18446744073709551616"] {
            let e = parse_id(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_id"), "{bad}");
            assert!(e.message.contains(&format!("`{bad}` is not an obu_id")), "{}", e.message);
        }
    }

    #[test]
    fn times_come_in_four_forms() {
        assert_eq!(parse_time("from", "1763799000000", NOW), Ok(1_763_799_000_000));
        assert_eq!(parse_time("from", "now", NOW), Ok(NOW));
        assert_eq!(parse_time("from", "-15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("from", "2025-11-22T08:26:40Z", NOW), Ok(NOW));
        for bad in ["yesterday", "", "-5", "2025-13-01T00:00:00Z", "99999999999999999999", "-fortnight"] {
            let e = parse_time("from", bad, NOW).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.code, "invalid_time", "{bad}");
            assert!(e.message.starts_with("`from` must be Unix milliseconds"), "{}", e.message);
        }
    }

    #[test]
    fn event_types_are_checked_against_the_known_ones() {
        assert_eq!(parse_types("trip"), Ok(vec!["trip"]));
        assert_eq!(parse_types("geofence_enter, geofence_exit"), Ok(vec!["geofence_enter", "geofence_exit"]));
        for bad in ["", "trips", "trip,", "TRIP"] {
            let e = parse_types(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_type"), "{bad}");
            assert!(e.message.contains("geofence_enter, geofence_exit, overspeed"), "{}", e.message);
        }
    }

    #[test]
    fn bboxes_are_checked() {
        assert_eq!(parse_bbox("13.0,52.3,13.8,52.7"), Ok(Bbox::new(13.0, 52.3, 13.8, 52.7).expect("a valid box")));
        assert!(parse_bbox("170,-10,-170,10").is_ok(), "across the antimeridian");
        for (bad, why) in [
            ("1,2,3", "got 3 values"),
            ("a,2,3,4", "`a` is not a number"),
            ("1,2,3,NaN", "`NaN` is not a number"),
            ("-181,0,0,1", "longitude -181 is outside"),
            ("0,-91,1,1", "latitude -91 is outside"),
            ("0,10,1,5", "min_lat 10 is above max_lat 5"),
        ] {
            let e = parse_bbox(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.code, "invalid_bbox");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
