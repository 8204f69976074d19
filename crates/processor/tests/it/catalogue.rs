//! The catalogue: every rule's reason code, with its DLQ headers, amid valid positions that all
//! arrive; duplicates dropped; late positions kept without moving the latest one back.

use std::time::Duration;

use fleetstream_core::dlq;
use fleetstream_core::now_ms;
use fleetstream_core::publish::headers::{SRC_OFFSET as HEADER_SRC_OFFSET, SRC_PARTITION as HEADER_SRC_PARTITION};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_input_lands_in_the_dlq_with_its_reason() {
    let (broker, topics) = broker_and_topics(3).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let now = now_ms();
    let bad: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
        (Some("100"), b"garbage, not json".to_vec(), "malformed_json"),
        (Some("100"), vec![0xff, 0xfe, 0x00], "malformed_json"),
        (Some("100"), Vec::new(), "empty_frame"),
        (Some("100"), b"[1,2]".to_vec(), "wrong_shape"),
        (Some("100"), br#""a string""#.to_vec(), "wrong_shape"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":1,"ts":{now},"lon":13.4}}"#).into_bytes(), "missing_field"),
        (Some("100"), format!(r#"{{"obu_id":100,"ts":{now},"lat":52.5,"lon":13.4}}"#).into_bytes(), "missing_field"),
        (Some("100"), br#"{"obu_id":100,"seq":1,"lat":52.5,"lon":13.4}"#.to_vec(), "missing_field"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":1,"ts":{now},"lat":"52.5","lon":13.4}}"#).into_bytes(), "wrong_type"),
        (Some("100"), format!(r#"{{"obu_id":-100,"seq":1,"ts":{now},"lat":52.5,"lon":13.4}}"#).into_bytes(), "out_of_range"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":1.5,"ts":{now},"lat":52.5,"lon":13.4}}"#).into_bytes(), "out_of_range"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":1,"ts":{now},"lat":NaN,"lon":13.4}}"#).into_bytes(), "non_finite_number"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":1,"ts":{now},"lat":52.5,"lon":1e999}}"#).into_bytes(), "non_finite_number"),
        (Some("100"), raw(100, 1, now, 91.0, 13.4).into_bytes(), "lat_out_of_range"),
        (Some("100"), raw(100, 2, now, -90.5, 13.4).into_bytes(), "lat_out_of_range"),
        (Some("100"), raw(100, 3, now, 52.5, 181.0).into_bytes(), "lon_out_of_range"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":4,"ts":{now},"lat":52.5,"lon":13.4,"speed":-5}}"#).into_bytes(), "speed_out_of_range"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":5,"ts":{now},"lat":52.5,"lon":13.4,"speed":500}}"#).into_bytes(), "speed_out_of_range"),
        (Some("100"), format!(r#"{{"obu_id":100,"seq":6,"ts":{now},"lat":52.5,"lon":13.4,"heading":400}}"#).into_bytes(), "heading_out_of_range"),
        (Some("100"), raw(100, 7, now, 0.0, 0.0).into_bytes(), "null_island"),
        (Some("100"), raw(100, 8, now + 3_600_000, 52.5, 13.4).into_bytes(), "future_timestamp"),
        (Some("100"), raw(100, 9, now - 30 * 86_400_000, 52.5, 13.4).into_bytes(), "stale_timestamp"),
        (Some("999"), raw(100, 10, now, 52.5, 13.4).into_bytes(), "key_mismatch"),
        (None, raw(100, 11, now, 52.5, 13.4).into_bytes(), "key_mismatch"),
    ];
    // Vehicle 1: 30 valid positions, one bad record after each of the first 24.
    // Vehicle 2: a valid fix in Berlin, then one in Munich a second later (teleport).
    // Vehicle 3: every other seq from 200, so that each skip leaves a gap; after more gaps than
    // the state keeps, seq 100 is too far behind to judge (seq_too_old), while seq 201, in a
    // gap still remembered, is a late position.
    // Vehicle 4: seq 10, then the late seq 8 (valid, out of order), then seq 10 again (duplicate).
    // Vehicle 1 also resends seq 5 (duplicate).
    let mut expected_bad: Vec<(Vec<u8>, &str)> = Vec::new();
    for seq in 1..=30u64 {
        let ts = now - 60_000 + seq as i64 * 1000;
        let lat = 52.5 + seq as f64 * 0.0001;
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("1"), raw(1, seq, ts, lat, 13.4).as_bytes(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
        if let Some((key, payload, reason)) = bad.get(seq as usize - 1) {
            fleetstream_testkit::produce_with(&producer, &topics.raw, *key, payload, &[]).await.unwrap_or_else(|e| panic!("{e}"));
            expected_bad.push((payload.clone(), reason));
        }
        if seq == 10 {
            let dup = raw(1, 5, now - 60_000 + 5000, 52.5 + 5.0 * 0.0001, 13.4);
            fleetstream_testkit::produce_with(&producer, &topics.raw, Some("1"), dup.as_bytes(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let extra: Vec<(&str, String, Option<&str>)> = vec![
        ("2", raw(2, 1, now - 2000, 52.52, 13.40), None),
        ("2", raw(2, 2, now - 1000, 48.14, 11.58), Some("teleport")),
        ("3", raw(3, 100, now - 1000, 52.52, 13.40), Some("seq_too_old")),
        ("4", raw(4, 10, now - 1000, 52.52, 13.40), None),
        ("4", raw(4, 8, now - 3000, 52.52, 13.40), None),
        ("4", raw(4, 10, now - 1000, 52.52, 13.40), None),
    ];
    let gappy = fleetstream_processor::state::MAX_GAPS as u64 + 3;
    let vehicle_3: Vec<u64> = [200, 202, 201].into_iter().chain((2..gappy).map(|i| 200 + 2 * i)).collect();
    for seq in &vehicle_3 {
        let position = raw(3, *seq, now - 300_000 + *seq as i64 * 1000, 52.52, 13.40);
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("3"), position.as_bytes(), &[]).await.expect("produced");
    }
    for (key, payload, reason) in &extra {
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some(key), payload.as_bytes(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
        if let Some(r) = reason {
            expected_bad.push((payload.clone().into_bytes(), r));
        }
    }
    assert!(expected_bad.len() >= 20 + 2);

    let mut processor = spawn(&broker, &topics, "catalogue").await;
    let expected_valid = 33 + vehicle_3.len();
    let positions = broker.read(&topics.positions, expected_valid, SETTLE, Duration::from_secs(60)).expect("positions are readable");
    let dead = broker.read(&topics.dlq, expected_bad.len(), SETTLE, Duration::from_secs(60)).expect("the topic is readable");

    // Valid positions: all of them, once, in order; the late one is marked.
    let by_obu = seqs_by_obu(&positions);
    assert_eq!(by_obu.get(&1), Some(&(1..=30).collect::<Vec<_>>()), "vehicle 1 complete, in order, duplicate dropped");
    assert_eq!(by_obu.get(&2), Some(&vec![1]));
    assert_eq!(by_obu.get(&3), Some(&vehicle_3), "vehicle 3: the late 201 is valid, after 200 and 202");
    assert_eq!(by_obu.get(&4), Some(&vec![10, 8]));
    assert_eq!(positions.len(), expected_valid);
    let late = positions.iter().find(|r| r.json()["obu_id"] == 4 && r.json()["seq"] == 8).map(|r| r.json());
    assert_eq!(late.as_ref().map(|v| v["out_of_order"].clone()), Some(serde_json::json!(true)));
    let second = positions.iter().find(|r| r.json()["obu_id"] == 1 && r.json()["seq"] == 2).map(|r| r.json()).expect("vehicle 1's seq 2 is in positions");
    assert!((second["distance_m"].as_f64().expect("distance_m") - 11.1).abs() < 0.5, "enriched distance: {second}");
    assert_eq!(second["speed_computed"], true);
    assert!(second["processed_at"].as_i64().expect("processed_at") >= now);
    let first = &positions[0];
    assert!(first.header(HEADER_SRC_PARTITION).is_some() && first.header(HEADER_SRC_OFFSET).is_some());

    // Invalid records: each once, as sent, with the Kafka Connect style headers.
    assert_eq!(dead.len(), expected_bad.len(), "one DLQ record per invalid input");
    for (payload, reason) in &expected_bad {
        let r = dead
            .iter()
            .find(|r| &r.payload == payload)
            .unwrap_or_else(|| panic!("{reason}: {:?} not in the DLQ", String::from_utf8_lossy(payload)));
        assert_eq!(r.header(dlq::REASON), Some(*reason), "{:?}", String::from_utf8_lossy(payload));
        assert_eq!(r.header(dlq::STAGE), Some("processor"));
        assert_eq!(r.header(dlq::TOPIC), Some(topics.raw.as_str()));
        assert_eq!(r.header(dlq::GROUP), Some("catalogue"));
        assert_eq!(r.header(dlq::ATTEMPTS), Some("1"));
        assert!(r.header(dlq::PARTITION).and_then(|v| v.parse::<i32>().ok()).is_some());
        assert!(r.header(dlq::OFFSET).and_then(|v| v.parse::<i64>().ok()).is_some());
        assert!(r.header(dlq::TIMESTAMP).and_then(|v| v.parse::<i64>().ok()).is_some());
        assert!(r.header(dlq::FAILED_AT).and_then(|v| v.parse::<i64>().ok()).is_some_and(|t| t >= now));
        assert!(r.header(dlq::MESSAGE).is_some_and(|m| m.len() > 10));
    }
    let teleport = dead.iter().find(|r| r.header(dlq::REASON) == Some("teleport")).and_then(|r| r.header(dlq::MESSAGE).map(str::to_string));
    assert!(teleport.is_some_and(|m| m.contains("km/h")));

    // vehicle-latest: the latest valid position of every vehicle; a late seq never moves it.
    let latest = latest_by_key(&broker.read(&topics.latest, 4, SETTLE, Duration::from_secs(30)).expect("the topic is readable"));
    assert_eq!(latest.len(), 4);
    assert_eq!(latest.get("1").map(|v| v["seq"].clone()), Some(serde_json::json!(30)));
    assert_eq!(latest.get("2").map(|v| v["seq"].clone()), Some(serde_json::json!(1)));
    assert_eq!(latest.get("3").map(|v| v["seq"].clone()), vehicle_3.iter().max().map(|s| serde_json::json!(s)));
    assert_eq!(latest.get("4").map(|v| v["seq"].clone()), Some(serde_json::json!(10)));

    assert_eq!(processor.metric("fleetstream_processor_duplicates_total", None), 2.0);
    assert_eq!(processor.metric("fleetstream_processor_positions_valid_total", None), expected_valid as f64);
    assert_eq!(processor.metric("fleetstream_processor_positions_invalid_total", Some(("reason", "malformed_json"))), 2.0);
    assert_eq!(processor.metric("fleetstream_processor_positions_invalid_total", None), expected_bad.len() as f64);
    assert_eq!(processor.metric("fleetstream_processor_out_of_order_total", None), 2.0, "vehicle 4's seq 8 and vehicle 3's seq 201");
    processor.shutdown().await.unwrap_or_else(|e| panic!("{e:#}"));
}
