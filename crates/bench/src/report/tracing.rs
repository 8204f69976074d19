//! The report section on what OpenTelemetry tracing costs the receiver: its acked ingest with
//! tracing off, on with every position unsampled (`--trace-sample-ratio 0`) and on at the
//! default ratio, and what each left in `gpscoords` and at the collector (results["tracing"],
//! from `stage_tracing` in scripts/ops/bench.py).

use std::fmt::Write as _;

use serde_json::Value;

use super::{median, status};

/// Markdown for this section; empty when the results have none.
pub fn section(results: &Value) -> String {
    let t = &results["tracing"];
    let Some(variants) = t["variants"].as_array().filter(|a| !a.is_empty()) else {
        return String::new();
    };
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write(t, variants, &mut md);
    md
}

/// One way of running the receiver and its runs, in round order.
struct Variant<'a> {
    name: &'a str,
    runs: &'a [Value],
}

impl Variant<'_> {
    fn of(v: &Value) -> Variant<'_> {
        Variant { name: v["name"].as_str().unwrap_or("?"), runs: v["runs"].as_array().map(Vec::as_slice).unwrap_or_default() }
    }

    fn column(&self, key: &str) -> Vec<f64> {
        self.runs.iter().map(|r| r[key].as_f64().unwrap_or(f64::NAN)).collect()
    }

    fn per_s(&self) -> Vec<f64> {
        self.column("per_s")
    }

    /// Receiver CPU-seconds per 1,000 acked positions, per run.
    fn cpu_per_1k(&self) -> Vec<f64> {
        self.runs.iter().map(|r| 1000.0 * f(r, "cpu_s") / f(r, "acked").max(1.0)).collect()
    }

    fn total(&self, key: &str) -> f64 {
        self.column(key).iter().filter(|x| x.is_finite()).sum()
    }
}

fn f(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or(f64::NAN)
}

fn med(xs: &[f64]) -> f64 {
    median(&Value::from(xs.to_vec()))
}

fn list(xs: &[f64], decimals: usize) -> String {
    xs.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(" / ")
}

/// How a variant's runs compare with the off runs of the same rounds.
#[derive(Debug, PartialEq)]
pub struct Comparison {
    /// Median of the variant ÷ median of the off runs.
    pub ratio: f64,
    /// Each round's variant run ÷ that round's off run.
    pub paired: Vec<f64>,
    /// The off runs' range (max - min) as a share of their median.
    pub off_spread: f64,
    /// The variant's median lies within the off runs' range: the difference is not
    /// distinguishable from run-to-run noise.
    pub within_noise: bool,
}

pub fn compare(off: &[f64], other: &[f64]) -> Comparison {
    let (lo, hi) = off.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let (m_off, m) = (med(off), med(other));
    Comparison {
        ratio: m / m_off,
        paired: off.iter().zip(other).map(|(o, x)| x / o).collect(),
        off_spread: (hi - lo) / m_off,
        within_noise: (lo..=hi).contains(&m),
    }
}

/// "+1.2%" for a ratio of 1.012.
fn pct(ratio: f64) -> String {
    format!("{:+.1}%", 100.0 * (ratio - 1.0))
}

/// One sentence on a measure: the ratio, the paired ratios, the off runs' spread and whether
/// the difference stands out of it.
fn verdict(what: &str, c: &Comparison) -> String {
    let judged = if c.within_noise {
        format!("within the spread of the off runs: not measurable at this noise (a difference smaller than {:.1}% would not show)", 100.0 * c.off_spread)
    } else {
        format!("outside the spread of the off runs: a measurable difference of {}", pct(c.ratio))
    };
    let above = c.paired.iter().filter(|r| **r > 1.0).count();
    format!(
        "{what} {:.3}× off ({}; per round {}, above off in {above} of {} rounds), the off runs spreading over {:.1}% of their median: {judged}",
        c.ratio,
        pct(c.ratio),
        list(&c.paired, 3),
        c.paired.len(),
        100.0 * c.off_spread
    )
}

/// The counts that `n` draws with probability `p` give within 4 standard deviations.
pub fn binomial_bounds(n: f64, p: f64) -> (f64, f64) {
    let sd = (n * p * (1.0 - p)).sqrt();
    ((n * p - 4.0 * sd).max(0.0), n * p + 4.0 * sd)
}

