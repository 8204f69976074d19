//! Spans as an OpenTelemetry Collector's file exporter writes them (OTLP/JSON, one export
//! request per line): what `trace-count` and `span-times` read after a bench stage.

use anyhow::Context as _;
use serde_json::Value;

/// One span: its ids, name, start and end, and its events, times in Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    pub start_ms: f64,
    pub end_ms: f64,
    pub events: Vec<(String, f64)>,
}

impl Span {
    /// When the event `name` happened, if it did.
    pub fn event(&self, name: &str) -> Option<f64> {
        self.events.iter().find(|(n, _)| n == name).map(|(_, at)| *at)
    }
}

/// Every span of the exporter's complete lines; a last line without its newline is still being
/// written and is left out.
pub fn read_spans(text: &str) -> anyhow::Result<Vec<Span>> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut out = Vec::new();
    for (n, line) in complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).with_context(|| format!("line {} of the spans file is not JSON", n + 1))?;
        for resource in each(&request["resourceSpans"]) {
            for scope in each(&resource["scopeSpans"]) {
                out.extend(each(&scope["spans"]).iter().map(span));
            }
        }
    }
    Ok(out)
}

fn each(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn span(s: &Value) -> Span {
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
    Span {
        trace_id: text("traceId"),
        span_id: text("spanId"),
        name: text("name"),
        start_ms: unix_ms(&s["startTimeUnixNano"]),
        end_ms: unix_ms(&s["endTimeUnixNano"]),
        events: each(&s["events"]).iter().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), unix_ms(&e["timeUnixNano"]))).collect(),
    }
}

/// OTLP/JSON writes 64-bit nanoseconds as strings (numbers are accepted too). Through whole
/// microseconds: nanoseconds since 1970 are past the integers an f64 holds exactly.
fn unix_ms(v: &Value) -> f64 {
    let nanos = v.as_str().and_then(|s| s.parse::<u64>().ok()).or_else(|| v.as_u64()).unwrap_or(0);
    (nanos / 1_000) as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_spans_of_complete_lines() {
        let line = r#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"receive position","startTimeUnixNano":"1763900000001000000","endTimeUnixNano":"1763900000009500000","events":[{"timeUnixNano":"1763900000002000000","name":"handed to Kafka"}]},{"spanId":"eee19b7ec3c1b175","name":"receive position"}]}]}]}"#;
        let found = read_spans(&format!("{line}\n\n{line}\n{{\"resourceSpans\":[")).expect("parses");
        assert_eq!(found.len(), 4);
        assert_eq!(found[0].trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(found[1].span_id, "eee19b7ec3c1b175");
        assert_eq!(found[0].end_ms - found[0].start_ms, 8.5);
        assert_eq!(found[0].event("handed to Kafka"), Some(1_763_900_000_002.0));
        assert_eq!(found[0].event("answered"), None);
        assert!(read_spans("").expect("empty").is_empty());
    }
}
