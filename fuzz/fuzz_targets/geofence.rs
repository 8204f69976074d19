//! The GeoJSON geofence parser (`core::geofence`), which reads request bodies of the tracker's
//! `POST`/`PUT /api/geofences` and the records of the `geofences` topic, and the point lookups
//! the processor makes against the fences it accepted.
//!
//! Checks, besides "never panics" (nor hangs: `geo`'s validation is quadratic, bounded by
//! `MAX_POSITIONS`):
//! - a refusal is one line saying what is wrong (it is a 422 body and a log line);
//! - an accepted fence is within its limits and round-trips: `to_feature` reads back equal;
//! - boundaries count as inside (every vertex is in its polygon), a circle holds exactly the
//!   points within its radius, and the R-tree index agrees with testing every fence.
#![no_main]

use fleetstream_core::geofence::{parse_collection, Fence, FenceError, FenceIndex, MAX_ID_LEN, MAX_NAME_LEN};
use fleetstream_core::position::distance_m;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let mut fences = Vec::new();
    // A Feature as POSTed (its own id), and as PUT (the path's id wins).
    for path_id in [None, Some("from-the-path")] {
        match Fence::from_feature(&value, path_id) {
            Ok(fence) => {
                check_fence(&fence);
                if let Some(id) = path_id {
                    assert_eq!(fence.id, id);
                }
                fences.push(fence);
            }
            Err(e) => check_error(&e),
        }
    }
    // A FeatureCollection, as `--geofences FILE` is read.
    match parse_collection(&value) {
        Ok(collection) => {
            let mut ids: Vec<&str> = collection.iter().map(|f| f.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), collection.len(), "duplicate ids accepted");
            collection.iter().for_each(check_fence);
            fences.extend(collection);
        }
        Err(e) => check_error(&e),
    }
    if !fences.is_empty() {
        check_index(&fences);
    }
});

fn check_error(e: &FenceError) {
    let message = e.to_string();
    assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
}

fn check_fence(fence: &Fence) {
    assert!(!fence.id.is_empty() && fence.id.len() <= MAX_ID_LEN, "{:?}", fence.id);
    assert!(!fence.name.trim().is_empty() && fence.name.chars().count() <= MAX_NAME_LEN);
    let text = fence.to_feature().to_string();
    let back: Value = serde_json::from_str(&text).expect("a fence's Feature is JSON");
    assert_eq!(Fence::from_feature(&back, None).as_ref(), Ok(fence), "{text}");
}

/// Boundaries count as inside: every vertex of a polygon (outer ring or hole) is in its fence,
/// and a circle holds exactly the points within its radius, however its bounding box was
/// rounded. The R-tree index answers what testing every fence answers.
fn check_index(fences: &[Fence]) {
    let index = FenceIndex::new(fences.iter().cloned());
    let mut points = vec![(0.0, 0.0), (90.0, 180.0), (-90.0, -180.0)];
    for fence in index.iter().take(4) {
        let feature = fence.to_feature();
        let geometry = &feature["geometry"];
        let mut coords = Vec::new();
        collect_positions(&geometry["coordinates"], &mut coords);
        if geometry["type"] == "Point" {
            let (lon, lat) = coords[0];
            let radius = feature["properties"]["radius_m"].as_f64().expect("a circle has a radius");
            assert!(fence.contains(lat, lon), "{} misses its centre", fence.id);
            for bearing in (0..360).step_by(45) {
                for factor in [0.999, 1.001] {
                    let (plat, plon) = destination(lat, lon, f64::from(bearing), radius * factor);
                    if !(-180.0..=180.0).contains(&plon) {
                        continue;
                    }
                    let within = distance_m(plat, plon, lat, lon) <= radius;
                    assert_eq!(fence.contains(plat, plon), within, "{} at ({plat}, {plon})", fence.id);
                    points.push((plat, plon));
                }
            }
        } else {
            for &(lon, lat) in coords.iter().take(64) {
                assert!(fence.contains(lat, lon), "{}: vertex ({lat}, {lon}) is outside", fence.id);
                points.push((lat, lon));
            }
        }
    }
    for (lat, lon) in points {
        let got: Vec<&str> = index.containing(lat, lon).iter().map(|f| f.id.as_str()).collect();
        let mut want: Vec<&str> = index.iter().filter(|f| f.contains(lat, lon)).map(|f| f.id.as_str()).collect();
        want.sort_unstable();
        assert_eq!(got, want, "at ({lat}, {lon})");
    }
    assert!(index.containing(f64::NAN, 0.0).is_empty(), "NaN is in no fence");
}

/// The point `distance` metres from (`lat`, `lon`) along `bearing` degrees, on the sphere of
/// `distance_m`.
fn destination(lat: f64, lon: f64, bearing: f64, distance: f64) -> (f64, f64) {
    let delta = distance / 6_371_008.8;
    let (phi, theta) = (lat.to_radians(), bearing.to_radians());
    let phi2 = (phi.sin() * delta.cos() + phi.cos() * delta.sin() * theta.cos()).asin();
    let dlambda = (theta.sin() * delta.sin() * phi.cos()).atan2(delta.cos() - phi.sin() * phi2.sin());
    (phi2.to_degrees(), lon + dlambda.to_degrees())
}

/// Every `[lon, lat, ...]` position inside a GeoJSON coordinates value.
fn collect_positions(value: &Value, out: &mut Vec<(f64, f64)>) {
    let Value::Array(items) = value else { return };
    match (items.first().and_then(Value::as_f64), items.get(1).and_then(Value::as_f64)) {
        (Some(lon), Some(lat)) => out.push((lon, lat)),
        _ => items.iter().for_each(|item| collect_positions(item, out)),
    }
}
