//! Devices that restart and devices that were cut off: a restart that counts `seq` from 1 again
//! under a higher `boot`, and a 10-minute backlog resent after newer positions went through,
//! lose nothing and dead-letter nothing, across a processor restart in the middle.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetstream_core::now_ms;

use crate::helpers::*;

fn raw_boot(obu: u64, boot: u64, seq: u64, ts: i64, lat: f64) -> String {
    format!(r#"{{"obu_id":{obu},"boot":{boot},"seq":{seq},"ts":{ts},"lat":{lat},"lon":13.4}}"#)
}

/// `(boot, seq)` of every `positions` record of `obu`, in partition order, and how many were
/// marked out of order.
fn boot_seqs(records: &[fleetstream_testkit::Record], obu: u64) -> (Vec<(u64, u64)>, usize) {
    let mut sorted: Vec<_> = records.iter().filter(|r| r.json()["obu_id"].as_u64() == Some(obu)).collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let late = sorted.iter().filter(|r| r.json()["out_of_order"] == true).count();
    (sorted.iter().map(|r| (r.json()["boot"].as_u64().unwrap_or(0), r.json()["seq"].as_u64().unwrap_or(0))).collect(), late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_restarts_its_seq_under_a_new_boot_loses_nothing() {
    let (broker, topics) = broker_and_topics(2).await;
    let group = fleetstream_testkit::unique("boots");
    let producer = broker.producer().expect("a producer");
    let t0 = now_ms() - 300_000;
    let send = |boot: u64, seq: u64, at: i64| raw_boot(5, boot, seq, t0 + at * 1000, 52.5 + at as f64 * 0.0001);

    // Boot 100: seqs 1..=40 (41 was sent but is delayed on the way).
    let mut sent = Vec::new();
    for seq in 1..=40 {
        sent.push(send(100, seq, seq as i64));
    }
    // The device restarts and counts from 1 again under boot 101.
    for seq in 1..=15 {
        sent.push(send(101, seq, 45 + seq as i64));
    }
    for payload in &sent {
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("5"), payload.as_bytes(), &[]).await.expect("produced");
    }
    let mut first = spawn(&broker, &topics, &group).await;
    let done = broker.read(&topics.positions, 55, SETTLE, Duration::from_secs(60)).expect("readable");
    assert_eq!(done.len(), 55, "boot 101's seqs 1..=15 are new positions, not duplicates of boot 100's");
    assert!(first.shutdown().await.is_ok());

    // A new processor (state from vehicle-latest): boot 101 goes on, boot 100's delayed 41
    // arrives, and resends of both boots come again.
    let mut more = Vec::new();
    for seq in 16..=40 {
        more.push(send(101, seq, 45 + seq as i64));
    }
    more.push(send(100, 41, 41));
    more.push(send(101, 10, 55));
    more.push(send(100, 20, 20));
    for payload in &more {
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("5"), payload.as_bytes(), &[]).await.expect("produced");
    }
    let mut second = spawn(&broker, &topics, &group).await;
    let positions = broker.read(&topics.positions, 81, SETTLE, Duration::from_secs(60)).expect("readable");
    let (got, late) = boot_seqs(&positions, 5);
    let mut expected: Vec<(u64, u64)> = (1..=40).map(|s| (100, s)).chain((1..=40).map(|s| (101, s))).collect();
    expected.push((100, 41));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "every position of both boots once, the resends dropped");
    assert_eq!(late, 1, "boot 100's seq 41, heard after the restart, is a late position");
    let dead = broker.read(&topics.dlq, 0, SETTLE, Duration::from_secs(10)).expect("readable");
    assert!(dead.is_empty(), "nothing dead-lettered: {:?}", dead.iter().map(|r| r.text()).collect::<Vec<_>>());
    let latest = broker.read(&topics.latest, 1, SETTLE, Duration::from_secs(30)).expect("readable");
    let latest = latest_by_key(&latest);
    assert_eq!((latest["5"]["boot"].as_u64(), latest["5"]["seq"].as_u64()), (Some(101), Some(40)), "the latest is the new boot's");
    assert!(second.shutdown().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_minute_backlog_resent_after_newer_positions_is_late_not_dead_lettered() {
    let (broker, topics) = broker_and_topics(2).await;
    let group = fleetstream_testkit::unique("backlog");
    let producer = broker.producer().expect("a producer");
    // One position a second. Live until seq 60, then 10 minutes (seqs 61..=660) held on the
    // device while the link was down; when it comes back it sends the live positions first
    // (661..=720), then the backlog, then (having missed the acks) the backlog again.
    let t0 = now_ms() - 900_000;
    let at = |seq: u64| raw(9, seq, t0 + seq as i64 * 1000, 52.5 + seq as f64 * 0.00005, 13.4);
    let order: Vec<u64> = (1..=60).chain(661..=720).chain(61..=660).chain(61..=660).collect();
    let mut processor = spawn(&broker, &topics, &group).await;
    for (i, seq) in order.iter().enumerate() {
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("9"), at(*seq).as_bytes(), &[]).await.expect("produced");
        // A processor restart half way through the backlog: the gaps survive in vehicle-latest.
        if i == 120 + 300 {
            assert!(processor.shutdown().await.is_ok());
            processor = spawn(&broker, &topics, &group).await;
        }
    }
    let positions = broker.read(&topics.positions, 720, SETTLE, Duration::from_secs(120)).expect("readable");
    let (got, late) = boot_seqs(&positions, 9);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, seq) in &got {
        *counts.entry(*seq).or_default() += 1;
    }
    assert_eq!(counts.len(), 720, "every seq 1..=720 in positions");
    assert!(counts.values().all(|n| *n == 1), "each once: {:?}", counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    assert_eq!(late, 600, "the backlog is late (history), not the latest");
    let dead = broker.read(&topics.dlq, 0, SETTLE, Duration::from_secs(10)).expect("readable");
    assert!(dead.is_empty(), "nothing dead-lettered for being old: {:?}", dead.first().map(|r| r.text()));
    assert!(processor.shutdown().await.is_ok());
}
