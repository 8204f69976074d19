//! Which dead letters a command is about: the filter flags, their parsers, and the match.

use std::time::Duration;

use fleetstream_core::reason::Reason;

use crate::read::DeadLetterRecord;

/// Where a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Refused by a receiver before it reached the raw topic.
    Receiver,
    /// Judged invalid by a processor.
    Processor,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Receiver => "receiver",
            Stage::Processor => "processor",
        }
    }
}

/// The filter flags shared by `count`, `list` and `redrive`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only records with this reason code (repeatable, or comma-separated), e.g.
    /// `seq_too_old,teleport`.
    #[arg(long = "reason", env = "DLQ_REASON", value_delimiter = ',', value_parser = parse_reason)]
    pub reasons: Vec<Reason>,

    /// Only records dead-lettered at this stage.
    #[arg(long, env = "DLQ_STAGE", value_enum)]
    pub stage: Option<Stage>,

    /// Only records of this vehicle (obu_id; repeatable, or comma-separated).
    #[arg(long = "vehicle", env = "DLQ_VEHICLE", value_delimiter = ',')]
    pub vehicles: Vec<u64>,

    /// Only records dead-lettered at or after this time: RFC 3339 (`2026-11-22T08:00:00Z`),
    /// Unix milliseconds (`1763800000000`) or relative to now (`-1h`, `-30m`, `-2d`). Reading
    /// starts there (offsets_for_times) instead of at the topic's beginning.
    #[arg(long, env = "DLQ_FROM", value_parser = parse_time, allow_hyphen_values = true)]
    pub from: Option<i64>,

    /// Only records dead-lettered before this time (same forms as `--from`).
    #[arg(long, env = "DLQ_TO", value_parser = parse_time, allow_hyphen_values = true)]
    pub to: Option<i64>,
}

impl Filter {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &DeadLetterRecord) -> bool {
        let reason_ok = self.reasons.is_empty() || record.reason.as_deref().is_some_and(|r| self.reasons.iter().any(|x| x.as_str() == r));
        let stage_ok = self.stage.is_none_or(|s| record.stage.as_deref() == Some(s.as_str()));
        let vehicle_ok = self.vehicles.is_empty() || record.obu_id.is_some_and(|o| self.vehicles.contains(&o));
        let ts = record.record.timestamp;
        let from_ok = self.from.is_none_or(|f| ts.is_some_and(|t| t >= f));
        let to_ok = self.to.is_none_or(|to| ts.is_some_and(|t| t < to));
        reason_ok && stage_ok && vehicle_ok && from_ok && to_ok
    }
}

/// A reason code, or an error listing the valid ones.
pub fn parse_reason(s: &str) -> Result<Reason, String> {
    Reason::from_code(s.trim()).ok_or_else(|| {
        let valid: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown reason `{s}`; valid reasons: {}", valid.join(", "))
    })
}

/// A point in time as Unix ms: RFC 3339, Unix ms, or `-DURATION` before now.
pub fn parse_time(s: &str) -> Result<i64, String> {
    parse_time_at(s, fleetstream_core::now_ms())
}

/// [`parse_time`] with "now" given.
pub fn parse_time_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || format!("`{s}` is not a time: use RFC 3339 (2026-11-22T08:00:00Z), Unix ms (1763800000000) or relative (-1h, -30m)");
    if let Some(ago) = s.strip_prefix('-') {
        let d: Duration = humantime::parse_duration(ago).map_err(|_| bad())?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| bad())?;
        return Ok(now_ms.saturating_sub(ms));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad())?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad())?.as_millis();
    i64::try_from(ms).map_err(|_| bad())
}

/// Unix ms as RFC 3339 (UTC, milliseconds).
pub fn format_time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        Err(_) => ms.to_string(),
    }
}

/// The hour `ms` falls in, as `YYYY-MM-DDTHH:00Z`.
pub fn hour_of(ms: i64) -> String {
    let hour = ms - ms.rem_euclid(3_600_000);
    let t = format_time(hour);
    // `2026-11-22T08:00:00.000Z` -> `2026-11-22T08:00Z`
    match t.get(..16) {
        Some(prefix) if t.len() > 16 => format!("{prefix}Z"),
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        let now = 1_763_800_000_000;
        assert_eq!(parse_time_at("1763800000000", now), Ok(1_763_800_000_000));
        assert_eq!(parse_time_at("-1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time_at("-30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_time_at("2025-11-22T08:26:40Z", now), Ok(1_763_800_000_000));
        let err = parse_time_at("yesterday", now).err().unwrap_or_default();
        assert!(err.contains("RFC 3339") && err.contains("-1h"), "{err}");
    }

    #[test]
    fn an_unknown_reason_lists_the_valid_ones() {
        assert_eq!(parse_reason("seq_too_old"), Ok(Reason::SeqTooOld));
        let err = parse_reason("too_old").err().unwrap_or_default();
        assert!(err.contains("`too_old`") && err.contains("seq_too_old") && err.contains("teleport"), "{err}");
    }

    #[test]
    fn hours_are_truncated() {
        assert_eq!(hour_of(1_763_800_000_000), "2025-11-22T08:00Z");
    }
}
