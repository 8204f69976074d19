//! `dlq`: inspect and redrive fleetstream's dead letters.
//!
//! The dead-letter topic (`gpscoords-dlq`) holds the original bytes of every refused position
//! with `__connect.errors.*` and `fleetstream.*` headers (docs/wire-format.md). This tool counts
//! and lists them by reason, stage, vehicle and time, shows one with all its headers, and
//! redrives selected ones: their original bytes and key go back to the raw topic, with a
//! `fleetstream.redriven_from` header, so that the processor judges them again.
//!
//! ```text
//! cargo run -p fleetstream-dlq -- count --by reason
//! cargo run -p fleetstream-dlq -- list --reason seq_too_old --from -1h
//! cargo run -p fleetstream-dlq -- show 3:1042
//! cargo run -p fleetstream-dlq -- redrive --reason seq_too_old --dry-run
//! ```
//!
//! Every read goes from the topic's beginning (or `--from`) to where it ended when the command
//! started, with partitions assigned by hand (no consumer group, no commits) and
//! `isolation.level=read_committed`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use fleetstream_core::kafka::{KafkaArgs, ProducerArgs};
use fleetstream_core::publish::{delivered, Outgoing, Publisher};
use fleetstream_core::telemetry::LogArgs;

pub mod filter;
pub mod read;

pub use filter::{Filter, Stage};
pub use read::{DeadLetterRecord, RawRecord, ReadError, Reader};

/// Header on a redriven record in the raw topic: `<dlq topic>/<partition>/<offset>` of the dead
/// letter it came from.
pub use fleetstream_core::dlq::REDRIVEN_FROM;

/// Inspect and redrive fleetstream's dead letters.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "dlq", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Command,

    /// The dead-letter topic.
    #[arg(long, env = "DLQ_TOPIC", default_value = "gpscoords-dlq", global = true)]
    pub topic: String,

    /// The raw topic redriven records go back to (the processor's input).
    #[arg(long, env = "DLQ_RAW_TOPIC", default_value = "gpscoords", global = true)]
    pub raw_topic: String,

    /// Bound on reaching the brokers and on a read that stops making progress.
    #[arg(long, env = "DLQ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Count dead letters by reason, stage, vehicle or hour.
    Count {
        #[command(flatten)]
        filter: Filter,
        /// What to count by.
        #[arg(long, env = "DLQ_BY", value_enum, default_value = "reason")]
        by: GroupBy,
        /// Print JSON instead of text (`list`: one object per line).
        #[arg(long, env = "DLQ_JSON")]
        json: bool,
    },
    /// List dead letters, one line each.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Stop after this many records (the first read; partitions are read side by side).
        #[arg(long, env = "DLQ_LIMIT")]
        limit: Option<usize>,
        /// Print JSON instead of text (`list`: one object per line).
        #[arg(long, env = "DLQ_JSON")]
        json: bool,
    },
    /// Show one dead letter (PARTITION:OFFSET) with every header and its value.
    Show {
        /// The record, as PARTITION:OFFSET (what `list` prints first).
        #[arg(value_parser = parse_position)]
        position: (i32, i64),
        /// Print JSON instead of text (`list`: one object per line).
        #[arg(long, env = "DLQ_JSON")]
        json: bool,
    },
    /// Write selected dead letters' original bytes back to the raw topic, once each.
    Redrive {
        #[command(flatten)]
        filter: Filter,
        /// Print what would be redriven; write nothing.
        #[arg(long, env = "DLQ_DRY_RUN")]
        dry_run: bool,
        /// How far back to scan the raw topic (by timestamp) for records already redriven,
        /// which are skipped.
        #[arg(long, env = "DLQ_SCAN_RAW", default_value = "24h", value_parser = humantime::parse_duration)]
        scan_raw: Duration,
    },
}

/// The key `count` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The reason code.
    Reason,
    /// receiver or processor.
    Stage,
    /// The obu_id (`-` where it could not be read).
    Vehicle,
    /// The hour the record was dead-lettered (UTC).
    Hour,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Reason => "reason",
            GroupBy::Stage => "stage",
            GroupBy::Vehicle => "vehicle",
            GroupBy::Hour => "hour",
        }
    }

    fn key(self, r: &DeadLetterRecord) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        match self {
            GroupBy::Reason => or_dash(r.reason.clone()),
            GroupBy::Stage => or_dash(r.stage.clone()),
            GroupBy::Vehicle => or_dash(r.obu_id.map(|o| o.to_string())),
            GroupBy::Hour => or_dash(r.record.timestamp.map(filter::hour_of)),
        }
    }
}

fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let bad = || format!("`{s}` is not PARTITION:OFFSET (e.g. 3:1042)");
    let (p, o) = s.split_once(':').ok_or_else(bad)?;
    Ok((p.trim().parse().map_err(|_| bad())?, o.trim().parse().map_err(|_| bad())?))
}

impl Config {
    pub fn reader(&self) -> Reader {
        Reader { kafka: self.kafka.clone(), timeout: self.timeout }
    }
}

/// Runs the command, printing to `out`.
pub async fn run(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    match &config.command {
        Command::Count { filter, by, json } => {
            let counts = count(&config.reader(), &config.topic, filter, *by).await?;
            print_counts(out, *by, &counts, *json)?;
        }
        Command::List { filter, limit, json } => {
            for r in select(&config.reader(), &config.topic, filter, *limit).await? {
                if *json {
                    writeln!(out, "{}", list_json(&r))?;
                } else {
                    writeln!(out, "{}", list_line(&r))?;
                }
            }
        }
        Command::Show { position: (p, o), json } => {
            let reader = config.reader();
            let topic = config.topic.clone();
            let (p, o) = (*p, *o);
            let record = tokio::task::spawn_blocking(move || reader.one(&topic, p, o)).await.context("the reader failed")??;
            print_show(out, &config.topic, &record, *json)?;
        }
        Command::Redrive { filter, dry_run, scan_raw } => {
            let plan = plan_redrive(&config.reader(), &config.topic, &config.raw_topic, filter, *scan_raw).await?;
            for r in &plan.todo {
                let verb = if *dry_run { "would redrive" } else { "redrive" };
                writeln!(out, "{verb} {}", list_line(r))?;
            }
            let redriven = if *dry_run || plan.todo.is_empty() {
                0
            } else {
                let producer: FutureProducer = config.kafka.producer_config(&config.producer).create().context("cannot create a Kafka producer")?;
                redrive(&producer, &config.topic, &config.raw_topic, &plan.todo, config.producer.delivery_timeout).await?
            };
            writeln!(
                out,
                "selected {}, {} {}, skipped {} already redriven{}",
                plan.selected,
                if *dry_run { "would redrive" } else { "redriven" },
                if *dry_run { plan.todo.len() } else { redriven },
                plan.skipped,
                if plan.rejected_again > 0 { format!(" (of which {} rejected again after a redrive)", plan.rejected_again) } else { String::new() },
            )?;
        }
    }
    Ok(())
}

/// The dead letters of `topic` that `filter` selects, at most `limit`, by partition and offset.
pub async fn select(reader: &Reader, topic: &str, filter: &Filter, limit: Option<usize>) -> Result<Vec<DeadLetterRecord>, ReadError> {
    let (reader, topic, filter) = (reader.clone(), topic.to_string(), filter.clone());
    blocking(move || {
        let mut out = Vec::new();
        if limit == Some(0) {
            return Ok(out);
        }
        reader.scan(&topic, filter.from, |raw| {
            let r = DeadLetterRecord::from(raw);
            if filter.matches(&r) {
                out.push(r);
            }
            limit.is_none_or(|l| out.len() < l)
        })?;
        // Partitions are read interleaved; a vehicle's records share a partition, so this
        // order keeps each vehicle's in the order they were dead-lettered.
        out.sort_by_key(|r| (r.record.partition, r.record.offset));
        Ok(out)
    })
    .await
}

