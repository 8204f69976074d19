//! The report section on the tracker's ingest: positions/s stored into SQLite and PostgreSQL
//! (results["tracker_ingest"], from `stage_tracker` in scripts/ops/bench.py).

use std::fmt::Write as _;

use serde_json::Value;

use super::{median, runs, runs_with};

/// Markdown for this section; empty when the results have none.
pub fn section(results: &Value) -> String {
    let t = &results["tracker_ingest"];
    if t.is_null() {
        return String::new();
    }
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write(t, &mut md);
    md
}

/// The field `key` of every run, as one array for `median` and `runs`.
fn column(runs: &[Value], key: &str) -> Value {
    Value::Array(runs.iter().map(|r| r[key].clone()).collect())
}

/// CPU microseconds per position of every run, from CPU-s under `key`.
fn micros_per_position(runs: &[Value], key: &str) -> Value {
    Value::Array(
        runs.iter()
            .filter_map(|r| Some(Value::from(r[key].as_f64()? * 1e6 / r["positions"].as_f64().filter(|n| *n > 0.0)?)))
            .collect(),
    )
}

fn write(t: &Value, md: &mut String) -> std::fmt::Result {
    writeln!(md, "## Tracker ingest (SQLite and PostgreSQL)\n")?;
    writeln!(
        md,
        "A `positions` topic holding {} valid processed positions of {} vehicles (produce-bench's records through the processor, Kafka transactions) is read whole, in each run and for each database, by a tracker with an empty database and a new consumer group. **Stored/s** counts `fleetstream_tracker_positions_written_total` from the tracker's first write to its last (the group join and first fetch left out; \"from ready\" includes them). Writes are batched (`--batch-size {}`, flushed at the latest after `--flush-interval` 1 s; \"rows per write\" is the mean of `fleetstream_tracker_batch_size`) and idempotent (`INSERT … ON CONFLICT (obu_id, boot, seq) DO NOTHING`; one transaction per batch with the vehicles' latest rows; SQLite in WAL mode with `synchronous=FULL`, one prepared insert per row; PostgreSQL one `INSERT … SELECT * FROM UNNEST(arrays)` per batch): \"rows\" is `SELECT count(*) FROM positions` afterwards. CPU is each process's user+system time over the run (/proc/PID/stat); PostgreSQL's is the postmaster and all its backends. The tracker, its database, the broker and the bench share the machine's 2 cores.\n",
        t["count"], t["vehicles"], t["batch_size"]
    )?;
    writeln!(md, "| database | stored/s (median) | runs | from ready, /s | tracker CPU-µs per position | database CPU-µs per position | rows per write | rows |\n|---|---|---|---|---|---|---|---|")?;
    for backend in ["sqlite", "postgres"] {
        let Some(rs) = t[backend].as_array().filter(|a| !a.is_empty()) else { continue };
        if let Some(reason) = rs[0]["not_measured"].as_str() {
            let name = if backend == "postgres" { "PostgreSQL" } else { "SQLite" };
            writeln!(md, "| {name} | not measured: {} | | | | | | |", reason.replace('|', "\\|").replace('\n', " "))?;
            continue;
        }
        let version = rs[0]["version"].as_str().unwrap_or(backend);
        let db_cpu = if backend == "sqlite" {
            "— (in the tracker's process)".to_string()
        } else {
            let per = micros_per_position(rs, "db_cpu_s");
            format!("{:.1} ({})", median(&per), runs_with(&per, 1))
        };
        let tracker_cpu = micros_per_position(rs, "tracker_cpu_s");
        writeln!(
            md,
            "| {version} | **{:.0}** | {} | {:.0} ({}) | {:.1} ({}) | {db_cpu} | {:.0} | {} |",
            median(&column(rs, "steady_per_s")),
            runs(&column(rs, "steady_per_s")),
            median(&column(rs, "per_s")),
            runs(&column(rs, "per_s")),
            median(&tracker_cpu),
            runs_with(&tracker_cpu, 1),
            median(&column(rs, "mean_batch")),
            runs(&column(rs, "rows")),
        )?;
    }
    super::commands(md, "Commands (the first run; $WORK is the bench's directory, ports are free ones):", &t["commands"])?;
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_the_databases_and_every_run() {
        let run = |per_s: f64, version: &str| {
            json!({"positions": 1000, "per_s": per_s - 100.0, "steady_per_s": per_s, "tracker_cpu_s": 0.5, "db_cpu_s": 0.25,
                   "mean_batch": 998.0, "rows": 1000, "version": version})
        };
        let r = json!({"tracker_ingest": {"count": 1000, "vehicles": 10, "batch_size": 1000, "commands": ["target/release/tracker --x"],
            "sqlite": [run(9000.0, "SQLite 3.50.2"), run(8000.0, "SQLite 3.50.2")],
            "postgres": [run(7000.0, "PostgreSQL 15.8")]}});
        let md = section(&r);
        assert!(md.contains("| SQLite 3.50.2 | **9000** | 9000 / 8000 | 8900 (8900 / 7900) | 500.0 (500.0 / 500.0) | — (in the tracker's process) | 998 | 1000 / 1000 |"), "{md}");
        assert!(md.contains("| PostgreSQL 15.8 | **7000** | 7000 | 6900 (6900) | 500.0 (500.0) | 250.0 (250.0) | 998 | 1000 |"), "{md}");
        assert!(md.contains("target/release/tracker --x"));
    }

    #[test]
    fn says_why_postgres_was_not_measured() {
        let r = json!({"tracker_ingest": {"count": 1, "vehicles": 1, "batch_size": 1000, "postgres": [{"not_measured": "PostgreSQL is not installed"}]}});
        assert!(section(&r).contains("| PostgreSQL | not measured: PostgreSQL is not installed |"));
        assert_eq!(section(&json!({})), "");
    }
}
