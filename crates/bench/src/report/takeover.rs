//! The report section on partition take-over: how long a processor needs to restore a
//! partition's state and to commit its first batch after taking it over
//! (results["takeover"], from `stage_takeover` in scripts/ops/bench.py).

use std::fmt::Write as _;

use serde_json::Value;

use super::{median, runs_with};

/// Markdown for this section; empty when the results have none.
pub fn section(results: &Value) -> String {
    let t = &results["takeover"];
    let Some(rs) = t["runs"].as_array().filter(|a| !a.is_empty()) else {
        return String::new();
    };
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write(t, rs, &mut md);
    md
}

fn column(runs: &[Value], key: &str) -> Value {
    Value::Array(runs.iter().map(|r| r[key].clone()).collect())
}

fn write(t: &Value, rs: &[Value], md: &mut String) -> std::fmt::Result {
    writeln!(md, "## Partition take-over\n")?;
    writeln!(
        md,
        "A single-partition raw topic holds one position of each of {} vehicles (produce-bench); a processor (`--exactly-once {}`) processes it, so `positions` and `vehicle-latest` (one state per vehicle) are real, and is stopped (SIGTERM: its last batch committed, the group left). {} positions of the first vehicles are then sent again as new input, and a second processor is started in the same group. **Restore** is its own measure (the `partition state restored` log line, also `fleetstream_processor_state_load_seconds`): reading `vehicle-latest` whole, then the tails of `positions` and the DLQ for source offsets past the committed one. **Failover** is from starting the second process to its first committed batch of the new input (`fleetstream_processor_commits_total`, polled every 20 ms): start-up, joining the group, the restore, then the batch and its transaction; the time a user sees when a processor replaces one that left. The new input must all count as duplicates, which shows the state was restored. The steps' times come from the second processor's log (`processor started`, `partitions assigned`, `partition state restored`), measured from the moment the bench started it; the restore's phases from its debug line `partition state restore phases` (`--log-level info,fleetstream_processor::restore=debug`). RSS is the second processor's resident memory right after the restore.\n",
        t["vehicles"],
        t["exactly_once"].as_str().unwrap_or("transactions"),
        t["new_input"]
    )?;
    writeln!(md, "| | vehicles restored | restore s | vehicles/s | start → up s | start → assigned s | start → restored s | **failover**: start → first commit s | RSS after restore MiB | new input: duplicates / valid |\n|---|---|---|---|---|---|---|---|---|---|")?;
    for (i, r) in rs.iter().enumerate() {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        writeln!(
            md,
            "| run {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} / {:.0} |",
            i + 1,
            r["vehicles"],
            f("restore_s"),
            f("vehicles_per_s"),
            f("started_s"),
            f("assigned_s"),
            f("restored_s"),
            f("first_commit_s"),
            f("rss_kib") / 1024.0,
            f("duplicates"),
            f("valid")
        )?;
    }
    let m = |k: &str| median(&column(rs, k));
    writeln!(
        md,
        "| **median** | {:.0} | **{:.2}** | {:.0} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.0} | |",
        m("vehicles"),
        m("restore_s"),
        m("vehicles_per_s"),
        m("started_s"),
        m("assigned_s"),
        m("restored_s"),
        m("first_commit_s"),
        m("rss_kib") / 1024.0
    )?;
    writeln!(md, "\nRestore seconds of every run: {}.", runs_with(&column(rs, "restore_s"), 2))?;
    let phases: Vec<Value> = rs.iter().map(|r| r["phases"].clone()).collect();
    if phases.iter().any(|p| p["latest_secs"].is_number()) {
        let p = |k: &str| median(&column(&phases, k));
        writeln!(
            md,
            "\nWhere the restore's time goes (medians): reading `vehicle-latest` whole, {:.0} records, {:.2} s, of which {:.2} s decoding the JSON states and filling the map (the rest is fetching: the broker and librdkafka); the `positions` tail {:.3} s; the DLQ tail {:.3} s.",
            p("latest_records"),
            p("latest_secs"),
            p("latest_decode_secs"),
            p("positions_tail_secs"),
            p("dlq_tail_secs")
        )?;
    }
    super::commands(md, "Commands (the first run; ports are free ones):", &rs[0]["commands"])?;
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_run_and_the_median() {
        let run = |secs: f64| {
            json!({"vehicles": 100000, "restore_s": secs, "vehicles_per_s": 100000.0 / secs, "started_s": 0.25, "assigned_s": 0.5, "restored_s": 0.5 + secs,
                   "phases": {"latest_records": 100000, "latest_secs": secs - 0.5, "latest_decode_secs": 0.25, "positions_tail_secs": 0.125, "dlq_tail_secs": 0.0},
                   "first_commit_s": 1.0 + secs, "rss_kib": 102400, "duplicates": 1000.0, "valid": 0.0, "commands": ["target/release/processor --x &"]})
        };
        let r = json!({"takeover": {"vehicles": 100000, "new_input": 1000, "exactly_once": "transactions", "runs": [run(2.0), run(4.0), run(3.0)]}});
        let md = section(&r);
        assert!(md.contains("| run 1 | 100000 | 2.00 | 50000 | 0.25 | 0.50 | 2.50 | 3.00 | 100 | 1000 / 0 |"), "{md}");
        assert!(md.contains("| **median** | 100000 | **3.00** | 33333 | 0.25 | 0.50 | 3.50 | **4.00** | 100 | |"), "{md}");
        assert!(md.contains("100000 records, 2.50 s, of which 0.25 s decoding"), "{md}");
        assert!(md.contains("target/release/processor --x &"));
        assert_eq!(section(&json!({})), "");
    }
}