/// How many dead letters of `topic` that `filter` selects have each value of `by`.
pub async fn count(reader: &Reader, topic: &str, filter: &Filter, by: GroupBy) -> Result<BTreeMap<String, u64>, ReadError> {
    let (reader, topic, filter) = (reader.clone(), topic.to_string(), filter.clone());
    blocking(move || {
        let mut counts = BTreeMap::new();
        reader.scan(&topic, filter.from, |raw| {
            let r = DeadLetterRecord::from(raw);
            if filter.matches(&r) {
                *counts.entry(by.key(&r)).or_insert(0) += 1;
            }
            true
        })?;
        Ok(counts)
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ReadError> + Send + 'static) -> Result<T, ReadError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ReadError::Kafka { context: format!("the reader thread failed: {e}"), source: rdkafka::error::KafkaError::Canceled }),
    }
}

/// What a redrive would do.
#[derive(Debug, Clone)]
pub struct RedrivePlan {
    /// How many dead letters the filter selected.
    pub selected: usize,
    /// The selected ones not redriven yet, in topic order.
    pub todo: Vec<DeadLetterRecord>,
    /// Selected but skipped: already redriven, or a rejection of a redriven copy.
    pub skipped: usize,
    /// Of the skipped: dead letters of a redriven copy (the processor refused it again).
    pub rejected_again: usize,
}

/// The `fleetstream.redriven_from` value of a dead letter.
pub fn source_id(dlq_topic: &str, r: &DeadLetterRecord) -> String {
    format!("{dlq_topic}/{}/{}", r.record.partition, r.record.offset)
}

/// Selects dead letters and leaves out those already redriven: the raw topic's records of the
/// last `scan_raw` (by timestamp) that carry a `fleetstream.redriven_from` header name them.
pub async fn plan_redrive(reader: &Reader, dlq_topic: &str, raw_topic: &str, filter: &Filter, scan_raw: Duration) -> Result<RedrivePlan, ReadError> {
    let selected = select(reader, dlq_topic, filter, None).await?;
    let since = fleetstream_core::now_ms().saturating_sub(i64::try_from(scan_raw.as_millis()).unwrap_or(i64::MAX));
    let (scan_reader, raw) = (reader.clone(), raw_topic.to_string());
    let (sources, copies) = blocking(move || {
        let mut sources = HashSet::new();
        // Where the redriven copies sit in the raw topic: a processor dead letter pointing at
        // one is the copy refused again, not a new record to redrive.
        let mut copies = HashSet::new();
        scan_reader.scan(&raw, Some(since), |r| {
            if let Some(from) = r.header(REDRIVEN_FROM) {
                sources.insert(from.to_string());
                copies.insert((r.partition, r.offset));
            }
            true
        })?;
        Ok((sources, copies))
    })
    .await?;
    let total = selected.len();
    let mut rejected_again = 0;
    let todo: Vec<DeadLetterRecord> = selected
        .into_iter()
        .filter(|r| {
            if sources.contains(&source_id(dlq_topic, r)) {
                return false;
            }
            let again = r.stage.as_deref() == Some("processor")
                && r.source_topic.as_deref() == Some(raw_topic)
                && r.source_partition.zip(r.source_offset).is_some_and(|c| copies.contains(&c));
            rejected_again += usize::from(again);
            !again
        })
        .collect();
    Ok(RedrivePlan { selected: total, skipped: total - todo.len(), todo, rejected_again })
}

/// Writes `records`' original bytes and keys to `raw_topic` with the `fleetstream.redriven_from`
/// header, and waits until Kafka acknowledged every one. Returns how many were written.
pub async fn redrive(producer: &FutureProducer, dlq_topic: &str, raw_topic: &str, records: &[DeadLetterRecord], timeout: Duration) -> anyhow::Result<usize> {
    let publisher = Publisher::new(producer.clone(), CancellationToken::new());
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let from = source_id(dlq_topic, r);
        let mut out = Outgoing::new(raw_topic, r.record.value.as_slice()).header(REDRIVEN_FROM, &from);
        if let Some(key) = &r.record.key {
            out = out.key(key.as_slice());
        }
        let delivery = publisher.enqueue(&out, Instant::now() + timeout).await.with_context(|| format!("cannot redrive {from}"))?;
        pending.push((from, delivery));
    }
    let mut written = 0;
    let mut failed = Vec::new();
    for (from, delivery) in pending {
        match delivered(delivery).await {
            Ok(_) => written += 1,
            Err(e) => failed.push(format!("{from}: {e}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{written} redriven, {} failed (run redrive again: written ones are skipped): {}", failed.len(), failed.join("; "));
    }
    Ok(written)
}

/// At most this many bytes of a value in a `list` line.
const PREVIEW_BYTES: usize = 60;

/// `bytes` with printable ASCII kept and everything else escaped (`\n`, `\xNN`).
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn preview(value: &[u8]) -> String {
    let shown = &value[..value.len().min(PREVIEW_BYTES)];
    let more = if value.len() > PREVIEW_BYTES { "…" } else { "" };
    format!("{}{more}", escape(shown))
}

/// One `list` line: `PARTITION:OFFSET TIME STAGE REASON obu=… seq=… "MESSAGE" VALUE…`.
pub fn list_line(r: &DeadLetterRecord) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "{}:{} {} {} {} obu={} seq={} {:?} {}",
        r.record.partition,
        r.record.offset,
        dash(r.record.timestamp.map(filter::format_time)),
        dash(r.stage.clone()),
        dash(r.reason.clone()),
        dash(r.obu_id.map(|v| v.to_string())),
        dash(r.seq.map(|v| v.to_string())),
        r.message.as_deref().unwrap_or(""),
        preview(&r.record.value),
    )
}

