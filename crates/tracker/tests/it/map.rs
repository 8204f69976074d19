//! The live map in a real headless Chromium: markers appear, move when new positions are
//! produced, a click shows the trail, the list shows last-seen times; tiles are configured but
//! unreachable, so the markers must stand on their own. The geofences are drawn (and a new one
//! appears on reload), fleet events are listed and marked, live ones included, and a vehicle's
//! trips of the day can be drawn. Screenshots are saved as artifacts.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use fleetstream_core::events::{Event, EventKind, Trip};
use fleetstream_core::position::bearing_deg;
use fleetstream_core::{now_ms, ProcessedPosition};
use fleetstream_testkit::eventually;

use crate::cdp::Browser;
use crate::helpers::*;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;
const WAIT: Duration = Duration::from_secs(60);

/// `n` fixes a second apart of a vehicle circling through Berlin, the last one `ends_ago` ms ago.
fn route(obu_id: u64, n: u64, ends_ago: i64) -> Vec<ProcessedPosition> {
    let (clat, clon) = (52.515, 13.395);
    let k = obu_id as f64;
    let radius = 0.012 + 0.004 * (k % 4.0);
    let phase = k * 0.9;
    let end = now_ms() - ends_ago;
    let point = |i: f64| {
        let a = phase + i * 0.035;
        (clat + radius * a.sin() * 0.62, clon + radius * a.cos())
    };
    (1..=n)
        .map(|seq| {
            let (lat, lon) = point(seq as f64);
            let (plat, plon) = point(seq as f64 - 1.0);
            let mut p = position(obu_id, seq, end - (n - seq) as i64 * 1000, lat, lon);
            p.heading = Some(bearing_deg(plat, plon, lat, lon));
            p.speed = Some(25.0 + 3.0 * k);
            p
        })
        .collect()
}

/// A marker's screen coordinate (`x` or `y`) as MARKER reports it.
fn coordinate(marker: &serde_json::Value, axis: &str) -> f64 {
    marker[axis].as_f64().unwrap_or_else(|| panic!("the marker is on the map with an {axis}: {marker}"))
}

fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artifacts")
}

const MARKER: &str = "(id) => { const e = document.querySelector(`.leaflet-marker-pane [data-obu-id=\"${id}\"]`); if (!e) return null; \
                      const r = e.getBoundingClientRect(); \
                      return { seq: +e.dataset.seq, lat: +e.dataset.lat, lon: +e.dataset.lon, x: r.x + r.width / 2, y: r.y + r.height / 2, \
                               offline: e.classList.contains('offline'), selected: e.classList.contains('selected') }; }";

