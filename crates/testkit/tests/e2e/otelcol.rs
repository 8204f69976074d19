//! The tracing tests' OTLP receiver is a real OpenTelemetry Collector: a trace posted to it as
//! OTLP/JSON comes back from `Collector::spans` whole (ids, parent link, service, attributes,
//! events, status), a malformed request is refused with a 400 and stores nothing, and dropping
//! the collector stops it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetstream_testkit::otelcol::{Collector, Span, SpanEvent};
use serde_json::{json, Value};

/// A 5 ms span of OTLP/JSON (ids hex, times as strings of nanoseconds, enums as integers).
fn span(trace: &str, id: &str, parent: &str, name: &str, start: u64) -> Value {
    json!({
        "traceId": trace, "spanId": id, "parentSpanId": parent, "name": name, "kind": 2,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 5_000_000).to_string(),
    })
}

/// An `ExportTraceServiceRequest` with one resource (service) per span.
fn request(spans: &[(&str, Value)]) -> Value {
    let resources: Vec<Value> = spans
        .iter()
        .map(|(service, span)| {
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "fleetstream-testkit"}, "spans": [span]}],
            })
        })
        .collect();
    json!({ "resourceSpans": resources })
}

async fn post(client: &reqwest::Client, collector: &Collector, body: String) -> (u16, String) {
    let answer = client
        .post(format!("{}/v1/traces", collector.endpoint()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the collector answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_collector_receives_otlp_json_and_gives_back_the_spans() {
    let collector = tokio::task::spawn_blocking(Collector::start).await.expect("no panic").unwrap_or_else(|e| panic!("{e:#}"));
    let endpoint = collector.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let client = reqwest::Client::builder().no_proxy().build().expect("a client");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as u64;
    let trace = format!("{:016x}{:016x}", now, u64::from(std::process::id()) << 16 | 0x7e57);
    let (root_id, child_id) = ("00f067aa0ba902b7", "b7ad6b7169203331");
    let mut root = span(&trace, root_id, "", "receiver.position", now);
    root["attributes"] = json!([
        {"key": "obu.id", "value": {"intValue": "77"}},
        {"key": "messaging.destination.name", "value": {"stringValue": "gpscoords"}},
        {"key": "position.valid", "value": {"boolValue": true}},
        {"key": "position.lat", "value": {"doubleValue": 52.5}},
    ]);
    root["events"] = json!([{"timeUnixNano": (now + 1_000_000).to_string(), "name": "acked"}]);
    let mut child = span(&trace, child_id, root_id, "processor.position", now + 2_000_000);
    child["status"] = json!({"code": 2, "message": "rejected"});
    let body = request(&[("fleetstream-receiver", root), ("fleetstream-processor", child)]);
    let (status, answer) = post(&client, &collector, body.to_string()).await;
    assert_eq!(status, 200, "the trace is accepted: {answer}");

    let ours = |spans: &[Span]| spans.iter().filter(|s| s.trace_id == trace).count() == 2;
    let spans = collector.wait_for(ours, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let root = spans.iter().find(|s| s.span_id == root_id).expect("the root span");
    let child = spans.iter().find(|s| s.span_id == child_id).expect("the child span");
    assert_eq!((root.name.as_str(), root.service.as_str(), root.parent_span_id.as_str()), ("receiver.position", "fleetstream-receiver", ""));
    assert_eq!((child.name.as_str(), child.service.as_str(), child.parent_span_id.as_str()), ("processor.position", "fleetstream-processor", root_id));
    assert_eq!((root.start_ns, root.end_ns), (now, now + 5_000_000));
    assert_eq!(child.start_ns, now + 2_000_000);
    let attributes: Vec<(&str, &str)> = root.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        attributes,
        [("messaging.destination.name", "gpscoords"), ("obu.id", "77"), ("position.lat", "52.5"), ("position.valid", "true")]
    );
    assert_eq!(root.events, [SpanEvent { name: "acked".into(), time_ns: now + 1_000_000 }]);
    assert!(child.attributes.is_empty() && child.events.is_empty());
    assert!(!root.status_error && child.status_error);

    // Malformed: not JSON, and JSON with a trace id of the wrong length. Both refused, and
    // nothing of them is written: a valid request sent after them is the only span added.
    for bad in ["{\"resourceSpans\": [".to_string(), request(&[("x", span("abc", root_id, "", "bad", now))]).to_string()] {
        let (status, answer) = post(&client, &collector, bad.clone()).await;
        assert_eq!(status, 400, "{bad} is refused: {answer}");
    }
    let marker = request(&[("marker", span(&trace, "0000000000000001", root_id, "marker", now))]);
    assert_eq!(post(&client, &collector, marker.to_string()).await.0, 200);
    let spans = collector.wait_for(|s| s.iter().any(|s| s.name == "marker"), Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e:#}"));
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["receiver.position", "processor.position", "marker"]);

    // Dropped: the process is gone (its port closed).
    let port = endpoint.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("a port");
    drop(collector);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the collector stopped with its handle");
}
