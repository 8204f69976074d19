//! redrive: a dry run writes nothing, a redrive writes exactly the selected records once, and a
//! processor turns redriven valid positions into one position each.

use std::time::Duration;

use fleetstream_dlq::{plan_redrive, REDRIVEN_FROM};

use crate::helpers::{dlq, filter, reader, setup, spawn_processor};

const SETTLE: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn redrive_writes_the_selected_records_once_and_a_dry_run_writes_nothing() {
    let (broker, topics) = setup().await;

    let out = dlq(&broker, &topics, &["redrive", "--reason", "seq_too_old", "--dry-run"]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("would redrive ")).count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("selected 2, would redrive 2, skipped 0 already redriven"), "{}", out.stdout);
    assert!(broker.read(&topics.raw, 0, SETTLE, WAIT).unwrap().is_empty(), "a dry run writes nothing");

    let out = dlq(&broker, &topics, &["redrive", "--reason", "seq_too_old"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("selected 2, redriven 2, skipped 0 already redriven"), "{}", out.stdout);
    let raw = broker.read(&topics.raw, 2, SETTLE, WAIT).unwrap();
    assert_eq!(raw.len(), 2, "exactly the selected records");
    let selected = fleetstream_dlq::select(&reader(&broker), &topics.dlq, &filter(&["--reason", "seq_too_old"]), None).await.unwrap();
    for s in &selected {
        let from = format!("{}/{}/{}", topics.dlq, s.record.partition, s.record.offset);
        let copy = raw.iter().find(|r| r.header(REDRIVEN_FROM) == Some(from.as_str())).unwrap_or_else(|| panic!("no copy of {from}"));
        assert_eq!(copy.payload, s.record.value, "the original bytes");
        assert_eq!(copy.key.as_deref(), Some("17"), "the original key");
    }

    let out = dlq(&broker, &topics, &["redrive", "--reason", "seq_too_old"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("selected 2, redriven 0, skipped 2 already redriven"), "{}", out.stdout);
    assert_eq!(broker.read(&topics.raw, 2, SETTLE, WAIT).unwrap().len(), 2, "nothing more written");

    // Only records of the last `--scan-raw` count as redriven: with a window before the
    // redrive, they would be written again (the processor drops such copies as duplicates).
    let plan = plan_redrive(&reader(&broker), &topics.dlq, &topics.raw, &filter(&["--reason", "seq_too_old"]), Duration::from_millis(1)).await.unwrap();
    assert_eq!((plan.selected, plan.skipped), (2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn redriven_valid_positions_are_processed_once() {
    let (broker, topics) = setup().await;
    let mut processor = spawn_processor(&broker, &topics).await;

    // The processor's dead letters: three valid positions and one with lat 95.
    let out = dlq(&broker, &topics, &["redrive", "--stage", "processor"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("selected 4, redriven 4, skipped 0"), "{}", out.stdout);
    let positions = broker.read(&topics.positions, 3, SETTLE, WAIT).unwrap();
    let mut seen: Vec<(u64, u64)> = positions.iter().map(|r| (r.json()["obu_id"].as_u64().unwrap(), r.json()["seq"].as_u64().unwrap())).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(17, 1), (17, 2), (19, 7)]);

    // lat 95 is refused again: a new dead letter pointing at the redriven copy.
    let rejected = broker.read(&topics.dlq, 6, SETTLE, WAIT).unwrap();
    assert_eq!(rejected.len(), 6, "the fixture's five and the copy refused again");

    let out = dlq(&broker, &topics, &["redrive", "--stage", "processor"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("selected 5, redriven 0, skipped 5 already redriven (of which 1 rejected again after a redrive)"),
        "{}",
        out.stdout
    );

    // Even a copy written again (here: bypassing the skip with a tiny scan window) is dropped
    // as a duplicate by the processor: positions keep one of each.
    let out = dlq(&broker, &topics, &["redrive", "--reason", "seq_too_old", "--scan-raw", "1ms"]);
    assert!(out.stdout.contains("redriven 2"), "{}", out.stdout);
    let positions = broker.read(&topics.positions, 3, Duration::from_secs(3), WAIT).unwrap();
    assert_eq!(positions.len(), 3, "each redriven position once: {:?}", positions.iter().map(|r| r.text()).collect::<Vec<_>>());
    processor.shutdown().await.unwrap();
}
