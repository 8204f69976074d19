//! One trace per sampled position across receiver, processor and tracker, received by a real
//! OpenTelemetry Collector (built from its published Go modules; testkit::otelcol).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use fleetstream_testkit::otelcol::{Collector, Span};
use fleetstream_testkit::{unique, Broker, Record};

/// Sends `frames` over one WebSocket and returns the answers, one per position.
async fn send(port: u16, frames: &[String]) -> Vec<serde_json::Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await.expect("the receiver accepts");
    for frame in frames {
        ws.send(Message::Text(frame.clone().into())).await.expect("sent");
    }
    let mut answers = Vec::new();
    while answers.len() < frames.len() {
        let answer = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("an answer in time");
        if let Some(Ok(Message::Text(text))) = answer {
            answers.push(serde_json::from_str(&text).expect("a JSON answer"));
        }
    }
    answers
}

/// A position a second after the previous one, a few metres further (or at `lat`).
fn position(obu_id: u64, seq: u64, lat: Option<f64>) -> String {
    let ts = fleetstream_core::now_ms() - 10_000 + seq as i64 * 1000;
    let lat = lat.unwrap_or(52.5 + seq as f64 * 0.0001);
    format!(r#"{{"obu_id":{obu_id},"seq":{seq},"ts":{ts},"lat":{lat},"lon":13.4,"speed":30.0}}"#)
}

/// The W3C traceparent naming `span`.
fn traceparent(span: &Span) -> String {
    format!("00-{}-{}-01", span.trace_id, span.span_id)
}

fn event_names(span: &Span) -> Vec<&str> {
    span.events.iter().map(|e| e.name.as_str()).collect()
}

fn by_key(records: &[Record], obu_id: u64) -> Vec<&Record> {
    records.iter().filter(|r| r.key.as_deref() == Some(obu_id.to_string().as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_position_is_one_trace_through_receiver_processor_and_tracker() {
    let collector = tokio::task::spawn_blocking(Collector::start).await.expect("no panic").unwrap_or_else(|e| panic!("{e:#}"));
    let endpoint = format!("--otlp-endpoint={}", collector.endpoint());
    let broker = Broker::shared();
    let topics = broker.topics(2).await.unwrap_or_else(|e| panic!("{e:#}"));

    // Two receivers: one traces every position, one (tracing on) none of them.
    let (mut sampled, sampled_port, _) = crate::receiver(&broker, &topics, &["--kafka-linger-ms=1", &endpoint, "--trace-sample-ratio=1"]).await;
    let (mut unsampled, unsampled_port, _) = crate::receiver(&broker, &topics, &["--kafka-linger-ms=1", &endpoint, "--trace-sample-ratio=0"]).await;
    let (mut processor, _) = crate::processor(&broker, &topics, &unique("traces"), &["--kafka-linger-ms=1", &endpoint]).await;
    let token = unique("traces-viewer");
    let (mut tracker, _) = crate::tracker(&broker, &topics, &unique("traces-tracker"), &token, "viewer", std::slice::from_ref(&endpoint)).await;

    // Vehicle 71 through the sampling receiver: two valid positions and one the processor
    // dead-letters (latitude 95); vehicle 72 through the other one.
    let answers = send(sampled_port, &[position(71, 1, None), position(71, 2, None), position(71, 3, Some(95.0))]).await;
    assert!(answers.iter().all(|a| a["type"] == "ack"), "all acked: {answers:?}");
    let answers = send(unsampled_port, &[position(72, 1, None), position(72, 2, None)]).await;
    assert!(answers.iter().all(|a| a["type"] == "ack"), "all acked: {answers:?}");

    // Three traces: receiver + processor + tracker for each valid position, receiver +
    // processor for the dead-lettered one.
    let complete = |spans: &[Span]| spans.iter().filter(|s| s.service == "fleetstream-tracker").count() >= 2 && spans.iter().filter(|s| s.service == "fleetstream-processor").count() >= 3;
    let spans = collector.wait_for(complete, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e:#}\ncollector log:\n{}", collector.log()));
    let mut traces: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for span in &spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    assert_eq!(traces.len(), 3, "one trace per sampled position, none for the unsampled ones: {spans:#?}");

    let raw = broker.read(&topics.raw, 5, Duration::from_secs(1), Duration::from_secs(30)).expect("gpscoords readable");
    let positions = broker.read(&topics.positions, 4, Duration::from_secs(1), Duration::from_secs(30)).expect("positions readable");
    let dlq = broker.read(&topics.dlq, 1, Duration::from_secs(1), Duration::from_secs(30)).expect("the DLQ readable");
    assert_eq!((raw.len(), positions.len(), dlq.len()), (5, 4, 1));
    for r in by_key(&raw, 72).into_iter().chain(by_key(&positions, 72)) {
        assert_eq!(r.header("traceparent"), None, "an unsampled position carries no trace header");
    }

    for (trace_id, trace) in &traces {
        let root = trace.iter().find(|s| s.parent_span_id.is_empty()).unwrap_or_else(|| panic!("trace {trace_id} has a root: {trace:#?}"));
        assert_eq!((root.service.as_str(), root.name.as_str()), ("fleetstream-receiver", "receive position"));
        assert_eq!(event_names(root), ["handed to Kafka", "acknowledged by Kafka", "answered"]);
        assert!(!root.status_error);
        let seq: u64 = root.attributes["fleetstream.seq"].parse().expect("a seq");
        assert_eq!(root.attributes["fleetstream.obu_id"], "71");

        // The receiver's record in gpscoords names the receiver's span.
        let raw_record = by_key(&raw, 71).into_iter().find(|r| r.json()["seq"] == seq).expect("the raw record");
        assert_eq!(raw_record.header("traceparent"), Some(traceparent(root).as_str()));

        let processed = trace.iter().find(|s| s.service == "fleetstream-processor").expect("a processor span");
        assert_eq!(processed.name, "process position");
        assert_eq!(processed.parent_span_id, root.span_id, "the processor's span is the receiver's child");
        assert_eq!(event_names(processed), ["judged", "written", "committed"]);
        assert_eq!(processed.attributes["messaging.kafka.offset"], raw_record.offset.to_string());
        assert!(processed.start_ns >= root.start_ns, "the processor starts after the receiver got the position");
        assert!(processed.end_ns >= processed.start_ns);

        let stored = trace.iter().find(|s| s.service == "fleetstream-tracker");
        if seq == 3 {
            assert_eq!(trace.len(), 2, "a dead-lettered position stops at the processor: {trace:#?}");
            assert_eq!(processed.attributes["fleetstream.verdict"], "lat_out_of_range");
            assert_eq!(dlq[0].header("traceparent"), Some(traceparent(processed).as_str()), "the dead letter names the processor's span");
            continue;
        }
        assert_eq!(trace.len(), 3, "receiver, processor, tracker: {trace:#?}");
        assert_eq!(processed.attributes["fleetstream.verdict"], "valid");
        let output = by_key(&positions, 71).into_iter().find(|r| r.json()["seq"] == seq).expect("the position");
        assert_eq!(output.header("traceparent"), Some(traceparent(processed).as_str()), "the output names the processor's span");
        let stored = stored.expect("a tracker span");
        assert_eq!(stored.name, "store position");
        assert_eq!(stored.parent_span_id, processed.span_id, "the tracker's span is the processor's child");
        assert_eq!(event_names(stored), ["stored", "pushed to the live feed"]);
        assert_eq!(stored.attributes["fleetstream.seq"], seq.to_string());
        // The tracker reads only committed records, and the commit follows `written`. (Not
        // `committed`: that is when the processor heard back, which may be after the tracker read.)
        let written = processed.events.iter().find(|e| e.name == "written").expect("written").time_ns;
        assert!(stored.start_ns >= written, "the tracker read it after it was written: {stored:#?} {processed:#?}");
    }

    for service in [&mut sampled, &mut unsampled, &mut processor, &mut tracker] {
        service.shutdown().await.expect("a clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_arrives_untraced_can_start_its_trace_at_the_processor() {
    let collector = tokio::task::spawn_blocking(Collector::start).await.expect("no panic").unwrap_or_else(|e| panic!("{e:#}"));
    let endpoint = format!("--otlp-endpoint={}", collector.endpoint());
    let broker = Broker::shared();
    let topics = broker.topics(2).await.unwrap_or_else(|e| panic!("{e:#}"));

    // The receiver does not trace; the processor samples every position that has no trace.
    let (mut receiver, port, _) = crate::receiver(&broker, &topics, &["--kafka-linger-ms=1"]).await;
    let (mut processor, _) = crate::processor(&broker, &topics, &unique("traces-root"), &["--kafka-linger-ms=1", &endpoint, "--trace-sample-ratio=1"]).await;
    let token = unique("traces-viewer");
    let (mut tracker, _) = crate::tracker(&broker, &topics, &unique("traces-root-tracker"), &token, "viewer", std::slice::from_ref(&endpoint)).await;

    let answers = send(port, &[position(81, 1, None), position(81, 2, None)]).await;
    assert!(answers.iter().all(|a| a["type"] == "ack"), "all acked: {answers:?}");
    let complete = |spans: &[Span]| spans.iter().filter(|s| s.service == "fleetstream-tracker").count() >= 2;
    let spans = collector.wait_for(complete, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e:#}\ncollector log:\n{}", collector.log()));
    assert_eq!(spans.len(), 4, "a processor and a tracker span per position, nothing from the receiver: {spans:#?}");
    let raw = broker.read(&topics.raw, 2, Duration::from_secs(1), Duration::from_secs(30)).expect("gpscoords readable");
    assert!(raw.iter().all(|r| r.header("traceparent").is_none()), "the receiver wrote no trace header");
    let positions = broker.read(&topics.positions, 2, Duration::from_secs(1), Duration::from_secs(30)).expect("positions readable");
    for processed in spans.iter().filter(|s| s.service == "fleetstream-processor") {
        assert!(processed.parent_span_id.is_empty(), "the processor's span is the root: {processed:#?}");
        assert_eq!(event_names(processed), ["judged", "written", "committed"]);
        let stored = spans.iter().find(|s| s.trace_id == processed.trace_id && s.service == "fleetstream-tracker").expect("the tracker's span");
        assert_eq!(stored.parent_span_id, processed.span_id);
        let offset = &processed.attributes["messaging.kafka.offset"];
        let partition = &processed.attributes["messaging.source.partition.id"];
        let output = positions.iter().find(|r| r.header("fleetstream.src.offset") == Some(offset) && r.partition.to_string() == *partition);
        assert_eq!(output.and_then(|r| r.header("traceparent")), Some(traceparent(processed).as_str()));
    }

    for service in [&mut receiver, &mut processor, &mut tracker] {
        service.shutdown().await.expect("a clean stop");
    }
}
