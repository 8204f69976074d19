//! The processor's configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use fleetstream_core::kafka::{KafkaArgs, ProducerArgs};
use fleetstream_core::otel::TraceArgs;
use fleetstream_core::telemetry::LogArgs;

use crate::fleet::EventRules;
use crate::rules::Rules;

/// How the processor keeps exactly-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExactlyOnce {
    /// Kafka transactions (Apache Kafka, the default).
    Transactions,
    /// State rebuilt from the outputs; no transactions needed.
    Rebuild,
}

/// fleetstream processor: validates raw positions, routes valid ones to `positions` and
/// `vehicle-latest` and invalid ones to the DLQ, exactly once per (obu_id, seq).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "processor", version, about)]
pub struct Config {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "PROCESSOR_LISTEN", default_value = "0.0.0.0:30001")]
    pub listen: SocketAddr,

    /// Consumer group; processors with the same group share the input partitions.
    #[arg(long, env = "PROCESSOR_GROUP_ID", default_value = "fleetstream-processor")]
    pub group_id: String,

    /// Topic of raw positions to validate.
    #[arg(long, env = "PROCESSOR_INPUT_TOPIC", default_value = fleetstream_core::topics::RAW)]
    pub input_topic: String,

    /// Topic valid, enriched positions go to (key = obu_id).
    #[arg(long, env = "PROCESSOR_POSITIONS_TOPIC", default_value = fleetstream_core::topics::POSITIONS)]
    pub positions_topic: String,

    /// Compacted topic holding the latest valid position of every vehicle.
    #[arg(long, env = "PROCESSOR_LATEST_TOPIC", default_value = fleetstream_core::topics::LATEST)]
    pub latest_topic: String,

    /// Dead-letter topic for invalid records.
    #[arg(long, env = "PROCESSOR_DLQ_TOPIC", default_value = fleetstream_core::topics::DLQ)]
    pub dlq_topic: String,

    /// Topic fleet events go to (key = obu_id).
    #[arg(long, env = "PROCESSOR_EVENTS_TOPIC", default_value = fleetstream_core::topics::EVENTS)]
    pub events_topic: String,

    /// Compacted topic of geofences (key = fence id, value = GeoJSON Feature) every processor
    /// follows; the tracker's API writes it.
    #[arg(long, env = "PROCESSOR_GEOFENCES_TOPIC", default_value = fleetstream_core::topics::GEOFENCES)]
    pub geofences_topic: String,

    /// A GeoJSON FeatureCollection of fences to load at start-up (for demos), besides those of
    /// the geofences topic (which win on the same id).
    #[arg(long, env = "PROCESSOR_GEOFENCES")]
    pub geofences: Option<std::path::PathBuf>,

    /// Create missing output topics at start-up (same partition count as the input;
    /// `vehicle-latest` compacted). Off when topics are managed elsewhere.
    #[arg(long, env = "PROCESSOR_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,

    /// Most records taken from Kafka into one batch (validated, written, then committed).
    #[arg(long, env = "PROCESSOR_BATCH_SIZE", default_value_t = 5_000)]
    pub batch_size: usize,

    /// Longest a batch waits to fill before it is processed.
    #[arg(long, env = "PROCESSOR_BATCH_WAIT", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// First delay before retrying a failed write; doubles per attempt, with jitter.
    #[arg(long, env = "PROCESSOR_RETRY_INITIAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,

    /// Longest delay between retries of a failed write. Retries go on until the write succeeds
    /// or the processor is stopped: a good position is never skipped or dead-lettered.
    #[arg(long, env = "PROCESSOR_RETRY_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// How exactly-once is kept: `transactions` (each batch's outputs, latest states and input
    /// offsets commit atomically in one Kafka transaction; a frozen or partitioned instance is
    /// fenced) or `rebuild` (no transactions: the state is rebuilt from the outputs after a
    /// crash, for brokers without transactions; a zombie instance can duplicate). See
    /// docs/processing.md.
    #[arg(long, env = "PROCESSOR_EXACTLY_ONCE", value_enum, default_value = "transactions")]
    pub exactly_once: ExactlyOnce,

    /// Transactional id of this instance; unique per running instance and stable across its
    /// restarts, so that a restart aborts what a crash left open at once. Default:
    /// `<group-id>-<hostname>-<ops port>`.
    #[arg(long, env = "PROCESSOR_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,

    /// Longest a transaction may stay open: Kafka aborts one left open longer by a crashed or
    /// frozen instance, after which its partitions are readable again. Longer than a broker
    /// failover (the broker session timeout, 9 s, plus a leader election), so that a failover
    /// delays a batch instead of fencing the producer.
    #[arg(long, env = "PROCESSOR_TRANSACTION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub transaction_timeout: Duration,

    /// How long to wait on shutdown for the batch in hand to be written and committed.
    #[arg(long, env = "PROCESSOR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub rules: Rules,

    #[command(flatten)]
    pub events: EventRules,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerArgs,

    /// Share of the positions that arrive without a trace (a receiver with tracing off, a
    /// redrive) that start one here, 0 to 1, when tracing is on. Default 0: only the positions
    /// the receiver traced are traced, whole.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value = "0", value_parser = fleetstream_core::otel::parse_ratio)]
    pub trace_sample_ratio: f64,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