fn write(t: &Value, variants: &[Value], md: &mut String) -> std::fmt::Result {
    let vs: Vec<Variant> = variants.iter().map(Variant::of).collect();
    let (off, others) = (&vs[0], &vs[1..]);
    writeln!(md, "## Tracing cost (receiver ingest)\n")?;
    writeln!(
        md,
        "Issue 16: unsampled positions carry no header and cost nothing measurable. The receiver's acked ingest, measured as in the targets table (the simulator's load mode: {} positions of 1,000 vehicles over 8 connections, frames of 50, up to 5,000 unacknowledged; a new receiver and `gpscoords` topic per run), three ways: tracing **off** (no `--otlp-endpoint`); tracing **on with `--trace-sample-ratio 0`**, every position unsampled (the receiver still makes its sampling decision per position: this is the cost the issue asks about); and tracing on at the default ratio **0.01**, for information. Each of {} rounds runs all three, in an order that rotates from round to round, so that drift of the shared machine (the broker's JIT, other work) falls on each alike. With tracing on, the receiver exports OTLP/HTTP to a real OpenTelemetry Collector (`scripts/go-tools otelcol`: OTLP in, file exporter out) on the same machine, running through all the runs. Receiver CPU is its user+system time over the load (/proc/PID/stat), per 1,000 acked positions. Afterwards `trace-count` reads each run's `gpscoords` whole and counts the records with a `traceparent` header, and counts the spans the collector wrote.\n",
        t["count"],
        t["rounds"]
    )?;
    if let Some(note) = t["note"].as_str() {
        writeln!(md, "{note}\n")?;
    }
    writeln!(md, "| tracing | positions/s (median) | runs | ÷ off | receiver CPU-s per 1,000 positions (median) | runs | ÷ off | ack p99 ms (median) | records with `traceparent` | spans at the collector |\n|---|---|---|---|---|---|---|---|---|---|")?;
    for v in &vs {
        let (tp, cpu) = (compare(&off.per_s(), &v.per_s()), compare(&off.cpu_per_1k(), &v.cpu_per_1k()));
        let total = v.total("records");
        writeln!(
            md,
            "| {} | **{:.0}** | {} | {:.3} | **{:.4}** | {} | {:.3} | {:.1} | {:.0} of {:.0} | {:.0} |",
            v.name,
            med(&v.per_s()),
            list(&v.per_s(), 0),
            tp.ratio,
            med(&v.cpu_per_1k()),
            list(&v.cpu_per_1k(), 4),
            cpu.ratio,
            med(&v.column("p99")),
            v.total("traceparent"),
            total,
            v.total("spans")
        )?;
    }
    writeln!(md)?;
    for (i, v) in others.iter().enumerate() {
        let (tp, cpu) = (compare(&off.per_s(), &v.per_s()), compare(&off.cpu_per_1k(), &v.cpu_per_1k()));
        let lead = if i == 0 { format!("**Unsampled positions ({} vs off):**", v.name) } else { format!("**{} vs off:**", v.name) };
        writeln!(md, "{lead} {}; {}.\n", verdict("throughput", &tp), verdict("receiver CPU per position", &cpu))?;
    }

    writeln!(md, "| check | result | status |\n|---|---|---|")?;
    for v in &vs {
        let (records, headers, spans) = (v.total("records"), v.total("traceparent"), v.total("spans"));
        let ratio = variants.iter().find(|x| x["name"].as_str() == Some(v.name)).and_then(|x| x["ratio"].as_f64());
        match ratio {
            None => writeln!(md, "| {}: records in `gpscoords` with a `traceparent` header | {headers:.0} of {records:.0} | {} |", v.name, status(headers == 0.0))?,
            Some(0.0) => {
                writeln!(md, "| {}: records in `gpscoords` with a `traceparent` header | {headers:.0} of {records:.0} | {} |", v.name, status(headers == 0.0))?;
                writeln!(md, "| {}: spans the collector received | {spans:.0} | {} |", v.name, status(spans == 0.0))?;
            }
            Some(p) => {
                let (lo, hi) = binomial_bounds(records, p);
                writeln!(
                    md,
                    "| {}: positions traced (records in `gpscoords` with a `traceparent` header) | {headers:.0} of {records:.0} = {:.3}% (expected {:.0}%: {lo:.0} to {hi:.0} within 4 standard deviations) | {} |",
                    v.name,
                    100.0 * headers / records.max(1.0),
                    100.0 * p,
                    status((lo..=hi).contains(&headers))
                )?;
                let named = v.total("headers_with_span");
                writeln!(
                    md,
                    "| {}: every header names a span the collector received | {named:.0} of {headers:.0} ({spans:.0} spans received) | {} |",
                    v.name,
                    status(named == headers && headers > 0.0)
                )?;
                let collector = v.total("collector_cpu_s");
                if collector.is_finite() && records > 0.0 {
                    writeln!(md, "| {}: the collector's CPU (information) | {:.4} CPU-s per 1,000 positions | — |", v.name, 1000.0 * collector / records)?;
                }
            }
        }
    }
    super::commands(md, "Commands (the first round; $WORK is the bench's directory, ports are free ones):", &t["commands"])?;
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(per_s: f64, cpu_s: f64, traceparent: u64, spans: u64) -> Value {
        json!({"per_s": per_s, "cpu_s": cpu_s, "acked": 200000, "records": 200000, "p99": 500.0, "traceparent": traceparent,
               "spans": spans, "headers_with_span": spans, "collector_cpu_s": 0.1})
    }

    #[test]
    fn within_the_off_runs_spread_is_not_measurable() {
        let c = compare(&[100.0, 110.0, 90.0], &[95.0, 105.0, 101.0]);
        assert!(c.within_noise);
        assert!((c.ratio - 1.01).abs() < 1e-9 && (c.off_spread - 0.2).abs() < 1e-9);
        assert_eq!(c.paired.len(), 3);
        let c = compare(&[100.0, 101.0, 99.0], &[90.0, 91.0, 89.0]);
        assert!(!c.within_noise);
        assert!(verdict("throughput", &c).contains("a measurable difference of -10.0%"), "{}", verdict("throughput", &c));
    }

    #[test]
    fn the_section_has_the_figures_and_checks() {
        let r = json!({"tracing": {"count": 200000, "rounds": 3, "commands": ["target/release/receiver --otlp-endpoint x &"], "variants": [
            {"name": "off", "ratio": null, "runs": [run(100000.0, 2.0, 0, 0), run(110000.0, 2.2, 0, 0), run(90000.0, 1.8, 0, 0)]},
            {"name": "ratio 0", "ratio": 0.0, "runs": [run(99000.0, 2.0, 0, 0), run(101000.0, 2.1, 0, 0), run(100000.0, 2.0, 0, 0)]},
            {"name": "ratio 0.01", "ratio": 0.01, "runs": [run(95000.0, 2.1, 2000, 2000), run(96000.0, 2.2, 1990, 1990), run(97000.0, 2.3, 2010, 2010)]}]}});
        let md = section(&r);
        assert!(md.contains("| off | **100000** | 100000 / 110000 / 90000 | 1.000 | **0.0100** |"), "{md}");
        assert!(md.contains("| ratio 0 | **100000** | 99000 / 101000 / 100000 | 1.000 | **0.0100** |"), "{md}");
        assert!(md.contains("**Unsampled positions (ratio 0 vs off):** throughput 1.000× off (+0.0%; per round 0.990 / 0.918 / 1.111, above off in 1 of 3 rounds), the off runs spreading over 20.0% of their median: within the spread of the off runs: not measurable at this noise (a difference smaller than 20.0% would not show)"), "{md}");
        assert!(md.contains("| ratio 0: spans the collector received | 0 | met |"), "{md}");
        assert!(md.contains("| ratio 0.01: positions traced (records in `gpscoords` with a `traceparent` header) | 6000 of 600000 = 1.000% (expected 1%: 5692 to 6308 within 4 standard deviations) | met |"), "{md}");
        assert!(md.contains("| ratio 0.01: every header names a span the collector received | 6000 of 6000 (6000 spans received) | met |"), "{md}");
        assert!(md.contains("target/release/receiver --otlp-endpoint x &"));
        assert_eq!(section(&json!({})), "");
    }

    #[test]
    fn a_header_at_ratio_zero_is_missed() {
        let r = json!({"tracing": {"count": 1, "rounds": 1, "variants": [
            {"name": "off", "ratio": null, "runs": [run(1.0, 1.0, 0, 0)]},
            {"name": "ratio 0", "ratio": 0.0, "runs": [run(1.0, 1.0, 3, 3)]}]}});
        let md = section(&r);
        assert!(md.contains("| ratio 0: records in `gpscoords` with a `traceparent` header | 3 of 200000 | **missed** |"), "{md}");
        assert!(md.contains("| ratio 0: spans the collector received | 3 | **missed** |"), "{md}");
    }
}
