//! Acked means stored: through normal operation, a broker outage and a shutdown under load.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use fleetstream_core::frames::ServerFrame;
use fleetstream_core::reason::Reason;
use fleetstream_core::publish::headers::{FORMAT as HEADER_FORMAT, RECEIVED_AT as HEADER_RECEIVED_AT};
use fleetstream_receiver::close_code;
use fleetstream_testkit::{Dedicated, Record};

use crate::helpers::*;

/// (obu_id, seq) of every gpscoords record, per OBU in offset order.
fn by_obu(records: &[Record]) -> BTreeMap<u64, Vec<u64>> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in sorted {
        let v = r.json();
        let obu = v["obu_id"].as_u64().expect("a record with an obu_id");
        assert_eq!(r.key.as_deref(), Some(obu.to_string().as_str()), "key is the obu_id");
        out.entry(obu).or_default().push(v["seq"].as_u64().expect("a record with a seq"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_position_is_in_kafka_in_order() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &[])).await;
    // Three connections, two OBUs each, 100 positions per OBU: singles and arrays mixed.
    let mut tasks = Vec::new();
    for c in 0..3u64 {
        let url = receiver.url();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url, None).await.unwrap_or_else(|e| panic!("{e}"));
            let obus = [c * 2 + 1, c * 2 + 2];
            let mut sent = Vec::new();
            for seq in 1..=100u64 {
                if seq % 10 == 0 {
                    let frame = format!("[{},{}]", position(obus[0], seq), position(obus[1], seq));
                    send(&mut ws, &frame).await;
                } else {
                    send(&mut ws, &position(obus[0], seq)).await;
                    send(&mut ws, &position(obus[1], seq)).await;
                }
                sent.push((obus[0], seq));
                sent.push((obus[1], seq));
            }
            let mut acks = Vec::new();
            while acks.len() < sent.len() {
                match next_frame(&mut ws, Duration::from_secs(20)).await {
                    Some(ServerFrame::Ack { obu_id, seq }) => acks.push((obu_id, seq)),
                    other => panic!("expected an ack, got {other:?}"),
                }
            }
            assert_eq!(acks, sent, "acks come back in the order positions were sent");
            acks
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(acked.len(), 600);
    let records = broker.read(&topics.raw, 600, Duration::from_millis(500), Duration::from_secs(30)).expect("the topic is readable");
    assert_eq!(records.len(), 600, "exactly the acked positions, no more");
    for (obu, seqs) in by_obu(&records) {
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "obu {obu} in order");
    }
    let r = &records[0];
    assert!(r.header(HEADER_RECEIVED_AT).and_then(|v| v.parse::<i64>().ok()).is_some(), "received_at header");
    assert_eq!(receiver.metric("fleetstream_receiver_positions_acked_total", None), 600.0);
    assert_eq!(receiver.metric("fleetstream_receiver_positions_received_total", None), 600.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_positions_are_completed_and_acked() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &[])).await;
    let mut ws = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    send(&mut ws, r#"{"obuid":77,"lat":40.4168,"lon":-3.7038}"#).await;
    send(&mut ws, r#"{"obuid":77,"lat":40.4169,"lon":-3.7039}"#).await;
    let mut seqs = Vec::new();
    for _ in 0..2 {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(ServerFrame::Ack { obu_id: 77, seq }) => seqs.push(seq),
            other => panic!("{other:?}"),
        }
    }
    assert!(seqs[1] > seqs[0], "receiver-assigned seqs rise: {seqs:?}");
    let records = broker.read(&topics.raw, 2, Duration::from_millis(300), Duration::from_secs(10)).expect("the topic is readable");
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.header(HEADER_FORMAT), Some("legacy"));
        let v = r.json();
        assert_eq!(v["obu_id"], 77);
        assert!(v["ts"].as_i64().expect("a ts") > 1_700_000_000_000, "ts filled with receive time");
        assert!(seqs.contains(&v["seq"].as_u64().expect("a seq")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_no_acked_position() {
    let mut broker = Dedicated::start(1).unwrap_or_else(|e| panic!("{e:#}"));
    let topics = broker.topics(2).await.unwrap_or_else(|e| panic!("{e:#}"));
    let receiver = spawn(config(&broker, &topics, &["--kafka-delivery-timeout=4s", "--max-in-flight-per-connection=50"])).await;
    let ws = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stream).await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let f: ServerFrame = serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{e}"));
                let _ = frames_tx.send(f);
            }
        }
    });
    use futures_util::SinkExt as _;
    for seq in 1..=50u64 {
        sink.send(tokio_tungstenite::tungstenite::Message::Text(position(5, seq).into())).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut answers: Vec<ServerFrame> = Vec::new();
    while answers.len() < 50 {
        answers.push(tokio::time::timeout(Duration::from_secs(10), frames_rx.recv()).await.ok().flatten().unwrap_or_else(|| panic!("no answer")));
    }
    broker.kill(1).unwrap_or_else(|e| panic!("{e:#}"));
    // /readyz turns false while Kafka is unreachable.
    let mut saw_unready = false;
    for _ in 0..60 {
        if http_get(&receiver.http("/readyz")).await.map(|(s, _)| s == 503).unwrap_or(false) {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_unready, "/readyz never reported Kafka down");
    assert_eq!(receiver.metric("fleetstream_receiver_kafka_up", None), 0.0);
    // Positions sent while the broker is down: acked after it returns, or a retryable error.
    for seq in 51..=120u64 {
        sink.send(tokio_tungstenite::tungstenite::Message::Text(position(5, seq).into())).await.unwrap_or_else(|e| panic!("{e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Back-pressure: at most the per-connection bound is in flight; the rest waits in the socket.
    assert!(receiver.metric("fleetstream_receiver_in_flight", None) <= 50.0);
    broker.restart(1).unwrap_or_else(|e| panic!("{e:#}"));
    while answers.len() < 120 {
        answers.push(tokio::time::timeout(Duration::from_secs(30), frames_rx.recv()).await.ok().flatten().unwrap_or_else(|| panic!("no answer for {}", answers.len() + 1)));
    }
    let mut acked = HashSet::new();
    for a in &answers {
        match a {
            ServerFrame::Ack { obu_id: 5, seq } => {
                acked.insert(*seq);
            }
            ServerFrame::Error(e) => {
                assert_eq!(e.reason, Reason::KafkaUnavailable, "{e:?}");
                assert!(e.retryable);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((1..=50).all(|s| acked.contains(&s)), "the first 50 were acked before the outage");
    let mut ready = false;
    for _ in 0..100 {
        if http_get(&receiver.http("/readyz")).await.map(|(s, _)| s == 200).unwrap_or(false) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz back to ready once Kafka returned");
    let records = broker.read(&topics.raw, acked.len(), Duration::from_secs(1), Duration::from_secs(30)).expect("the topic is readable");
    let stored: HashSet<u64> = records.iter().filter_map(|r| r.json()["seq"].as_u64()).collect();
    let lost: Vec<_> = acked.iter().filter(|s| !stored.contains(s)).collect();
    assert!(lost.is_empty(), "acked but not in Kafka: {lost:?}");
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_acks_or_refuses_everything() {
    let (broker, topics) = broker_and_topics().await;
    let mut receiver = spawn(config(&broker, &topics, &[])).await;
    let mut ws = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    for seq in 1..=300u64 {
        send(&mut ws, &position(9, seq)).await;
    }
    // Shut down once the receiver is demonstrably mid-stream: the first answer is back.
    let first = next_frame(&mut ws, Duration::from_secs(10)).await;
    assert!(matches!(first, Some(ServerFrame::Ack { obu_id: 9, seq: 1 })), "{first:?}");
    let ((mut answers, code), stopped) = tokio::join!(frames_until_close(&mut ws, Duration::from_secs(20)), receiver.shutdown());
    answers.insert(0, first.unwrap_or(ServerFrame::Ack { obu_id: 9, seq: 1 }));
    assert!(stopped.is_ok(), "receiver stopped cleanly: {stopped:?}");
    assert_eq!(code, Some(close_code::GOING_AWAY), "closed with 1001");
    let acked: HashSet<u64> = answers.iter().filter_map(|f| match f { ServerFrame::Ack { seq, .. } => Some(*seq), _ => None }).collect();
    for f in &answers {
        if let ServerFrame::Error(e) = f {
            assert!(e.retryable, "{e:?}");
        }
    }
    let records = broker.read(&topics.raw, acked.len(), Duration::from_millis(500), Duration::from_secs(20)).expect("the topic is readable");
    let stored: HashSet<u64> = records.iter().filter_map(|r| r.json()["seq"].as_u64()).collect();
    assert!(acked.iter().all(|s| stored.contains(s)), "every ack is in Kafka");
    assert!(!acked.is_empty());
}
