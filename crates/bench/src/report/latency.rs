//! End to end against Kafka's own latency: each rate's floors (one hop, two hops through a
//! plain copy loop) beside the pipeline, a plot per rate, and the CPU each stage spent.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use super::{median, runs, runs_with, status};

/// End-to-end p99 may be this many times floor 2's p99.
pub const E2E_OVER_FLOOR2: f64 = 1.5;

/// One rate's medians: (p50, p99, max) of floor 1, floor 2 and the pipeline.
struct Rate<'a> {
    rate: f64,
    e2e: &'a Value,
    floor1: &'a Value,
    floor2: &'a Value,
}

impl Rate<'_> {
    fn of(v: &Value) -> [f64; 3] {
        [median(&v["p50"]), median(&v["p99"]), median(&v["max"])]
    }
}

fn rates(results: &Value) -> Vec<Rate<'_>> {
    results["e2e"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| Rate { rate: s["rate"].as_f64().unwrap_or(0.0), e2e: s, floor1: &s["floors"]["1"], floor2: &s["floors"]["2"] })
                .collect()
        })
        .unwrap_or_default()
}

/// The target rows of end-to-end latency, for the results table.
pub fn target_rows(results: &Value) -> anyhow::Result<String> {
    let mut md = String::new();
    for r in rates(results) {
        let (p99, floor) = (median(&r.e2e["p99"]), median(&r.floor2["p99"]));
        let ratio = p99 / floor;
        writeln!(
            md,
            "| end to end at {:.0}k positions/s (device send -> visible to a read_committed reader of `positions`, transactions on) | p99 {p99:.1} ms = **{ratio:.2}×** floor 2's p99 ({floor:.1} ms); p50 {:.1} ms, max {:.1} ms | {} | p99 ≤ {E2E_OVER_FLOOR2}× floor 2 | {} |",
            r.rate / 1000.0,
            median(&r.e2e["p50"]),
            median(&r.e2e["max"]),
            runs_with(&r.e2e["p99"], 0),
            status(ratio <= E2E_OVER_FLOOR2)
        )?;
    }
    Ok(md)
}

/// The floors and the pipeline per rate, with the CPU table.
pub fn section(results: &Value) -> anyhow::Result<String> {
    let mut md = String::new();
    let rates = rates(results);
    if rates.is_empty() {
        return Ok(md);
    }
    writeln!(md, "## End to end against Kafka's own latency\n")?;
    writeln!(md, "Floor 1 is one hop: a raw librdkafka producer with the receiver's settings (idempotent, acks=all, linger 5 ms, lz4) writes positions stamped with their send time, paced at the rate, and the probe (the same read_committed reader that measures the pipeline) reads them. Floor 2 is two hops: the same, but a plain copy loop with the processor's client settings (core's group consumer, fetch wait 100 ms, a producer like the first) copies them to a second topic that the probe reads; no validation, no transaction. The pipeline is the simulator's device -> receiver -> `gpscoords` -> processor (exactly once with Kafka transactions, the default) -> `positions`. All three run on the same broker in the same run (`hop-bench latency`, `latency-probe`).\n")?;
    writeln!(md, "| rate/s | floor 1 p50 / p99 / max ms | floor 2 p50 / p99 / max ms | end to end p50 / p99 / max ms | e2e p99 ÷ floor 2 p99 | floors lost | runs of e2e p99 / floor 2 p99 |\n|---|---|---|---|---|---|---|")?;
    for r in &rates {
        let (f1, f2, e) = (Rate::of(r.floor1), Rate::of(r.floor2), Rate::of(r.e2e));
        let lost: f64 = [r.floor1, r.floor2].iter().map(|f| median(&f["sent"]) - median(&f["arrived"])).sum();
        writeln!(
            md,
            "| {:.0} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2} | {lost:.0} | {} / {} |",
            r.rate, f1[0], f1[1], f1[2], f2[0], f2[1], f2[2], e[0], e[1], e[2], e[1] / f2[1], runs(&r.e2e["p99"]), runs(&r.floor2["p99"])
        )?;
    }
    writeln!(md)?;
    for r in &rates {
        writeln!(md, "![latency at {0:.0}/s](img/bench-latency-{0:.0}.png)\n", r.rate)?;
    }
    writeln!(md, "### CPU per stage\n")?;
    writeln!(md, "CPU-seconds each process used per 1,000 positions while the end-to-end stage ran (from /proc, median run; the simulator and the probe are not counted). The receiver's figure includes TLS-free WebSocket parsing, validation of the frame, and its Kafka producer; the processor's, its consumer, validation, state, events and transactions; the broker's, everything it served to both.\n")?;
    writeln!(md, "| rate/s | receiver | processor | broker | total | floor 2: broker | floor 2: its clients (producer, copy loop, probe) |\n|---|---|---|---|---|---|---|")?;
    for r in &rates {
        let cpu = |v: &Value, k: &str| median(&Value::Array(v["cpu_per_1k"].as_array().map(|a| a.iter().map(|x| x[k].clone()).collect()).unwrap_or_default()));
        let (rec, pro, bro) = (cpu(r.e2e, "receiver"), cpu(r.e2e, "processor"), cpu(r.e2e, "broker"));
        writeln!(md, "| {:.0} | {rec:.3} | {pro:.3} | {bro:.3} | {:.3} | {:.3} | {:.3} |", r.rate, rec + pro + bro, cpu(r.floor2, "broker"), cpu(r.floor2, "clients"))?;
    }
    writeln!(md)?;
    Ok(md)
}

/// One plot per rate: p50, p99 and max of floor 1, floor 2 and the pipeline.
pub fn plots(results: &Value, docs: &Path) -> anyhow::Result<()> {
    for r in rates(results) {
        let path = docs.join(format!("img/bench-latency-{:.0}.png", r.rate));
        let root = BitMapBackend::new(&path, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let series = [("floor 1: one Kafka hop", Rate::of(r.floor1), GREEN), ("floor 2: two hops, copy loop", Rate::of(r.floor2), BLUE), ("fleetstream end to end", Rate::of(r.e2e), RED)];
        let ymax = series.iter().flat_map(|s| s.1).filter(|v| v.is_finite()).fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Latency at {:.0} positions/s: send -> visible to a read_committed reader", r.rate), ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..3).into_segmented(), (0.5f64..ymax).log_scale())?;
        let labels = ["p50", "p99", "max"];
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(3)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).map(|s| s.to_string()).unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc("ms (log)")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (k, (name, values, color)) in series.iter().enumerate() {
            let color = *color;
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let mut bar = Rectangle::new([(SegmentValue::Exact(i as i32), 0.5), (SegmentValue::Exact(i as i32 + 1), v.max(0.5))], color.mix(0.6).filled());
                    // Three bars side by side in each percentile's slot (about 260 px wide).
                    let k = k as u32;
                    bar.set_margin(0, 0, 15 + k * 80, 15 + (2 - k) * 80);
                    bar
                }))?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.mix(0.6).filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).background_style(WHITE.mix(0.8)).label_font(("sans-serif", 14)).draw()?;
        root.present()?;
    }
    Ok(())
}
