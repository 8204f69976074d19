//! Positions in, API out, against the real broker and both backends: the right latest position,
//! the right ordered track, no duplicates on replay, retention, the seed from vehicle-latest,
//! flush-and-commit on shutdown, and a database outage.

use std::time::Duration;

use fleetstream_core::now_ms;
use fleetstream_testkit::{eventually, unique};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    positions_appear_with_the_latest_position_and_an_ordered_track,
    replaying_the_same_records_creates_no_duplicates,
    retention_prunes_old_rows,
    latest_positions_are_seeded_from_vehicle_latest,
    shutdown_writes_the_batch_in_hand_and_commits,
    migrations_are_versioned_and_applied_once,
);

async fn positions_appear_with_the_latest_position_and_an_ordered_track(backend: Backend) {
    let (broker, topics) = broker_and_topics(3).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));

    let one = drive(1, 20, 2_000, 52.50, 13.40);
    let two = drive(2, 20, 2_000, 52.52, 13.30);
    let three = drive(3, 5, 2_000, 40.41, -3.70);
    produce_positions(&producer, &topics.positions, &one).await;
    produce_positions(&producer, &topics.positions, &two).await;
    produce_positions(&producer, &topics.positions, &three).await;
    // Vehicle 2: seq 22 arrives, then seq 21 late (flagged by the processor): history only.
    let now = now_ms();
    let s22 = position(2, 22, now - 1_000, 52.60, 13.50);
    let mut s21 = position(2, 21, now - 1_500, 52.59, 13.49);
    s21.out_of_order = true;
    produce_positions(&producer, &topics.positions, &[s22.clone(), s21.clone()]).await;
    let total = 20 + 20 + 5 + 2;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", total as f64).await;

    let list = tracker.get_ok("/api/vehicles").await;
    assert_eq!(list["count"], 3, "{list}");
    let vehicles = list["vehicles"].as_array().cloned().unwrap_or_else(|| panic!("a vehicle list: {list}"));
    let ids: Vec<u64> = vehicles.iter().filter_map(|v| v["obu_id"].as_u64()).collect();
    assert_eq!(ids, vec![1, 2, 3], "ordered by obu_id");
    let latest_seqs: Vec<u64> = vehicles.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(latest_seqs, vec![20, 22, 5], "the late seq 21 does not move vehicle 2 back");
    let v1 = &vehicles[0];
    let last = &one[19];
    assert!(near(&v1["lat"], last.lat) && near(&v1["lon"], last.lon), "{v1}");
    assert_eq!(v1["ts"].as_i64(), Some(last.ts));
    assert_eq!((v1["speed"].as_f64(), v1["heading"].as_f64(), v1["received_at"].as_i64()), (Some(36.0), Some(90.0), last.received_at));
    assert_eq!(v1["online"], true, "{v1}");
    assert!(v1["age_ms"].as_i64().is_some_and(|a| a >= 2_000), "{v1}");

    let v2 = tracker.get_ok("/api/vehicles/2").await;
    assert_eq!((v2["seq"].as_u64(), v2["lat"].as_f64()), (Some(22), Some(52.60)));

    let from = one[0].ts;
    let to = one[19].ts;
    let track = tracker.get_ok(&format!("/api/vehicles/1/track?from={from}&to={to}")).await;
    assert_eq!(seqs(&track), (1..=20).collect::<Vec<_>>(), "the whole track, in order");
    assert_eq!((track["count"].as_u64(), track["truncated"].as_bool()), (Some(20), Some(false)));
    let p5 = &track["points"][4];
    assert!(near(&p5["lat"], one[4].lat) && near(&p5["lon"], one[4].lon), "{p5}");
    assert_eq!(p5["ts"].as_i64(), Some(one[4].ts));

    let middle = tracker.get_ok(&format!("/api/vehicles/1/track?from={}&to={}", one[4].ts, one[9].ts)).await;
    assert_eq!(seqs(&middle), vec![5, 6, 7, 8, 9, 10], "both ends of the range are included");

    let limited = tracker.get_ok(&format!("/api/vehicles/1/track?from={from}&to={to}&limit=5")).await;
    assert_eq!((seqs(&limited), limited["truncated"].as_bool()), (vec![1, 2, 3, 4, 5], Some(true)));

    // The late position is in the history, in time order, flagged.
    let track2 = tracker.get_ok("/api/vehicles/2/track?from=-1h").await;
    let s = seqs(&track2);
    assert_eq!(s.len(), 22);
    assert_eq!(&s[19..], &[20, 21, 22]);
    assert_eq!(track2["points"][20]["out_of_order"], true);
    assert_eq!(track2["points"][21]["out_of_order"], false);

    assert_eq!(tracker.metric("fleetstream_tracker_positions_consumed_total", None), total as f64);
    assert_eq!(tracker.metric("fleetstream_tracker_duplicates_skipped_total", None), 0.0);
    assert_eq!(tracker.metric("fleetstream_tracker_vehicles", None), 3.0);
    assert!(tracker.metric("fleetstream_tracker_batch_size_count", None) >= 1.0);
    assert!(tracker.metric("fleetstream_tracker_flush_seconds_count", None) >= 1.0);
    assert_eq!(tracker.store.position_count().await.expect("counting the stored positions"), total);
}

