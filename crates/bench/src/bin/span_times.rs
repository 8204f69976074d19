//! Where a position's time goes, from the spans of a bench stage run with tracing on: joins each
//! trace's receiver span (`receive position`) and processor span (`process position`) and splits
//! receipt -> committed into the steps their events mark.
//!
//! Prints one JSON object: `traces` (complete ones), `incomplete`, `slow_ms`, `slow` (traces
//! slower than it) and `segments`, each with p50/p90/p99/max in ms and the mean over the slow
//! traces.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;

use fleetstream_bench::otlp::{read_spans, Span};

#[derive(Debug, Parser)]
struct Args {
    /// The collector's file exporter output (OTLP/JSON lines).
    #[arg(long)]
    spans: PathBuf,
    /// Only traces whose receiver span starts at or after this Unix time (ms): the measured run,
    /// not its warm-up.
    #[arg(long, default_value_t = 0.0)]
    since_ms: f64,
    /// A trace slower than this (receipt -> committed) counts as slow.
    #[arg(long, default_value_t = 100.0)]
    slow_ms: f64,
}

/// The steps, in order: (name, from, to), each an event of the receiver's span (`r:`) or the
/// processor's (`p:`); `start` is the receiver span's start.
const SEGMENTS: [(&str, &str, &str); 5] = [
    ("received -> handed to Kafka (receiver)", "r:start", "r:handed to Kafka"),
    ("handed -> acknowledged by Kafka (gpscoords, acks=all)", "r:handed to Kafka", "r:acknowledged by Kafka"),
    ("acknowledged -> judged in a processor batch (fetch, batch in flight, collect, validate)", "r:acknowledged by Kafka", "p:judged"),
    ("judged -> batch outputs acknowledged (transactional produce)", "p:judged", "p:written"),
    ("written -> transaction committed", "p:written", "p:committed"),
];
const TOTAL: &str = "received -> committed (visible to read_committed readers)";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.spans).with_context(|| format!("cannot read {}", args.spans.display()))?;
    let spans = read_spans(&text)?;
    let (rows, incomplete) = steps(&spans, args.since_ms);
    println!("{}", summary(&rows, incomplete, args.slow_ms));
    Ok(())
}

/// Per complete trace, the duration of each of SEGMENTS and then the total; and how many traces
/// were left out for a missing span or event.
fn steps(spans: &[Span], since_ms: f64) -> (Vec<Vec<f64>>, usize) {
    let mut by_trace: HashMap<&str, (Option<&Span>, Option<&Span>)> = HashMap::new();
    for s in spans {
        let entry = by_trace.entry(s.trace_id.as_str()).or_default();
        match s.name.as_str() {
            "receive position" => entry.0 = Some(s),
            "process position" => entry.1 = Some(s),
            _ => {}
        }
    }
    let mut rows = Vec::new();
    let mut incomplete = 0;
    for (r, p) in by_trace.values() {
        let Some(r) = r.filter(|r| r.start_ms >= since_ms) else { continue };
        let at = |point: &str| match point.split_once(':') {
            Some(("r", "start")) => Some(r.start_ms),
            Some(("r", event)) => r.event(event),
            Some(("p", event)) => p.and_then(|p| p.event(event)),
            _ => None,
        };
        let row: Option<Vec<f64>> = SEGMENTS.iter().map(|(_, from, to)| Some(at(to)? - at(from)?)).collect();
        match (row, at("p:committed")) {
            (Some(mut row), Some(committed)) => {
                row.push(committed - r.start_ms);
                rows.push(row);
            }
            _ => incomplete += 1,
        }
    }
    (rows, incomplete)
}

fn summary(rows: &[Vec<f64>], incomplete: usize, slow_ms: f64) -> serde_json::Value {
    let total = SEGMENTS.len();
    let slow: Vec<&Vec<f64>> = rows.iter().filter(|r| r[total] > slow_ms).collect();
    let names = SEGMENTS.iter().map(|(name, _, _)| *name).chain([TOTAL]);
    let segments: Vec<_> = names
        .enumerate()
        .map(|(i, name)| {
            let mut xs: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            xs.sort_by(f64::total_cmp);
            let slow_mean = if slow.is_empty() { f64::NAN } else { slow.iter().map(|r| r[i]).sum::<f64>() / slow.len() as f64 };
            json!({"name": name, "p50": rank(&xs, 0.50), "p90": rank(&xs, 0.90), "p99": rank(&xs, 0.99),
                   "max": xs.last().copied().unwrap_or(f64::NAN), "slow_mean": slow_mean})
        })
        .collect();
    json!({"traces": rows.len(), "incomplete": incomplete, "slow_ms": slow_ms, "slow": slow.len(), "segments": segments})
}

/// The nearest-rank quantile `q` of sorted `xs` (NaN when empty).
fn rank(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let i = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, name: &str, start: f64, events: &[(&str, f64)]) -> Span {
        Span {
            trace_id: trace.into(),
            span_id: format!("{trace}-{name}"),
            name: name.into(),
            start_ms: start,
            end_ms: start,
            events: events.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn splits_each_trace_into_its_steps() {
        let spans = vec![
            span("a", "receive position", 1000.0, &[("handed to Kafka", 1000.5), ("acknowledged by Kafka", 1007.0), ("answered", 1007.2)]),
            span("a", "process position", 1010.0, &[("judged", 1015.0), ("written", 1032.0), ("committed", 1034.0)]),
            span("a", "store position", 1040.0, &[]),
            // No processor span (dead-lettered before it was traced, or dropped): left out.
            span("b", "receive position", 1001.0, &[("handed to Kafka", 1001.1), ("acknowledged by Kafka", 1009.0)]),
            // Before --since-ms: the warm-up.
            span("c", "receive position", 10.0, &[("handed to Kafka", 11.0), ("acknowledged by Kafka", 12.0)]),
            span("c", "process position", 20.0, &[("judged", 21.0), ("written", 22.0), ("committed", 23.0)]),
        ];
        let (rows, incomplete) = steps(&spans, 500.0);
        assert_eq!(incomplete, 1);
        assert_eq!(rows, vec![vec![0.5, 6.5, 8.0, 17.0, 2.0, 34.0]]);
        let s = summary(&rows, incomplete, 30.0);
        assert_eq!(s["traces"], 1);
        assert_eq!(s["slow"], 1);
        assert_eq!(s["segments"][3]["p99"], 17.0);
        assert_eq!(s["segments"][5]["name"], TOTAL);
        assert_eq!(s["segments"][5]["slow_mean"], 34.0);
    }

    #[test]
    fn nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(rank(&xs, 0.5), 50.0);
        assert_eq!(rank(&xs, 0.99), 99.0);
        assert_eq!(rank(&xs, 1.0), 100.0);
        assert!(rank(&[], 0.5).is_nan());
    }
}
