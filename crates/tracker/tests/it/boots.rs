//! Devices that restart their seq under a higher boot, on both backends: the history keeps every
//! position of every boot (keyed by `(obu_id, boot, seq)`), the latest position is the one of the
//! latest boot, replays store nothing twice, and a database from before boots is upgraded with
//! its rows at boot 0.

use std::sync::Arc;

use serde_json::Value;

use fleetstream_core::{now_ms, ProcessedPosition};
use fleetstream_tracker::Store;

use crate::both_backends;
use crate::helpers::*;

both_backends!(a_restarted_device_keeps_every_position_of_both_boots, an_old_database_is_upgraded_with_its_rows_at_boot_0);

/// A position of `obu_id` in `boot`.
fn booted(obu_id: u64, boot: u64, seq: u64, ts: i64) -> ProcessedPosition {
    ProcessedPosition { boot, ..position(obu_id, seq, ts, 52.5, 13.4) }
}

/// The (boot, seq) of each point of a track response, in response order (boot 0 when absent).
fn boots_and_seqs(track: &Value) -> Vec<(u64, u64)> {
    let points = track["points"].as_array().unwrap_or_else(|| panic!("a track has a `points` array: {track}"));
    points.iter().map(|p| (p["boot"].as_u64().unwrap_or(0), p["seq"].as_u64().unwrap_or_else(|| panic!("a point has a seq: {p}")))).collect()
}

async fn a_restarted_device_keeps_every_position_of_both_boots(backend: Backend) {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(backend);
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let start = now_ms() - 60_000;
    // What the processor left in vehicle-latest for vehicle 82: boot 1 far along, then boot 2
    // from seq 1. The seed takes the later boot, whatever its seq.
    produce_latest(&producer, &topics.latest, &[booted(82, 1, 90, start), booted(82, 2, 1, start + 1_000)]).await;
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let v82 = tracker.get_ok("/api/vehicles/82").await;
    assert_eq!((v82["boot"].as_u64(), v82["seq"].as_u64()), (Some(2), Some(1)), "seeded from the later boot: {v82}");

    // Vehicle 80: seqs 1..=5 of boot 1, then the device restarts and counts 1..=5 again in
    // boot 2, one position a second. Vehicle 81 sends no boot.
    let restarted: Vec<ProcessedPosition> =
        (0..10u64).map(|i| booted(80, 1 + i / 5, 1 + i % 5, start + 10_000 + i as i64 * 1_000)).collect();
    let plain = drive(81, 3, 1_000, 48.1, 11.5);
    produce_positions(&producer, &topics.positions, &restarted).await;
    produce_positions(&producer, &topics.positions, &plain).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 13.0).await;
    assert_eq!(tracker.metric("fleetstream_tracker_duplicates_skipped_total", None), 0.0, "boot 2's seqs are not boot 1's");

    let track = tracker.get_ok("/api/vehicles/80/track?from=-1h").await;
    assert_eq!(track["count"], 10, "{track}");
    let both: Vec<(u64, u64)> = (1..=2).flat_map(|boot| (1..=5).map(move |seq| (boot, seq))).collect();
    assert_eq!(boots_and_seqs(&track), both, "by time: all of boot 1, then boot 2");
    let latest = tracker.get_ok("/api/vehicles/80").await;
    assert_eq!((latest["boot"].as_u64(), latest["seq"].as_u64(), latest["ts"].as_i64()), (Some(2), Some(5), Some(restarted[9].ts)));
    let listed = tracker.get_ok("/api/vehicles").await;
    let v80 = listed["vehicles"].as_array().into_iter().flatten().find(|v| v["obu_id"] == 80).cloned().unwrap_or_default();
    assert_eq!((v80["boot"].as_u64(), v80["seq"].as_u64()), (Some(2), Some(5)), "{listed}");
    // No boot, no `boot` field.
    let v81 = tracker.get_ok("/api/vehicles/81").await;
    assert!(v81.get("boot").is_none(), "{v81}");
    let track81 = tracker.get_ok("/api/vehicles/81/track?from=-1h").await;
    assert!(track81["points"][0].get("boot").is_none(), "{track81}");

    // Delivered again (a replay, a producer retry): nothing new, nothing moved.
    produce_positions(&producer, &topics.positions, &restarted).await;
    tracker.wait_metric("fleetstream_tracker_duplicates_skipped_total", 10.0).await;
    assert_eq!(tracker.metric("fleetstream_tracker_positions_written_total", None), 13.0);
    assert_eq!(tracker.store.position_count().await.expect("counting the stored positions"), 13);
    assert_eq!(boots_and_seqs(&tracker.get_ok("/api/vehicles/80/track?from=-1h").await), both);

    // A delayed position of boot 1 (flagged by the processor) is history, not the latest.
    let mut late = booted(80, 1, 6, start + 14_500);
    late.out_of_order = true;
    produce_positions(&producer, &topics.positions, &[late]).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 14.0).await;
    let track = tracker.get_ok("/api/vehicles/80/track?from=-1h").await;
    assert_eq!(boots_and_seqs(&track)[4..7], [(1, 5), (1, 6), (2, 1)], "in time order");
    let latest = tracker.get_ok("/api/vehicles/80").await;
    assert_eq!((latest["boot"].as_u64(), latest["seq"].as_u64()), (Some(2), Some(5)));
}