async fn replaying_the_same_records_creates_no_duplicates(backend: Backend) {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let mut positions = drive(10, 15, 1_000, 48.85, 2.35);
    positions.extend(drive(11, 15, 1_000, 48.80, 2.30));
    produce_positions(&producer, &topics.positions, &positions).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 30.0).await;

    // The same records again (as a producer retry or a reprocessing would write them).
    produce_positions(&producer, &topics.positions, &positions).await;
    tracker.wait_metric("fleetstream_tracker_duplicates_skipped_total", 30.0).await;
    assert_eq!(tracker.metric("fleetstream_tracker_positions_written_total", None), 30.0);
    assert_eq!(tracker.metric("fleetstream_tracker_positions_consumed_total", None), 60.0);

    // A tracker in a new group on the same database re-reads the whole topic (as after a lost
    // commit or a crash): nothing is stored twice.
    let replay = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    replay.wait_metric("fleetstream_tracker_duplicates_skipped_total", 60.0).await;
    assert_eq!(replay.metric("fleetstream_tracker_positions_written_total", None), 0.0);

    assert_eq!(tracker.store.position_count().await.expect("counting the stored positions"), 30);
    let track = tracker.get_ok("/api/vehicles/10/track?from=-1h").await;
    assert_eq!(seqs(&track), (1..=15).collect::<Vec<_>>(), "each seq once, in order");
    let latest = tracker.get_ok("/api/vehicles/11").await;
    assert_eq!(latest["seq"], 15);
}

async fn retention_prunes_old_rows(backend: Backend) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--retention=1h", "--prune-interval=200ms"]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    // Vehicle 20: ten positions three hours old, then ten recent ones. Vehicle 21: only old ones.
    let mut positions = drive(20, 10, 3 * 3_600_000, 50.0, 8.0);
    positions.extend(drive(20, 20, 1_000, 50.0, 8.0).into_iter().skip(10));
    positions.extend(drive(21, 5, 3 * 3_600_000, 50.1, 8.1));
    produce_positions(&producer, &topics.positions, &positions).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 25.0).await;
    tracker.wait_metric("fleetstream_tracker_retention_pruned_total", 15.0).await;

    assert_eq!(tracker.metric("fleetstream_tracker_retention_pruned_total", None), 15.0, "only the old rows");
    assert_eq!(tracker.store.position_count().await.expect("counting the stored positions"), 10);
    let track = tracker.get_ok("/api/vehicles/20/track?from=-4h").await;
    assert_eq!(seqs(&track), (11..=20).collect::<Vec<_>>());
    // The latest position is kept (one row per vehicle): an idle vehicle stays on the map.
    let idle = tracker.get_ok("/api/vehicles/21").await;
    assert_eq!((idle["seq"].as_u64(), idle["online"].as_bool()), (Some(5), Some(false)));
    let empty = tracker.get_ok("/api/vehicles/21/track?from=-4h").await;
    assert_eq!(empty["count"], 0);
}

async fn latest_positions_are_seeded_from_vehicle_latest(backend: Backend) {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(backend);
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let now = now_ms();
    // As the processor left them: 30 at seq 100 (an older record of it still uncompacted), 31.
    produce_latest(
        &producer,
        &topics.latest,
        &[position(30, 90, now - 20_000, 45.0, 7.0), position(30, 100, now - 10_000, 45.1, 7.1), position(31, 7, now - 5_000, 45.2, 7.2)],
    )
    .await;
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    // Ready means seeded.
    let list = tracker.get_ok("/api/vehicles").await;
    let got: Vec<(u64, u64)> =
        list["vehicles"].as_array().into_iter().flatten().filter_map(|v| Some((v["obu_id"].as_u64()?, v["seq"].as_u64()?))).collect();
    assert_eq!(got, vec![(30, 100), (31, 7)]);
    assert_eq!(tracker.metric("fleetstream_tracker_latest_seeded_total", None), 3.0);
    assert_eq!(tracker.get_ok("/api/vehicles/30/track?from=-1h").await["count"], 0, "the seed is not history");

    // Newer positions move it on; an older one (a replayed history) never moves it back.
    produce_positions(&producer, &topics.positions, &[position(30, 101, now - 1_000, 45.3, 7.3), position(31, 5, now - 6_000, 45.4, 7.4)])
        .await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 2.0).await;
    assert_eq!(tracker.get_ok("/api/vehicles/30").await["seq"], 101);
    let v31 = tracker.get_ok("/api/vehicles/31").await;
    assert_eq!((v31["seq"].as_u64(), v31["lat"].as_f64()), (Some(7), Some(45.2)));
    assert_eq!(tracker.get_ok("/api/vehicles/31/track?from=-1h").await["count"], 1, "but it is history");
}