fn list_json(r: &DeadLetterRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("time".into(), r.record.timestamp.map(filter::format_time).into());
        map.insert("value".into(), preview(&r.record.value).into());
        map.insert("value_bytes".into(), r.record.value.len().into());
    }
    v
}

fn print_counts(out: &mut impl Write, by: GroupBy, counts: &BTreeMap<String, u64>, json: bool) -> std::io::Result<()> {
    let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
    // Hours in time order; everything else most frequent first.
    if by != GroupBy::Hour {
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    }
    let total: u64 = counts.values().sum();
    if json {
        let counts: Vec<serde_json::Value> = rows.iter().map(|(k, n)| serde_json::json!({ by.as_str(): k, "count": n })).collect();
        return writeln!(out, "{}", serde_json::json!({ "by": by.as_str(), "total": total, "counts": counts }));
    }
    let width = rows.iter().map(|(k, _)| k.len()).chain([by.as_str().len(), "total".len()]).max().unwrap_or(5);
    writeln!(out, "{:<width$}  {:>7}", by.as_str().to_uppercase(), "COUNT")?;
    for (k, n) in rows {
        writeln!(out, "{k:<width$}  {n:>7}")?;
    }
    writeln!(out, "{:<width$}  {total:>7}", "total")
}

fn print_show(out: &mut impl Write, topic: &str, r: &RawRecord, json: bool) -> std::io::Result<()> {
    let text = std::str::from_utf8(&r.value).ok();
    if json {
        let headers: Vec<serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| serde_json::json!({ "key": k, "value": v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()) }))
            .collect();
        let v = serde_json::json!({
            "topic": topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
            "key": r.key.as_deref().map(escape), "headers": headers,
            "value": text.map_or_else(|| hex::encode(&r.value), str::to_string),
            "value_encoding": if text.is_some() { "utf8" } else { "hex" },
        });
        return writeln!(out, "{v}");
    }
    writeln!(out, "record     {topic}/{}/{}", r.partition, r.offset)?;
    match r.timestamp {
        Some(ts) => writeln!(out, "timestamp  {ts} ({})", filter::format_time(ts))?,
        None => writeln!(out, "timestamp  -")?,
    }
    writeln!(out, "key        {}", r.key.as_deref().map_or_else(|| "-".to_string(), escape))?;
    writeln!(out, "headers")?;
    for (k, v) in &r.headers {
        writeln!(out, "  {k}: {}", v.as_deref().map_or_else(|| "(null)".to_string(), escape))?;
    }
    match text {
        Some(t) => writeln!(out, "value ({} bytes, text)\n{t}", r.value.len()),
        None => writeln!(out, "value ({} bytes, hex: not UTF-8)\n{}", r.value.len(), hex::encode(&r.value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_parse_and_bad_values_are_explained() {
        let c = Config::try_parse_from(["dlq", "--topic", "t", "count", "--reason", "seq_too_old,teleport", "--by", "vehicle", "--from", "-1h"]);
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        match c.command {
            Command::Count { filter, by, .. } => {
                assert_eq!(filter.reasons.len(), 2);
                assert_eq!(by, GroupBy::Vehicle);
                assert!(filter.from.is_some());
            }
            other => panic!("{other:?}"),
        }
        let err = Config::try_parse_from(["dlq", "list", "--reason", "nope"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("valid reasons") && err.contains("seq_too_old"), "{err}");
        let err = Config::try_parse_from(["dlq", "show", "3-4"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("PARTITION:OFFSET"), "{err}");
        assert!(Config::try_parse_from(["dlq", "list", "--vehicle", "x"]).is_err());
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape(b"{\"a\":1}\n\xff"), "{\"a\":1}\\n\\xff");
        assert!(preview(&[b'x'; 100]).ends_with('…'));
    }
}
