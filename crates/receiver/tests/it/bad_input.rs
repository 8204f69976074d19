//! Every class of bad input: the exact error frame, the metric, and the DLQ record.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use fleetstream_core::dlq;
use fleetstream_core::frames::ServerFrame;
use fleetstream_core::reason::Reason;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_reason_a_metric_and_a_dlq_record() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--max-positions-per-frame=3"])).await;
    let mut ws = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    let ts = fleetstream_core::now_ms();
    // (frame, reason, obu_id and seq the error frame must name, message fragment)
    type Case<'a> = (String, Reason, Option<(u64, u64)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("hello receiver".into(), Reason::MalformedJson, None, "not valid JSON"),
        ("42".into(), Reason::WrongShape, None, "position object"),
        (format!(r#"{{"obu_id":1,"seq":1,"ts":{ts},"lat":52.5}}"#), Reason::MissingField, Some((1, 1)), "`lon`"),
        (format!(r#"{{"obu_id":1,"seq":2,"ts":{ts},"lat":"52.5","lon":13.4}}"#), Reason::WrongType, Some((1, 2)), "`lat` must be a number"),
        (format!(r#"{{"obu_id":-1,"seq":3,"ts":{ts},"lat":52.5,"lon":13.4}}"#), Reason::OutOfRange, None, "`obu_id`"),
        (format!(r#"{{"obu_id":1,"seq":4,"ts":{ts},"lat":NaN,"lon":13.4}}"#), Reason::NonFiniteNumber, None, "NaN"),
        ("".into(), Reason::EmptyFrame, None, "empty"),
        (
            format!("[{},{},{},{}]", position(1, 5), position(1, 6), position(1, 7), position(1, 8)),
            Reason::TooManyPositions,
            None,
            "at most 3",
        ),
    ];
    for (frame, reason, id, fragment) in &cases {
        send(&mut ws, frame).await;
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(ServerFrame::Error(e)) => {
                assert_eq!(e.reason, *reason, "frame {frame:?}: {e:?}");
                assert!(!e.retryable);
                assert!(e.message.contains(fragment), "message {:?} lacks {fragment:?}", e.message);
                assert!(e.message.contains("kept in the dead-letter topic"), "{:?}", e.message);
                assert_eq!(e.obu_id.zip(e.seq), *id, "{frame:?}");
            }
            other => panic!("frame {frame:?}: expected an error, got {other:?}"),
        }
    }
    // A binary frame.
    ws.send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into())).await.unwrap_or_else(|e| panic!("{e}"));
    match next_frame(&mut ws, Duration::from_secs(10)).await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.reason, Reason::BinaryFrame),
        other => panic!("{other:?}"),
    }
    // An array with one bad element: the good ones are acked, the bad one refused, in order.
    let mixed = format!(r#"[{},{{"obu_id":1,"seq":10}},{}]"#, position(1, 9), position(1, 11));
    send(&mut ws, &mixed).await;
    let answers: Vec<_> = [0, 1, 2].iter().map(|_| ()).collect();
    let mut got = Vec::new();
    for _ in answers {
        got.push(next_frame(&mut ws, Duration::from_secs(10)).await);
    }
    assert_eq!(got[0], Some(ServerFrame::Ack { obu_id: 1, seq: 9 }));
    match &got[1] {
        Some(ServerFrame::Error(e)) => {
            assert_eq!((e.reason, e.index, e.obu_id, e.seq), (Reason::MissingField, Some(1), Some(1), Some(10)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[2], Some(ServerFrame::Ack { obu_id: 1, seq: 11 }));

    // The connection is still open and useful.
    send(&mut ws, &position(1, 12)).await;
    assert_eq!(next_frame(&mut ws, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 12 }));

    for (_, reason, _, _) in &cases {
        // One each, and the array element with a missing field.
        let expected = if *reason == Reason::MissingField { 2.0 } else { 1.0 };
        assert_eq!(receiver.metric("fleetstream_receiver_positions_refused_total", Some(("reason", reason.as_str()))), expected, "{reason}");
    }
    assert_eq!(receiver.metric("fleetstream_receiver_positions_refused_total", Some(("reason", "binary_frame"))), 1.0);
    assert_eq!(receiver.metric("fleetstream_receiver_frames_total", Some(("type", "binary"))), 1.0);

    // Everything refused is kept, as sent, with headers saying why and where from.
    let expected = cases.len() + 2;
    let records = broker.read(&topics.dlq, expected, Duration::from_millis(500), Duration::from_secs(20)).expect("the topic is readable");
    assert_eq!(records.len(), expected);
    for (frame, reason, _, _) in &cases {
        let r = records
            .iter()
            .find(|r| r.header(dlq::REASON) == Some(reason.as_str()))
            .unwrap_or_else(|| panic!("no DLQ record for {reason}"));
        assert_eq!(&r.text(), frame, "original bytes for {reason}");
        assert_eq!(r.header(dlq::STAGE), Some("receiver"));
        assert_eq!(r.header(dlq::TOPIC), Some(topics.raw.as_str()));
        assert!(r.header(dlq::PEER).is_some_and(|p| p.starts_with("127.0.0.1:")));
        assert!(r.header(dlq::CONNECTION).is_some());
        assert!(r.header(dlq::MESSAGE).is_some_and(|m| !m.is_empty()));
        assert!(r.header(dlq::FAILED_AT).and_then(|v| v.parse::<i64>().ok()).is_some());
    }
    let binary = records.iter().find(|r| r.header(dlq::REASON) == Some("binary_frame")).unwrap_or_else(|| panic!("binary"));
    assert_eq!(binary.payload, vec![0xde, 0xad, 0xbe, 0xef]);
    let element = records.iter().find(|r| r.header(dlq::REASON) == Some("missing_field") && r.header(dlq::SEQ) == Some("10"));
    assert_eq!(element.map(|r| r.text()), Some(r#"{"obu_id":1,"seq":10}"#.to_string()), "an array element keeps its own bytes");
    assert_eq!(element.and_then(|r| r.key.clone()), Some("1".to_string()));
    assert_eq!(receiver.metric("fleetstream_receiver_dlq_records_total", None), expected as f64);
}