async fn shutdown_writes_the_batch_in_hand_and_commits(backend: Backend) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(backend);
    let group = unique("tracker");
    // A flush window far longer than the test: only the shutdown can write this batch.
    let slow = ["--flush-interval=1h", "--batch-size=100000"];
    let mut first = TestTracker::spawn_in_group(&broker, &topics, &db, &group, &slow).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let positions = drive(40, 16, 1_000, 53.55, 10.0);
    produce_positions(&producer, &topics.positions, &positions[..15]).await;
    first.wait_metric("fleetstream_tracker_positions_consumed_total", 15.0).await;
    assert_eq!(first.store.position_count().await.expect("counting the stored positions"), 0, "still in the batch");

    first.shutdown().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(first.store.position_count().await.expect("counting the stored positions"), 15, "written on shutdown");
    assert_eq!(first.metric("fleetstream_tracker_commits_total", None), 1.0);

    // Same group: it resumes after the committed batch. One new position (same vehicle, so the
    // same partition, after the others) is all it reads.
    let second = TestTracker::spawn_in_group(&broker, &topics, &db, &group, &[]).await;
    produce_positions(&producer, &topics.positions, &positions[15..]).await;
    second.wait_metric("fleetstream_tracker_positions_written_total", 1.0).await;
    assert_eq!(second.metric("fleetstream_tracker_positions_consumed_total", None), 1.0, "nothing read twice");
    assert_eq!(second.metric("fleetstream_tracker_duplicates_skipped_total", None), 0.0);
    assert_eq!(seqs(&second.get_ok("/api/vehicles/40/track?from=-1h").await), (1..=16).collect::<Vec<_>>());
}

async fn migrations_are_versioned_and_applied_once(backend: Backend) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(backend);
    let mut first = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let applied = first.store.migrations().await.unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<(i64, &str)> = applied.iter().map(|(v, name)| (*v, name.as_str())).collect();
    assert_eq!(
        names,
        vec![(1, "positions and vehicles_latest"), (2, "events and trips"), (3, "boot in positions and vehicles_latest"), (4, "decommissioned vehicles")]
    );
    first.shutdown().await.unwrap_or_else(|e| panic!("{e:#}"));
    // A restart on the same database finds them applied and keeps the data.
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    produce_positions(&producer, &topics.positions, &drive(50, 3, 1_000, 1.0, 1.0)).await;
    let second = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    second.wait_metric("fleetstream_tracker_positions_written_total", 3.0).await;
    assert_eq!(second.store.migrations().await.expect("listing the applied migrations"), applied);
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// PostgreSQL stops mid-stream: the tracker reports not ready, keeps the batch, commits
/// nothing, and stores everything once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_and_repeats_nothing() {
    let (broker, topics) = broker_and_topics(2).await;
    let mut db = Db::new(Backend::Postgres);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--retry-max=500ms"]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let positions = drive(60, 20, 1_000, 59.3, 18.0);
    produce_positions(&producer, &topics.positions, &positions[..10]).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 10.0).await;

    db.pg.as_mut().expect("a PostgreSQL database").stop();
    produce_positions(&producer, &topics.positions, &positions[10..]).await;
    tracker.wait_metric("fleetstream_tracker_db_errors_total", 1.0).await;
    let (status, _) = tracker.get("/readyz").await;
    assert_eq!(status, 503, "not ready while the database is down");
    let (status, body) = tracker.get("/api/vehicles").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("database_unavailable")));

    db.pg.as_mut().expect("a PostgreSQL database").restart().unwrap_or_else(|e| panic!("{e:#}"));
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 20.0).await;
    assert_eq!(seqs(&tracker.get_ok("/api/vehicles/60/track?from=-1h").await), (1..=20).collect::<Vec<_>>());
    assert_eq!(tracker.get_ok("/api/vehicles/60").await["seq"], 20);
    let ready = eventually(Duration::from_secs(30), || async { tracker.get("/readyz").await.0 == 200 }).await;
    assert!(ready, "ready again");
}
