//! The report section on connections (filled by `stage_connections` in scripts/ops/bench.py):
//! the receiver's memory per idle connection, and what holding the idle ones costs the ack
//! latency of the vehicles that do report.

use std::fmt::Write as _;

use serde_json::Value;

use super::{median, runs, runs_with, status};

/// Most receiver memory (RSS growth divided by connections held) per idle connection, KiB.
const PER_CONNECTION_KIB: f64 = 16.0;
/// Idle connections one receiver must hold (the target; the bench measures fewer only when the open-file limit cannot be raised).
const TARGET_CONNECTIONS: f64 = 100_000.0;
/// Most ack p99 beside the idle connections, as a multiple of the same vehicles' p99 alone.
const RATIO: f64 = 2.0;

/// Markdown for this section; empty when the results have none.
pub fn section(results: &Value) -> String {
    let c = &results["connections"];
    if !c["per_conn_kib"].is_array() {
        return String::new();
    }
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write_section(&mut md, c);
    md
}

fn write_section(md: &mut String, c: &Value) -> std::fmt::Result {
    let count = c["count"].as_f64().unwrap_or(f64::NAN);
    let active = c["active"].as_f64().unwrap_or(f64::NAN);
    let idle_besides = count - active;
    let per = median(&c["per_conn_kib"]);
    let held = median(&c["held"]);
    let (alone, loaded, ratio) = (median(&c["p99_alone_ms"]), median(&c["p99_loaded_ms"]), median(&c["ratio"]));
    writeln!(md, "## Idle connections\n")?;
    writeln!(
        md,
        "Targets: one receiver holds {count:.0} idle WebSocket connections at ≤ {PER_CONNECTION_KIB:.0} KiB each, and {active:.0} vehicles \
         reporting once a second keep an ack p99 within {RATIO:.0}× of their p99 alone while it also holds {idle_besides:.0} idle ones. \
         Memory is the receiver's RSS growth from before the first connection to {count:.0} held, divided by the connections held. \
         Idle vehicles report once a day (a first report at a random moment of it: about one a second over all of them). The ack \
         latency is the simulator's, from writing a position to reading its ack, over {} s of reporting (connecting included).\n",
        c["active_seconds"]
    )?;
    if count < TARGET_CONNECTIONS {
        writeln!(
            md,
            "**Not measured at the target of {TARGET_CONNECTIONS:.0} connections:** this machine's open-file limit ({} per \
             process, which the bench could not raise) allowed {count:.0}; the bench measures {TARGET_CONNECTIONS:.0} where \
             `ulimit -Hn` can be raised (README, \"Many connections\").\n",
            c["limits"]["nofile"].as_f64().map(|n| format!("{n:.0}")).unwrap_or_else(|| "?".into())
        )?;
    }
    writeln!(md, "| measure | median | runs | target | status |\n|---|---|---|---|---|")?;
    writeln!(
        md,
        "| connections held | {held:.0} | {} | {TARGET_CONNECTIONS:.0} | {} |",
        runs(&c["held"]),
        if count < TARGET_CONNECTIONS { "**not measured** (open-file limit)" } else { status(held >= count) }
    )?;
    writeln!(
        md,
        "| receiver memory per idle connection | {per:.1} KiB (RSS {:.0} → {:.0} MiB) | {} | ≤ {PER_CONNECTION_KIB:.0} KiB | {} |",
        median(&c["rss_before_kib"]) / 1024.0,
        median(&c["rss_after_kib"]) / 1024.0,
        runs_with(&c["per_conn_kib"], 1),
        status(per > 0.0 && per <= PER_CONNECTION_KIB)
    )?;
    writeln!(
        md,
        "| ack p99, {active:.0} vehicles at 1/s alone (p50 {:.1} ms) | {alone:.1} ms | {} | — (the reference) | — |",
        median(&c["p50_alone_ms"]),
        runs_with(&c["p99_alone_ms"], 1)
    )?;
    writeln!(
        md,
        "| ack p99, the same beside {:.0} idle (p50 {:.1} ms) | {loaded:.1} ms | {} | ≤ {RATIO:.0}× alone | {} |",
        median(&c["idle_held"]),
        median(&c["p50_loaded_ms"]),
        runs_with(&c["p99_loaded_ms"], 1),
        status(loaded <= RATIO * alone)
    )?;
    writeln!(md, "| ratio, beside idle / alone | {ratio:.2}× | {} | ≤ {RATIO:.0}× | {} |", runs_with(&c["ratio"], 2), status(ratio <= RATIO))?;
    writeln!(
        md,
        "| positions acked, alone / beside idle | {:.0} / {:.0} | | — | — |",
        median(&c["acked_alone"]),
        median(&c["acked_loaded"])
    )?;
    writeln!(
        md,
        "| simulator holding the idle fleet: connect rate, RSS, CPU | {:.0} connections/s, {:.0} MiB, {:.1} CPU-s | {} (connections/s) | — | — |\n",
        median(&c["connect_per_s"]),
        median(&c["sim_rss_kib"]) / 1024.0,
        median(&c["sim_cpu_s"]),
        runs(&c["connect_per_s"])
    )?;
    let l = &c["limits"];
    let text = |k: &str| match &l[k] {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    };
    writeln!(
        md,
        "Limits used: the simulators connect from {} (`--source-addresses`; one source address has the ephemeral port range \
         {} towards one receiver port); the receiver runs with `--max-connections {}` and `--max-connections-per-ip {}` (every \
         simulated device is on loopback); open files {} per process (the bench raises its hard limit as root; the services raise \
         their soft limit to it), fs.nr_open {}, net.core.somaxconn {} (the listen backlog is 1,024; the simulator makes at most \
         256 connection attempts at once), nf_conntrack_max {}, tcp_mem {} pages.\n",
        text("source_addresses"),
        text("ip_local_port_range"),
        text("max_connections"),
        text("max_connections_per_ip"),
        text("nofile"),
        text("nr_open"),
        text("somaxconn"),
        text("nf_conntrack_max"),
        text("tcp_mem"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_shows_the_targets_and_whether_they_were_met() {
        let results = serde_json::json!({"connections": {
            "count": 100000, "active": 10000, "active_seconds": 30,
            "limits": {"source_addresses": "127.0.0.1-127.0.0.6", "ip_local_port_range": "32768-60999", "max_connections": 111000,
                       "max_connections_per_ip": 0, "nofile": 120000, "nr_open": "1048576", "somaxconn": "4096"},
            "held": [100000, 100000, 99000], "rss_before_kib": [20000, 20000, 20000], "rss_after_kib": [1500000, 1601000, 1700000],
            "per_conn_kib": [14.8, 15.8, 16.9], "p50_alone_ms": [5, 5, 5], "p99_alone_ms": [20.0, 22.0, 21.0],
            "p50_loaded_ms": [6, 6, 6], "p99_loaded_ms": [30.0, 50.0, 35.0], "ratio": [1.5, 2.27, 1.67],
            "acked_alone": [300000, 300000, 300000], "acked_loaded": [300000, 300000, 300000], "idle_held": [90000, 90000, 90000],
            "connect_per_s": [5000, 6000, 5500], "sim_rss_kib": [900000, 900000, 900000], "sim_cpu_s": [20, 21, 22],
        }});
        let md = section(&results);
        assert!(md.starts_with("## Idle connections"), "{md}");
        assert!(md.contains("| receiver memory per idle connection | 15.8 KiB (RSS 20 → 1563 MiB) | 14.8 / 15.8 / 16.9 | ≤ 16 KiB | met |"), "{md}");
        assert!(md.contains("| ack p99, the same beside 90000 idle (p50 6.0 ms) | 35.0 ms | 30.0 / 50.0 / 35.0 | ≤ 2× alone | met |"), "{md}");
        assert!(md.contains("| ratio, beside idle / alone | 1.67× | 1.50 / 2.27 / 1.67 | ≤ 2× | met |"), "{md}");
        assert!(md.contains("| connections held | 100000 | 100000 / 100000 / 99000 | 100000 | met |"), "{md}");
        assert!(md.contains("connect from 127.0.0.1-127.0.0.6"), "{md}");
        assert!(md.contains("nf_conntrack_max ?"), "a limit not measured says so: {md}");
    }

    #[test]
    fn a_miss_is_marked_and_no_results_no_section() {
        let results = serde_json::json!({"connections": {"count": 100000, "active": 10000, "held": [100000],
            "per_conn_kib": [19.0], "p99_alone_ms": [10.0], "p99_loaded_ms": [30.0], "ratio": [3.0]}});
        let md = section(&results);
        assert!(md.contains("| ≤ 16 KiB | **missed** |") && md.contains("| ≤ 2× | **missed** |"), "{md}");
        assert_eq!(section(&serde_json::json!({})), "");
    }
}
