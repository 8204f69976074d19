//! The report section on connections (filled by its stage in scripts/ops/bench.py).

use serde_json::Value;

/// Markdown for this section; empty when the results have none.
pub fn section(_results: &Value) -> String {
    String::new()
}
