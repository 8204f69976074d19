//! The report section on where a position's time goes, step by step, from the spans of a run
//! with tracing on (results["spans"], from `spans_section` in scripts/ops/bench.py and the
//! `span-times` tool).

use std::fmt::Write as _;

use serde_json::Value;

use super::commands;

/// Markdown for this section; empty when the results have none.
pub fn section(results: &Value) -> String {
    let s = &results["spans"];
    let Some(rates) = s["rates"].as_array().filter(|a| !a.is_empty()) else {
        return String::new();
    };
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write(s, rates, &mut md);
    md
}

fn write(s: &Value, rates: &[Value], md: &mut String) -> std::fmt::Result {
    writeln!(md, "\n## Where a position's time goes (spans)\n")?;
    writeln!(
        md,
        "The end-to-end load of the latency section again, with OpenTelemetry tracing on: the receiver samples a share of the positions and the processor follows its decision; `span-times` joins each sampled position's receiver span and processor span and splits receipt -> committed into the steps their events mark (milliseconds; one clock, one machine). The last column is the mean of each step over the positions slower than the threshold: where the slow ones lose their time. Tracing itself costs little at these ratios (see the tracing section), but these are not the latency section's runs."
    )?;
    for r in rates {
        let rate = r["rate"].as_f64().unwrap_or(f64::NAN);
        writeln!(
            md,
            "\n**{rate:.0} positions/s** for {} s, {:.1}% sampled: {} complete traces ({} without a processor span: dead-lettered before it or still in flight), {} slower than {:.0} ms.\n",
            r["seconds"],
            100.0 * r["ratio"].as_f64().unwrap_or(f64::NAN),
            r["traces"],
            r["incomplete"],
            r["slow"],
            r["slow_ms"].as_f64().unwrap_or(f64::NAN)
        )?;
        writeln!(md, "| step | p50 | p90 | p99 | max | mean of the slow |\n|---|---|---|---|---|---|")?;
        for seg in r["segments"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let ms = |k: &str| seg[k].as_f64().filter(|x| x.is_finite()).map_or("–".to_string(), |x| format!("{x:.1}"));
            writeln!(md, "| {} | {} | {} | {} | {} | {} |", seg["name"].as_str().unwrap_or("?"), ms("p50"), ms("p90"), ms("p99"), ms("max"), ms("slow_mean"))?;
        }
    }
    if let Some(note) = s["note"].as_str() {
        writeln!(md, "\n{note}")?;
    }
    commands(md, "Commands:", &s["commands"])?;
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_per_rate() {
        let r = json!({"spans": {"date": "2026-11-23", "commands": ["target/release/span-times --spans x"], "rates": [
            {"rate": 1000, "ratio": 0.25, "seconds": 20, "traces": 4500, "incomplete": 12, "slow": 38, "slow_ms": 100.0,
             "segments": [{"name": "judged -> batch outputs acknowledged (transactional produce)", "p50": 17.06, "p90": 27.6, "p99": 50.0, "max": 68.4, "slow_mean": 48.8}]}]}});
        let md = section(&r);
        assert!(md.contains("**1000 positions/s** for 20 s, 25.0% sampled: 4500 complete traces (12 without a processor span"), "{md}");
        assert!(md.contains("| judged -> batch outputs acknowledged (transactional produce) | 17.1 | 27.6 | 50.0 | 68.4 | 48.8 |"), "{md}");
        assert!(md.contains("target/release/span-times --spans x"));
        assert!(section(&json!({})).is_empty());
    }
}