/// Without a token the page shows only the sign-in form; a viewer token typed into it opens the
/// map (and a "Sign out" button), as a user would.
async fn sign_in(browser: &mut Browser) {
    let form = browser.wait_for("document.getElementById('signin')?.hidden === false", WAIT).await;
    assert!(form.is_some(), "the sign-in form appears without a token: {}", browser.eval("document.body.outerHTML.slice(0, 3000)").await);
    let shown = browser.eval("[document.querySelectorAll('.leaflet-marker-pane [data-obu-id]').length, document.getElementById('signout').hidden]").await;
    assert_eq!(shown, json!([0, true]), "nothing is shown before a token is given");
    let typed = format!(
        "(() => {{ document.getElementById('signin-token').value = '{VIEWER_TOKEN}'; \
         document.getElementById('signin-form').requestSubmit(); return true; }})()"
    );
    browser.eval(&typed).await;
    let signed_in = browser
        .wait_for("document.getElementById('signin').hidden && !document.getElementById('signout').hidden && sessionStorage.length === 1", WAIT)
        .await;
    assert!(signed_in.is_some(), "the token opens the map: {}", browser.eval("document.body.outerHTML.slice(0, 3000)").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_appear_move_and_show_their_trail_in_a_real_browser() {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(Backend::Sqlite);
    // Tiles point at a closed port of 127.0.0.1: every tile fails, nothing leaves the machine.
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--tile-url=http://127.0.0.1:9/{z}/{x}/{y}.png"]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let vehicles: Vec<u64> = (1..=8).collect();
    let mut history = Vec::new();
    for id in &vehicles {
        // Vehicle 8 has been silent for five minutes: shown offline.
        let ends_ago = if *id == 8 { 300_000 } else { 1_000 };
        history.extend(route(*id, 40, ends_ago));
    }
    produce_positions(&producer, &topics.positions, &history).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", history.len() as f64).await;

    let mut browser = Browser::launch(WIDTH, HEIGHT).await;
    browser.open(&tracker.url("/"), WIDTH, HEIGHT).await;
    sign_in(&mut browser).await;
    let ready = browser
        .wait_for("document.querySelectorAll('.leaflet-marker-pane [data-obu-id]').length === 8 && document.body.dataset.live === 'open'", WAIT)
        .await;
    assert!(ready.is_some(), "8 markers and a live feed: {}", browser.eval("document.body.outerHTML.slice(0, 3000)").await);
    let notice = browser.wait_for("(() => { const n = document.getElementById('notice'); return !n.hidden && n.textContent; })()", WAIT).await;
    assert_eq!(
        notice.as_ref().and_then(|v| v.as_str()),
        Some("Map tiles could not be loaded: vehicles are shown on a blank background."),
        "the tile failure is explained"
    );

    let before = browser.eval(&format!("({MARKER})(1)")).await;
    let last = &history[39];
    assert_eq!(before["seq"].as_u64(), Some(40), "{before}");
    assert!(near(&before["lat"], last.lat) && near(&before["lon"], last.lon), "{before}");
    let offline = browser.eval(&format!("({MARKER})(8)")).await;
    assert_eq!((offline["offline"].as_bool(), before["offline"].as_bool()), (Some(true), Some(false)));

    // Vehicle 1 drives about 700 m east: its marker moves east on the screen.
    let now = now_ms();
    let mut moved = position(1, 41, now, last.lat, last.lon + 0.01);
    moved.heading = Some(90.0);
    produce_positions(&producer, &topics.positions, &[moved.clone()]).await;
    let after = browser.wait_for(&format!("(() => {{ const m = ({MARKER})(1); return m && m.seq === 41 ? m : null; }})()"), WAIT).await;
    let after = after.unwrap_or_else(|| panic!("marker 1 did not move: {}", before));
    assert!(near(&after["lat"], moved.lat) && near(&after["lon"], moved.lon), "{after}");
    let dx = coordinate(&after, "x") - coordinate(&before, "x");
    let dy = coordinate(&after, "y") - coordinate(&before, "y");
    assert!(dx > 20.0 && dy.abs() < 5.0, "moved east on screen: dx {dx} dy {dy}");

    // The list: every vehicle, most recently seen first (re-sorted every second), with its
    // last-seen time.
    let on_top = browser.wait_for("document.querySelector('#vehicles li')?.dataset.obuId === '1'", WAIT).await;
    assert!(on_top.is_some(), "the vehicle that just moved goes to the top of the list");
    let rows = browser
        .eval("Array.from(document.querySelectorAll('#vehicles li')).map(li => [li.dataset.obuId, li.querySelector('.age').textContent, li.classList.contains('offline')])")
        .await;
    let rows = rows.as_array().cloned().unwrap_or_else(|| panic!("the list's rows: {rows}"));
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert!(rows.iter().all(|r| r[1].as_str().is_some_and(|t| t.ends_with(" ago"))), "{rows:?}");
    let last_row = rows.last().cloned().expect("the list has rows");
    assert_eq!((last_row[0].as_str(), last_row[1].as_str(), last_row[2].as_bool()), (Some("8"), Some("5 min ago"), Some(true)));

    // A click on vehicle 3's marker draws its recent trail (40 fixes); new fixes extend it.
    let three = browser.eval(&format!("({MARKER})(3)")).await;
    browser.click(coordinate(&three, "x"), coordinate(&three, "y")).await;
    let trail = browser.wait_for("(() => { const t = document.querySelector('path.trail[data-obu-id=\"3\"]'); return t && +t.dataset.points; })()", WAIT).await;
    assert_eq!(trail.and_then(|v| v.as_u64()), Some(40), "the trail holds the vehicle's 40 fixes");
    let selected = browser.eval("[document.querySelector('#vehicles li.selected')?.dataset.obuId, document.getElementById('sel-id').textContent]").await;
    assert_eq!(selected, serde_json::json!(["3", "3"]));
    assert_eq!(browser.eval(&format!("({MARKER})(3).selected")).await, true);
    assert_eq!(browser.eval("location.hash").await, "#vehicle=3", "the selection is linkable");
    let next = route(3, 41, 0).pop().expect("a route of 41 fixes");
    produce_positions(&producer, &topics.positions, &[next]).await;
    let grown = browser.wait_for("+document.querySelector('path.trail[data-obu-id=\"3\"]').dataset.points === 41", WAIT).await;
    assert!(grown.is_some(), "the live feed extends the trail");

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    let dir = artifact_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("tracker-map.png");
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("screenshot: {}", path.display());
}

/// `n` fixes of a vehicle `step_ms` apart, ending `ends_ago` ms ago: half of them east along
/// 52.505° N from 13.37° E, then north, about 47 m a fix.
fn commute(obu_id: u64, n: u64, step_ms: i64, ends_ago: i64) -> Vec<ProcessedPosition> {
    let end = now_ms() - ends_ago;
    let half = n / 2;
    (1..=n)
        .map(|seq| {
            let east = seq.min(half) as f64;
            let north = seq.saturating_sub(half) as f64;
            let mut p = position(obu_id, seq, end - (n - seq) as i64 * step_ms, 52.505 + north * 0.00042, 13.37 + east * 0.0007);
            p.heading = Some(if seq <= half { 90.0 } else { 0.0 });
            p.speed = Some(34.0);
            p
        })
        .collect()
}

/// A fence Feature of `geometry` with `properties`.
fn fence(properties: Value, geometry: Value) -> String {
    json!({ "type": "Feature", "properties": properties, "geometry": geometry }).to_string()
}

async fn put_fence(tracker: &TestTracker, id: &str, body: &str) {
    let (status, _, text) = tracker.call(Method::PUT, &format!("/api/geofences/{id}"), Some(body)).await;
    assert!(status == 201 || status == 200, "PUT /api/geofences/{id}: {status} {text}");
}

/// An event of `p`'s position.
fn event_at(p: &ProcessedPosition, kind: EventKind) -> Event {
    Event::new(p.obu_id, p.seq, p.ts, p.lat, p.lon, p.ts + 300, kind)
}

/// A real click in the middle of the element `selector` (scrolled into view first).
async fn click_on(browser: &mut Browser, selector: &str) {
    let selector = serde_json::to_string(selector).unwrap_or_default();
    let at = browser
        .eval(&format!(
            "(() => {{ const e = document.querySelector({selector}); if (!e) return null; e.scrollIntoView({{ block: 'center' }}); \
             const r = e.getBoundingClientRect(); return {{ x: r.x + r.width / 2, y: r.y + r.height / 2 }}; }})()"
        ))
        .await;
    assert!(at.is_object(), "nothing to click at {selector}");
    browser.click(coordinate(&at, "x"), coordinate(&at, "y")).await;
}

/// The event list as [type, vehicle, detail] rows, top to bottom.
const EVENT_ROWS: &str = "Array.from(document.querySelectorAll('#events li')).map(li => \
                          [li.querySelector('.type').textContent, li.querySelector('.vehicle').textContent, li.querySelector('.detail').textContent])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_events_and_trips_show_on_the_map() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--tile-url=http://127.0.0.1:9/{z}/{x}/{y}.png"]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));

    // Vehicle 1 drives east, then north, a fix every 5 s for 5 minutes; 2 to 5 circle nearby.
    let one = commute(1, 60, 5_000, 2_000);
    let mut history = one.clone();
    for id in 2..=5 {
        history.extend(route(id, 20, 1_000));
    }
    produce_positions(&producer, &topics.positions, &history).await;

    // The depot (a polygon with a hole, 30 km/h) around the first half of vehicle 1's drive,
    // and two yards (one MultiPolygon, 20 km/h) north of it. All within the vehicles' bounds,
    // which the map fits: Leaflet leaves out what lies far outside the view.
    let loaded = eventually(WAIT, || async { tracker.get("/api/geofences").await.0 == 200 }).await;
    assert!(loaded, "the tracker did not read its geofences topic");
    let depot = json!({ "type": "Polygon", "coordinates": [
        [[13.365, 52.50], [13.40, 52.50], [13.40, 52.515], [13.365, 52.515], [13.365, 52.50]],
        [[13.372, 52.508], [13.386, 52.508], [13.386, 52.513], [13.372, 52.513], [13.372, 52.508]],
    ]});
    put_fence(&tracker, "depot", &fence(json!({ "name": "Depot", "speed_limit_kmh": 30 }), depot)).await;
    let yards = json!({ "type": "MultiPolygon", "coordinates": [
        [[[13.372, 52.518], [13.378, 52.518], [13.378, 52.522], [13.372, 52.522], [13.372, 52.518]]],
        [[[13.382, 52.5185], [13.386, 52.5185], [13.386, 52.5215], [13.382, 52.5215], [13.382, 52.5185]]],
    ]});
    put_fence(&tracker, "yards", &fence(json!({ "name": "Yards", "speed_limit_kmh": 20 }), yards)).await;

    // What the processor would have said about that drive.
    let v2 = route(2, 20, 1_000);
    let (start, end) = (&one[2], &one[57]);
    let trip = Trip {
        start_ts: start.ts,
        start_seq: start.seq,
        start_lat: start.lat,
        start_lon: start.lon,
        end_ts: end.ts,
        end_seq: end.seq,
        end_lat: end.lat,
        end_lon: end.lon,
        distance_m: 2_585.0,
        duration_s: ((end.ts - start.ts) / 1000) as f64,
        max_speed_kmh: 41.0,
        avg_speed_kmh: 33.8,
    };
    let earlier = vec![
        event_at(&one[0], EventKind::IgnitionOn {}),
        event_at(&one[1], EventKind::GeofenceEnter { fence_id: "depot".into(), fence_name: "Depot".into(), since: one[0].ts }),
        event_at(&one[2], EventKind::Moving { speed_kmh: 34.0, since: one[0].ts }),
        event_at(&one[19], EventKind::Overspeed { limit_kmh: 30.0, peak_kmh: 47.5, fence_id: Some("depot".into()), since: one[17].ts }),
        event_at(&v2[4], EventKind::Alarm { alarm: "sos".into() }),
        event_at(end, EventKind::Trip(trip)),
    ];
    produce_events(&producer, &topics.events, &earlier).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", history.len() as f64).await;
    tracker.wait_metric("fleetstream_tracker_events_stored_total", earlier.len() as f64).await;

    let mut browser = Browser::launch(WIDTH, HEIGHT).await;
    browser.open(&tracker.url("/"), WIDTH, HEIGHT).await;
    sign_in(&mut browser).await;
    let ready = browser
        .wait_for(
            "document.querySelectorAll('.leaflet-marker-pane [data-obu-id]').length === 5 && document.body.dataset.fences === '2' \
             && document.body.dataset.events === '6' && document.body.dataset.eventsLive === 'open'",
            WAIT,
        )
        .await;
    assert!(ready.is_some(), "5 vehicles, 2 fences, 6 events and the live event feed: {}", browser.eval("document.body.outerHTML.slice(0, 4000)").await);

    // The fences: one path each (the hole and the second part of the yards are in the same
    // path), labelled with name and speed limit.
    let fences = browser.eval("Array.from(document.querySelectorAll('.leaflet-fences-pane path.fence')).map(p => p.dataset.fenceId).sort()").await;
    assert_eq!(fences, json!(["depot", "yards"]));
    let depot_path = browser.eval("document.querySelector('path.fence[data-fence-id=\"depot\"]').getAttribute('d')").await;
    assert_eq!(depot_path.as_str().map(|d| d.matches('M').count()), Some(2), "outer ring and hole: {depot_path}");
    let yards_path = browser.eval("document.querySelector('path.fence[data-fence-id=\"yards\"]').getAttribute('d')").await;
    assert_eq!(yards_path.as_str().map(|d| d.matches('M').count()), Some(2), "two polygons: {yards_path}");
    let labels = browser
        .eval("Array.from(document.querySelectorAll('.fence-label')).map(l => [l.querySelector('b').textContent, l.querySelector('.limit')?.textContent ?? null]).sort()")
        .await;
    assert_eq!(labels, json!([["Depot", "30 km/h"], ["Yards", "20 km/h"]]));

    // A fence added through the API shows after a click on the reload button: a circle of its
    // radius (300 m; the depot is 0.035° of longitude, 2370 m, wide).
    let school = json!({ "type": "Point", "coordinates": [13.396, 52.521] });
    put_fence(&tracker, "school", &fence(json!({ "name": "School", "radius_m": 300, "speed_limit_kmh": 30 }), school)).await;
    click_on(&mut browser, "#fences-refresh").await;
    let three = browser.wait_for("document.body.dataset.fences === '3' && document.getElementById('fence-count').textContent", WAIT).await;
    assert_eq!(three, Some(json!("3 fences")), "the new fence appears without a reload");
    let widths = browser
        .eval("['school', 'depot'].map(id => document.querySelector(`path.fence[data-fence-id=\"${id}\"]`).getBoundingClientRect().width)")
        .await;
    let (circle, depot_px) = (widths[0].as_f64().unwrap_or(0.0), widths[1].as_f64().unwrap_or(0.0));
    let want = depot_px * 600.0 / (0.035 * 111_320.0 * 52.507_f64.to_radians().cos());
    assert!((circle - want).abs() < want * 0.05 + 2.0, "the circle is {circle} px wide, {want} px expected (depot {depot_px} px)");

    // The events, newest first, each with its key field; one marker each, by category.
    let rows = browser.eval(EVENT_ROWS).await;
    assert_eq!(
        rows,
        json!([
            ["trip", "Vehicle 1", "2.6 km in 4 min 35 s"],
            ["alarm", "Vehicle 2", "sos"],
            ["overspeed", "Vehicle 1", "peak 48 km/h / limit 30 km/h in Depot"],
            ["moving", "Vehicle 1", "34 km/h"],
            ["geofence_enter", "Vehicle 1", "Depot"],
            ["ignition_on", "Vehicle 1", ""],
        ])
    );
    let markers = browser
        .eval("Array.from(document.querySelectorAll('.leaflet-events-pane .event-icon')).map(m => [m.dataset.eventId, m.dataset.category]).sort()")
        .await;
    assert_eq!(
        markers,
        json!([
            ["1-1-ignition_on", "ignition"],
            ["1-2-geofence_enter-depot", "geofence"],
            ["1-20-overspeed-depot", "overspeed"],
            ["1-3-moving", "motion"],
            ["1-58-trip", "trip"],
            ["2-5-alarm", "alarm"],
        ])
    );
    let enter = browser.eval(&format!("({MARKER_AT})('1-2-geofence_enter-depot')")).await;
    assert!(near(&enter["lat"], one[1].lat) && near(&enter["lon"], one[1].lon), "the marker is where the event was: {enter}");

    // An event stored after the page loaded comes in live, on top.
    let exit = event_at(&one[59], EventKind::GeofenceExit { fence_id: "depot".into(), fence_name: "Depot".into(), since: one[58].ts });
    produce_events(&producer, &topics.events, std::slice::from_ref(&exit)).await;
    let top = browser.wait_for("document.querySelector('#events li')?.dataset.eventId === '1-60-geofence_exit-depot'", WAIT).await;
    assert!(top.is_some(), "the live event is not on top: {}", browser.eval(EVENT_ROWS).await);
    assert_eq!(browser.eval(&format!("{EVENT_ROWS}[0]")).await, json!(["geofence_exit", "Vehicle 1", "Depot"]));
    assert_eq!(browser.eval("document.querySelectorAll('.leaflet-events-pane .event-icon').length").await, 7);
    assert_eq!(browser.eval("document.querySelector('.event-icon[data-event-id=\"1-60-geofence_exit-depot\"]').classList.contains('ending')").await, true);

    // Selecting vehicle 1 offers its trip of today; choosing it draws the trip's track (fixes
    // 3 to 58) with start and end, and sums it up.
    click_on(&mut browser, "#vehicles li[data-obu-id=\"1\"]").await;
    let offered = browser.wait_for("document.querySelector('#trips li[data-event-id=\"1-58-trip\"]')?.textContent", WAIT).await;
    let offered = offered.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| panic!("no trip offered"));
    assert!(offered.ends_with("2.6 km · 4 min 35 s"), "{offered}");
    assert_eq!(browser.eval("document.querySelectorAll('#trips li').length").await, 1);
    click_on(&mut browser, "#trips li[data-event-id=\"1-58-trip\"]").await;
    let points = browser.wait_for("(() => { const t = document.querySelector('path.trip-track[data-event-id=\"1-58-trip\"]'); return t && +t.dataset.points; })()", WAIT).await;
    assert_eq!(points, Some(json!(56)), "the trip's track is its 56 fixes");
    assert_eq!(browser.eval("document.querySelectorAll('.leaflet-marker-pane .trip-mark[data-event-id=\"1-58-trip\"]').length").await, 2);
    let summary = browser.eval("document.querySelector('#trip-summary .figures').textContent").await;
    assert_eq!(summary, "2.6 km · 4 min 35 s · max 41 km/h · avg 34 km/h");
    assert_eq!(browser.eval("document.querySelector('#trips li.selected')?.dataset.eventId").await, "1-58-trip");
    // The trail of the last 15 minutes is there as well.
    let trail = browser.wait_for("document.querySelector('path.trail[data-obu-id=\"1\"]')?.dataset.points", WAIT).await;
    assert_eq!(trail, Some(json!("60")));

    // Drawing the trip zoomed the map: the screenshot waits for the animation's end, when
    // Leaflet redraws its paths for the new view.
    let settled = browser.wait_for("!document.querySelector('.leaflet-pan-anim, .leaflet-zoom-anim')", WAIT).await;
    assert!(settled.is_some(), "the map did not stop moving");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    let dir = artifact_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("map-events.png");
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("screenshot: {}", path.display());

    // Text from the API is shown as text: a fence name and an alarm made of HTML run nothing
    // and add no element.
    let evil = "<img src=x onerror=\"window.pwned=1\">";
    put_fence(&tracker, "evil", &fence(json!({ "name": evil, "radius_m": 50 }), json!({ "type": "Point", "coordinates": [13.375, 52.525] }))).await;
    click_on(&mut browser, "#fences-refresh").await;
    let alarm = format!("<script>window.pwned=2</script>{evil}");
    let evil_alarm = event_at(&v2[19], EventKind::Alarm { alarm: alarm.clone() });
    produce_events(&producer, &topics.events, &[evil_alarm]).await;
    let shown = browser
        .wait_for("document.body.dataset.fences === '4' && document.querySelector('#events li[data-event-id=\"2-20-alarm\"] .detail')?.textContent", WAIT)
        .await;
    assert_eq!(shown, Some(json!(alarm)));
    let label = browser.eval("Array.from(document.querySelectorAll('.fence-label b')).map(b => b.textContent).filter(t => t.startsWith('<'))").await;
    assert_eq!(label, json!([evil]));
    assert_eq!(browser.eval("[window.pwned ?? null, document.querySelectorAll('#events img, #events script, .leaflet-tooltip img').length]").await, json!([null, 0]));

    // A trip in the event list opens it as well: its vehicle selected, its track drawn.
    click_on(&mut browser, "#sel-close").await;
    assert_eq!(browser.eval("[document.getElementById('selection').hidden, document.querySelectorAll('path.trip-track, .trip-mark').length]").await, json!([true, 0]));
    click_on(&mut browser, "#events li[data-event-id=\"1-58-trip\"]").await;
    let again = browser.wait_for("document.querySelector('path.trip-track[data-event-id=\"1-58-trip\"]')?.dataset.points", WAIT).await;
    assert_eq!((again, browser.eval("location.hash").await), (Some(json!("56")), json!("#vehicle=1")));
}

/// An event marker: where it is on the screen, and the lat/lon it carries.
const MARKER_AT: &str = "(id) => { const e = document.querySelector(`.leaflet-events-pane [data-event-id=\"${id}\"]`); if (!e) return null; \
                         const r = e.getBoundingClientRect(); return { x: r.x + r.width / 2, y: r.y + r.height / 2, lat: +e.dataset.lat, lon: +e.dataset.lon }; }";