async fn an_old_database_is_upgraded_with_its_rows_at_boot_0(backend: Backend) {
    let db = Db::new(backend);
    let old = Store::open_migrated_to(&db.url, 2, 2).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old.migrations().await.expect("listing the migrations").len(), 2, "the schema before boots");
    drop(old);
    // What a tracker before boots stored: vehicle 70, seqs 1..=3, latest seq 3.
    let ts = now_ms() - 10_000;
    let rows = [1i64, 2, 3];
    let positions = "INSERT INTO positions (obu_id, seq, ts, lat, lon, processed_at) VALUES (70, $1, $2, 52.5, 13.4, $2)";
    let latest = "INSERT INTO vehicles_latest (obu_id, seq, ts, lat, lon, processed_at, updated_at) VALUES (70, 3, $1, 52.5, 13.4, $1, $1)";
    match backend {
        Backend::Sqlite => {
            let path = db.url.strip_prefix("sqlite://").expect("an sqlite URL");
            let conn = rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("{e}"));
            for seq in rows {
                conn.execute(&positions.replace('$', "?"), [seq, ts + seq]).unwrap_or_else(|e| panic!("{e}"));
            }
            conn.execute(&latest.replace('$', "?"), [ts + 3]).unwrap_or_else(|e| panic!("{e}"));
        }
        Backend::Postgres => {
            use deadpool_postgres::tokio_postgres;
            let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{e}"));
            let connection = tokio::spawn(connection);
            for seq in rows {
                client.execute(positions, &[&seq, &(ts + seq)]).await.unwrap_or_else(|e| panic!("{e}"));
            }
            client.execute(latest, &[&(ts + 3)]).await.unwrap_or_else(|e| panic!("{e}"));
            drop(client);
            let _ = connection.await;
        }
    }

    let store = Store::open(&db.url, 2).await.unwrap_or_else(|e| panic!("upgrading: {e}"));
    let applied = store.migrations().await.expect("listing the migrations");
    assert_eq!(applied.get(2).map(|(v, name)| (*v, name.as_str())), Some((3, "boot in positions and vehicles_latest")), "{applied:?}");
    let kept = store.track(70, 0, i64::MAX, 100).await.expect("reading the track");
    assert_eq!(kept.iter().map(|p| (p.boot, p.seq, p.ts)).collect::<Vec<_>>(), vec![(0, 1, ts + 1), (0, 2, ts + 2), (0, 3, ts + 3)]);
    let latest = store.vehicle(70).await.expect("reading the latest").expect("vehicle 70 is kept");
    assert_eq!((latest.boot, latest.seq), (0, 3));

    // The device restarts: boot 1 counts from 1 again, next to boot 0's rows; boot 0's seq 3
    // again is still a duplicate.
    let batch = vec![booted(70, 0, 3, ts + 3), booted(70, 1, 1, ts + 4), booted(70, 1, 2, ts + 5)];
    let outcome = store.write(Arc::new(batch)).await.expect("writing");
    assert_eq!((outcome.inserted, outcome.duplicates), (vec![1, 2], 1));
    assert_eq!(store.position_count().await.expect("counting"), 5);
    let latest = store.vehicle(70).await.expect("reading the latest").expect("vehicle 70");
    assert_eq!((latest.boot, latest.seq), (1, 2));
}
