//! The live map in a real headless Chromium: markers appear, move when new positions are
//! produced, a click shows the trail, the list shows last-seen times; tiles are configured but
//! unreachable, so the markers must stand on their own. A screenshot is saved as an artifact.

use std::path::PathBuf;
use std::time::Duration;

use fleetstream_core::position::bearing_deg;
use fleetstream_core::{now_ms, ProcessedPosition};

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
