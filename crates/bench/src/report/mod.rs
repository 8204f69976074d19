//! docs/benchmarks.md's sections, one module each; `bench-report` puts them together from the
//! results scripts/ops/bench.py collected (docs/benchmarks.json).

pub mod connections;
pub mod latency;
pub mod spans;
pub mod takeover;
pub mod tracker;
pub mod tracing;

use std::fmt::Write as _;

use serde_json::Value;

/// The median of a list of runs (or the number itself).
pub fn median(v: &Value) -> f64 {
    let mut xs: Vec<f64> = v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    if xs.is_empty() {
        return v.as_f64().unwrap_or(f64::NAN);
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Every run, "a / b / c".
pub fn runs(v: &Value) -> String {
    runs_with(v, 0)
}

/// Every run with `decimals` decimals.
pub fn runs_with(v: &Value, decimals: usize) -> String {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// "met" or "**missed**".
pub fn status(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// A section's commands as a shell block under `heading`; nothing when there are none.
pub fn commands(md: &mut String, heading: &str, commands: &Value) -> std::fmt::Result {
    let Some(cmds) = commands.as_array().filter(|a| !a.is_empty()) else { return Ok(()) };
    writeln!(md, "\n{heading}\n\n```sh")?;
    for c in cmds {
        writeln!(md, "{}", c.as_str().unwrap_or(""))?;
    }
    writeln!(md, "```")
}
