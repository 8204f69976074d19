//! The tracker's query strings (`crates/tracker/src/api.rs`): the input is a request target,
//! `/api/...?...`, as a client sends it. It is routed like the tracker's router, its id segment
//! percent-decoded as axum's `Path` does and its query read by axum's own `Query` extraction,
//! then checked by the tracker's functions in the order its handlers call them, up to where a
//! handler would ask the store.
//!
//! Checks, besides "never panics" (overflow checks are on):
//! - every refusal is a `400` whose JSON body is `{"error": CODE, "message": TEXT}` with a code
//!   documented in docs/api.md;
//! - what is accepted is within the limits: `from <= to`, a track's range within
//!   `--max-track-range`, `limit` within 1 ..= its maximum, known event types each once.
#![no_main]

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use fleetstream_core::events::TYPES;
use fleetstream_tracker::api::{
    check_track_range, parse_bbox, parse_bool, parse_id, parse_limit, parse_range, parse_types, ApiError, Params,
};
use libfuzzer_sys::fuzz_target;

/// The request time: fixed, so a crash replays (2025-11-22T08:26:40Z).
const NOW: i64 = 1_763_800_000_000;
/// The tracker's defaults: `--max-track-range`, `--max-track-points`, `--max-events`.
const MAX_TRACK_RANGE: Duration = Duration::from_secs(24 * 3600);
const MAX_TRACK_POINTS: usize = 10_000;
const MAX_EVENTS: usize = 1_000;

/// The error codes of docs/api.md that a query can earn.
const CODES: [&str; 11] = [
    "invalid_query",
    "unknown_parameter",
    "duplicate_parameter",
    "invalid_id",
    "invalid_time",
    "invalid_range",
    "range_too_large",
    "invalid_limit",
    "invalid_type",
    "invalid_bbox",
    "invalid_parameter",
];

fuzz_target!(|data: &[u8]| {
    // What `http` does not parse never reaches a handler.
    let Ok(uri) = Uri::try_from(data) else { return };
    let Some(rest) = uri.path().strip_prefix("/api/") else { return };
    let segments: Vec<&str> = rest.split('/').collect();
    let query = Query::<Vec<(String, String)>>::try_from_uri(&uri);
    let result = match segments[..] {
        ["vehicles"] => Some(vehicles(query)),
        ["vehicles", id] => decode(id).map(|id| none(query).and_then(|()| parse_id(&id).map(drop))),
        ["vehicles", id, "track"] => decode(id).map(|id| track(query, &id)),
        ["vehicles", id, "events"] => decode(id).map(|id| events(query, Some(&id))),
        ["vehicles", id, "trips"] => decode(id).map(|id| trips(query, &id)),
        ["events"] => Some(events(query, None)),
        ["geofences"] | ["geofences", _] => Some(none(query)),
        _ => None,
    };
    if let Some(Err(e)) = result {
        check_error(e);
    }
});

type RawQuery = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// A path segment as axum's `Path` hands it over; one that is not UTF-8 is refused there.
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment).decode_utf8().ok().map(String::from)
}

/// Routes that take no parameters.
fn none(query: RawQuery) -> Result<(), ApiError> {
    Params::parse(query, &[]).map(drop)
}

/// `GET /api/vehicles?bbox=&online=`
fn vehicles(query: RawQuery) -> Result<(), ApiError> {
    let params = Params::parse(query, &["bbox", "online"])?;
    params.get("bbox").map(parse_bbox).transpose()?;
    params.get("online").map(|v| parse_bool("online", v)).transpose()?;
    Ok(())
}

/// `GET /api/vehicles/{id}/track?from=&to=&limit=`
fn track(query: RawQuery, id: &str) -> Result<(), ApiError> {
    let params = Params::parse(query, &["from", "to", "limit"])?;
    parse_id(id)?;
    let (from, to) = parse_range(&params, NOW)?;
    assert!(from <= to, "{from} > {to}");
    check_track_range(from, to, MAX_TRACK_RANGE)?;
    let span = i128::from(to) - i128::from(from);
    assert!(span <= MAX_TRACK_RANGE.as_millis() as i128, "a range of {span} ms accepted");
    check_limit(parse_limit(&params, MAX_TRACK_POINTS)?, MAX_TRACK_POINTS);
    Ok(())
}

/// `GET /api/events?from=&to=&type=&obu_id=&limit=`, or a vehicle's events.
fn events(query: RawQuery, id: Option<&str>) -> Result<(), ApiError> {
    let params = match id {
        Some(id) => {
            let params = Params::parse(query, &["from", "to", "type", "limit"])?;
            parse_id(id)?;
            params
        }
        None => {
            let params = Params::parse(query, &["from", "to", "type", "obu_id", "limit"])?;
            params.get("obu_id").map(parse_id).transpose()?;
            params
        }
    };
    let (from, to) = parse_range(&params, NOW)?;
    assert!(from <= to, "{from} > {to}");
    let types = params.get("type").map(parse_types).transpose()?.unwrap_or_default();
    assert!(types.windows(2).all(|w| w[0] < w[1]), "{types:?} not sorted and distinct");
    assert!(types.iter().all(|t| TYPES.contains(t)), "{types:?}");
    check_limit(parse_limit(&params, MAX_EVENTS)?, MAX_EVENTS);
    Ok(())
}

/// `GET /api/vehicles/{id}/trips?from=&to=&limit=`
fn trips(query: RawQuery, id: &str) -> Result<(), ApiError> {
    let params = Params::parse(query, &["from", "to", "limit"])?;
    parse_id(id)?;
    let (from, to) = parse_range(&params, NOW)?;
    assert!(from <= to, "{from} > {to}");
    check_limit(parse_limit(&params, MAX_EVENTS)?, MAX_EVENTS);
    Ok(())
}

fn check_limit(limit: usize, max: usize) {
    assert!((1..=max).contains(&limit), "limit {limit} accepted (max {max})");
}

/// A refusal as the client sees it.
fn check_error(e: ApiError) {
    let debug = format!("{e:?}");
    let response = e.into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{debug}");
    let body = ready(axum::body::to_bytes(response.into_body(), usize::MAX)).expect("the body is in memory");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("an error body is JSON");
    let code = body["error"].as_str().unwrap_or_default();
    assert!(CODES.contains(&code), "undocumented code in {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// The value of a future that needs no waiting (a response body already in memory).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory body was not ready"),
    }
}
