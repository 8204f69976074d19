//! Writes docs/benchmarks.md and its plots from the results scripts/bench collected.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

use fleetstream_bench::report::{self, median, runs};

#[derive(Debug, Parser)]
struct Args {
    /// Results JSON written by scripts/bench.
    #[arg(long)]
    input: PathBuf,
    /// The docs directory (benchmarks.md and img/ go there).
    #[arg(long, default_value = "docs")]
    docs: PathBuf,
    /// A TrueType font for the plots' text.
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&args.input).context("read results")?)?;
    let font = std::fs::read(&args.font).with_context(|| format!("font {} (apt-get install fonts-dejavu-core)", args.font.display()))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font).map_err(|_| anyhow::anyhow!("bad font"))?;
    std::fs::create_dir_all(args.docs.join("img"))?;

    let baseline = median(&r["baseline"]["per_s"]);
    let ingest = median(&r["ingest"]["per_s"]);
    let processor = median(&r["processor"]["per_s"]);
    let e2e: Vec<&Value> = r["e2e"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let sustained = e2e
        .iter()
        .filter(|s| s["sustained"].as_array().is_some_and(|a| a.iter().filter(|b| b.as_bool() == Some(true)).count() * 2 > a.len()))
        .map(|s| s["rate"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let conn = &r["connections"];
    let per_conn = median(&conn["per_conn_kib"]);

    // Throughput per stage.
    let stages = [("raw producer", baseline), ("receiver ingest", ingest), ("processor", processor), ("end to end (sustained)", sustained)];
    {
        let path = args.docs.join("img/bench-throughput.png");
        let root = BitMapBackend::new(&path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = stages.iter().map(|s| s.1).fold(1.0, f64::max) * 1.15;
        let n = stages.len() as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption("Throughput per stage (positions/s, median of runs)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((0..n).into_segmented(), 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(stages.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => stages.get(*i as usize).map(|s| s.0.to_string()).unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(stages.iter().enumerate().map(|(i, (_, v))| {
            let mut bar = Rectangle::new([(SegmentValue::Exact(i as i32), 0.0), (SegmentValue::Exact(i as i32 + 1), *v)], BLUE.mix(0.6).filled());
            bar.set_margin(0, 0, 30, 30);
            bar
        }))?;
        chart.draw_series(stages.iter().enumerate().map(|(i, (_, v))| {
            Text::new(format!("{v:.0}"), (SegmentValue::CenterOf(i as i32), v + top * 0.03), ("sans-serif", 15))
        }))?;
        root.present()?;
    }
    // End-to-end latency percentiles against offered rate.
    {
        let path = args.docs.join("img/bench-latency.png");
        let root = BitMapBackend::new(&path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let points = |key: &str| -> Vec<(f64, f64)> {
            e2e.iter().map(|s| (s["rate"].as_f64().unwrap_or(0.0), median(&s[key]).max(0.1))).collect()
        };
        let (p50, p99, max) = (points("p50"), points("p99"), points("max"));
        let xmax = p50.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
        let ymax = max.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption("End-to-end latency (device ts -> in `positions`) vs offered rate", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, (0.1f64..ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered positions/s")
            .y_desc("ms (log)")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (series, color, name) in [(&p50, GREEN, "p50"), (&p99, BLUE, "p99"), (&max, RED, "max")] {
            chart
                .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(series.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).label_font(("sans-serif", 14)).draw()?;
        root.present()?;
    }

    let m = &r["machine"];
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Generated by `make bench` (scripts/bench, then `bench-report`) on {}. Every stage runs {} times against the same local broker in one session, after a warm-up; the tables give the median and, in brackets, every run. Ratios compare stages measured in the same run, so the noise of a shared machine largely cancels out.\n", m["date"].as_str().unwrap_or("?"), r["runs"])?;
    writeln!(md, "**Machine:** {} — {} cores, {} memory, {}; {}. **Broker:** {} (one KRaft broker+controller node started by scripts/kafka-local on the same machine, replication factor 1, {} partitions per topic). Release builds.\n",
        m["cpu"].as_str().unwrap_or("?"), m["cores"], m["memory"].as_str().unwrap_or("?"), m["kernel"].as_str().unwrap_or("?"), m["rustc"].as_str().unwrap_or("?"), m["broker"].as_str().unwrap_or("?"), r["partitions"])?;
    writeln!(md, "![throughput per stage](img/bench-throughput.png)\n\n![end-to-end latency](img/bench-latency.png)\n")?;
    writeln!(md, "## Results against the targets\n")?;
    writeln!(md, "| stage | result (median) | runs | target | status |\n|---|---|---|---|---|")?;
    let ratio = if baseline > 0.0 { ingest / baseline } else { 0.0 };
    let status = report::status;
    writeln!(md, "| 1. raw librdkafka producer (baseline) | {baseline:.0} positions/s | {} | — (the ceiling) | — |", runs(&r["baseline"]["per_s"]))?;
    writeln!(md, "| 2. receiver acked ingest | {ingest:.0} positions/s = **{ratio:.2}×** baseline; ack latency p50 {:.1} ms, p99 {:.1} ms | {} | ≥ 0.5× baseline | {} |",
        median(&r["ingest"]["p50"]), median(&r["ingest"]["p99"]), runs(&r["ingest"]["per_s"]), status(ratio >= 0.5))?;
    writeln!(md, "| 3. processor (validate + route {} records, {}% invalid, {}% duplicates) | {processor:.0} records/s | {} | ≥ 100k/s | {} |",
        r["processor"]["count"], r["processor"]["invalid_pct"], r["processor"]["duplicate_pct"], runs(&r["processor"]["per_s"]), status(processor >= 100_000.0))?;
    let at10k = e2e.iter().find(|s| s["rate"].as_f64() == Some(10_000.0));
    let p99_10k = at10k.map(|s| median(&s["p99"])).unwrap_or(f64::NAN);
    writeln!(md, "| 4. end to end at 10k positions/s | p99 {p99_10k:.1} ms | {} | p99 ≤ 50 ms | {} |",
        at10k.map(|s| runs(&s["p99"])).unwrap_or_default(), status(p99_10k <= 50.0))?;
    writeln!(md, "| 4. highest sustained offered rate | {sustained:.0} positions/s | | — | — |")?;
    writeln!(md, "| 5. idle connections | {per_conn:.1} KiB per connection at {} connections | {} | ≤ 50 KiB | {} |\n",
        conn["count"], runs(&conn["per_conn_kib"]), status(per_conn <= 50.0 && per_conn > 0.0))?;
    writeln!(md, "## End to end, by offered rate\n")?;
    writeln!(md, "| offered/s | vehicles | acked/s | arrived in `positions` | p50 ms | p99 ms | max ms | kept up |\n|---|---|---|---|---|---|---|---|")?;
    for s in &e2e {
        let kept = s["sustained"].as_array().map(|a| a.iter().map(|b| if b.as_bool() == Some(true) { "yes" } else { "no" }).collect::<Vec<_>>().join(" / ")).unwrap_or_default();
        writeln!(md, "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} |", s["rate"], s["vehicles"], median(&s["acked_per_s"]), median(&s["arrived"]), median(&s["p50"]), median(&s["p99"]), median(&s["max"]), kept)?;
    }
    writeln!(md, "\n\"Kept up\": the simulator achieved at least 95% of the offered rate, every acked position arrived in `positions` within the run plus 5 s, and the p99 latency stayed under {} ms (a growing backlog shows as a p99 of seconds).\n", r["sustained_p99_ms"].as_f64().unwrap_or(500.0))?;
    if let Some(rows) = r["geofences"].as_array() {
        writeln!(md, "## Geofence lookups\n")?;
        writeln!(md, "Nanoseconds per `FenceIndex::containing` (R-tree of bounding boxes, then the exact test), fastest of 5 rounds; 20-vertex polygons 700 m apart over Berlin (`geofence-bench`). \"Hot\" keeps the points to 10 fences (in cache); the last column tests every fence instead of using the index.\n")?;
        writeln!(md, "| fences | index build ms | far from all | between fences | inside one | inside, hot | testing every fence |\n|---|---|---|---|---|---|---|")?;
        for row in rows {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            writeln!(md, "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |", row["fences"], f("build_ms"), f("far_ns"), f("between_ns"), f("inside_ns"), f("hot_ns"), f("scan_ns"))?;
        }
        writeln!(md)?;
    }
    for section in [report::connections::section(&r), report::tracker::section(&r), report::takeover::section(&r)] {
        md.push_str(&section);
    }
    if let Some(notes) = r["notes"].as_array() {
        writeln!(md, "## Where the time goes\n")?;
        for n in notes {
            writeln!(md, "- {}", n.as_str().unwrap_or(""))?;
        }
        writeln!(md)?;
    }
    writeln!(md, "## Exact commands\n\n```sh")?;
    if let Some(cmds) = r["commands"].as_array() {
        for c in cmds {
            writeln!(md, "{}", c.as_str().unwrap_or(""))?;
        }
    }
    writeln!(md, "```")?;
    std::fs::write(args.docs.join("benchmarks.md"), md)?;
    eprintln!("wrote {}", args.docs.join("benchmarks.md").display());
    Ok(())
}
