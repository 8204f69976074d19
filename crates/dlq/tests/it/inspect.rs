//! count, list and show: exact numbers through the library, and what the binary prints.

use std::collections::BTreeMap;

use fleetstream_dlq::{count, select, GroupBy, ReadError, Reader};
use fleetstream_testkit::Broker;

use crate::helpers::{dlq, filter, reader, setup};

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_by_reason_stage_and_vehicle_are_exact() {
    let (broker, topics) = setup().await;
    let r = reader(&broker);
    let by_reason = count(&r, &topics.dlq, &filter(&[]), GroupBy::Reason).await.unwrap();
    assert_eq!(by_reason, map(&[("seq_too_old", 2), ("lat_out_of_range", 1), ("malformed_json", 1), ("teleport", 1)]));
    let by_vehicle = count(&r, &topics.dlq, &filter(&[]), GroupBy::Vehicle).await.unwrap();
    assert_eq!(by_vehicle, map(&[("17", 2), ("18", 1), ("19", 1), ("-", 1)]));
    let by_stage = count(&r, &topics.dlq, &filter(&[]), GroupBy::Stage).await.unwrap();
    assert_eq!(by_stage, map(&[("processor", 4), ("receiver", 1)]));
    let recent = count(&r, &topics.dlq, &filter(&["--stage", "processor", "--from", "-30m"]), GroupBy::Reason).await.unwrap();
    assert_eq!(recent, map(&[("seq_too_old", 1), ("lat_out_of_range", 1), ("teleport", 1)]));

    let out = dlq(&broker, &topics, &["count"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["REASON", "COUNT"], "{}", out.stdout);
    assert_eq!(lines[1], ["seq_too_old", "2"], "most frequent first:\n{}", out.stdout);
    assert!(lines.contains(&vec!["teleport", "1"]) && lines.contains(&vec!["total", "5"]), "{}", out.stdout);

    let out = dlq(&broker, &topics, &["count", "--by", "vehicle", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(v["total"], 5);
    assert_eq!(v["counts"][0], serde_json::json!({"vehicle": "17", "count": 2}), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_by_reason_vehicle_and_time() {
    let (broker, topics) = setup().await;
    let r = reader(&broker);
    let seqs = |records: &[fleetstream_dlq::DeadLetterRecord]| {
        let mut v: Vec<(Option<u64>, Option<u64>)> = records.iter().map(|r| (r.obu_id, r.seq)).collect();
        v.sort();
        v
    };
    let too_old = select(&r, &topics.dlq, &filter(&["--reason", "seq_too_old"]), None).await.unwrap();
    assert_eq!(seqs(&too_old), [(Some(17), Some(1)), (Some(17), Some(2))]);
    let two = select(&r, &topics.dlq, &filter(&["--reason", "teleport,lat_out_of_range"]), None).await.unwrap();
    assert_eq!(seqs(&two), [(Some(18), Some(5)), (Some(19), Some(7))]);
    let v17 = select(&r, &topics.dlq, &filter(&["--vehicle", "17", "--from", "-1h"]), None).await.unwrap();
    assert_eq!(seqs(&v17), [(Some(17), Some(2))], "the one 2 h ago is before --from");
    let old = select(&r, &topics.dlq, &filter(&["--to", "-1h"]), None).await.unwrap();
    assert_eq!(seqs(&old), [(Some(17), Some(1))]);
    let receiver = select(&r, &topics.dlq, &filter(&["--stage", "receiver"]), None).await.unwrap();
    assert_eq!(seqs(&receiver), [(None, None)]);
    assert_eq!(select(&r, &topics.dlq, &filter(&[]), Some(2)).await.unwrap().len(), 2);

    let out = dlq(&broker, &topics, &["list", "--vehicle", "17"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for l in &lines {
        assert!(l.contains(" processor seq_too_old obu=17 seq="), "{l}");
        assert!(l.contains("test rejection") && l.contains(r#"{"obu_id":17,"seq":"#), "{l}");
    }
    let out = dlq(&broker, &topics, &["list", "--stage", "receiver"]);
    assert!(out.stdout.contains(r#"malformed_json obu=- seq=- "test rejection 3 (malformed_json)" {"obu_id":\xff oops"#), "{}", out.stdout);
    let out = dlq(&broker, &topics, &["list", "--from", "-30m", "--json"]);
    let rows: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(rows.len(), 4, "{}", out.stdout);
    assert!(rows.iter().all(|r| r["reason"].is_string() && r["offset"].is_i64()), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_every_header_and_the_value() {
    let (broker, topics) = setup().await;
    let all = select(&reader(&broker), &topics.dlq, &filter(&[]), None).await.unwrap();
    let at = |reason: &str| all.iter().find(|r| r.reason.as_deref() == Some(reason)).map(|r| format!("{}:{}", r.record.partition, r.record.offset)).unwrap();

    let out = dlq(&broker, &topics, &["show", &at("teleport")]);
    assert!(out.ok, "{}", out.stderr);
    for line in [
        format!("__connect.errors.topic: {}", topics.raw),
        "__connect.errors.stage: processor".into(),
        "__connect.errors.reason: teleport".into(),
        "__connect.errors.exception.message: test rejection 4 (teleport)".into(),
        "__connect.errors.connector.name: fleetstream-processor".into(),
        "__connect.errors.offset: 1004".into(),
        "fleetstream.obu_id: 19".into(),
        "fleetstream.seq: 7".into(),
        "key        19".into(),
    ] {
        assert!(out.stdout.contains(&line), "no `{line}` in\n{}", out.stdout);
    }
    assert!(out.stdout.contains("text)\n{\"obu_id\":19,\"seq\":7,"), "{}", out.stdout);

    let out = dlq(&broker, &topics, &["show", &at("malformed_json")]);
    assert!(out.stdout.contains("__connect.errors.peer: 10.0.0.9:51234"), "{}", out.stdout);
    assert!(out.stdout.contains("hex: not UTF-8)\n7b226f62755f6964223aff206f6f7073"), "{}", out.stdout);

    let out = dlq(&broker, &topics, &["show", "0:999"]);
    assert!(!out.ok && out.stderr.contains("no record at") && out.stderr.contains("offset 999"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_a_missing_topic_and_an_unreachable_broker_are_clear_errors() {
    let (broker, topics) = setup().await;
    let out = dlq(&broker, &topics, &["count", "--reason", "too_old"]);
    assert!(!out.ok && out.stderr.contains("unknown reason `too_old`") && out.stderr.contains("valid reasons: empty_frame, ") && out.stderr.contains("seq_too_old"), "{}", out.stderr);
    let out = dlq(&broker, &topics, &["list", "--from", "last tuesday"]);
    assert!(!out.ok && out.stderr.contains("RFC 3339"), "{}", out.stderr);

    let missing = fleetstream_testkit::unique("no-such-topic");
    let r = reader(&broker);
    let err = count(&r, &missing, &filter(&[]), GroupBy::Reason).await.unwrap_err();
    assert!(matches!(err, ReadError::TopicMissing(_)), "{err}");
    let out = dlq(&broker, &fleetstream_testkit::Topics { dlq: missing.clone(), ..topics.clone() }, &["count"]);
    assert!(!out.ok && out.stderr.contains(&format!("topic `{missing}` does not exist")), "{}", out.stderr);

    let nowhere = Broker::at(format!("127.0.0.1:{}", fleetstream_testkit::free_port()));
    let started = std::time::Instant::now();
    let out = dlq(&nowhere, &topics, &["--timeout", "2s", "list"]);
    assert!(!out.ok && out.stderr.contains("cannot reach Kafka at"), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "bounded: {:?}", started.elapsed());
    let _: &Reader = &r;
}
