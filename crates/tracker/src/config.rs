//! The tracker's configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::num::NonZeroUsize;
use std::time::Duration;

use fleetstream_core::kafka::{KafkaArgs, ProducerArgs};
use fleetstream_core::otel::TraceArgs;
use fleetstream_core::telemetry::LogArgs;

use crate::auth::ApiAuth;
use fleetstream_core::secret::Secret;

/// fleetstream tracker: keeps every valid position for a retention period, serves the latest
/// position and the track of every vehicle over HTTP, and draws them on a live map.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tracker", version, about)]
pub struct Config {
    /// Address of the map page, the query API, the live feed and /metrics, /healthz, /readyz.
    #[arg(long, env = "TRACKER_LISTEN", default_value = "0.0.0.0:30002")]
    pub listen: SocketAddr,

    /// Whether /api requests need a token (see --api-tokens-file).
    #[arg(long, env = "TRACKER_API_AUTH", value_enum, default_value = "token")]
    pub api_auth: ApiAuth,

    /// File of API tokens, one per line: `TOKEN ROLE` or `sha256:HEX ROLE` (the token's SHA-256,
    /// so the file need not hold the token), ROLE `viewer` (reads) or `admin` (also geofence
    /// writes and decommissioning vehicles); `#` starts a comment. Read at start-up.
    #[arg(long, env = "TRACKER_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,

    /// API tokens in the same format as --api-tokens-file, entries separated by `;`
    /// (used together with the file, if both are given).
    #[arg(long, env = "TRACKER_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<Secret>,

    /// Where positions are kept: `sqlite://FILE` (embedded, created if missing; `sqlite::memory:`
    /// for a throw-away one) or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://fleetstream-tracker.db", hide_env_values = true)]
    pub database_url: Secret,

    /// Connections to PostgreSQL (the SQLite backend always uses one writer and one reader).
    #[arg(long, env = "TRACKER_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,

    /// Consumer group over the positions topic; trackers with the same group share it.
    #[arg(long, env = "TRACKER_GROUP_ID", default_value = "fleetstream-tracker")]
    pub group_id: String,

    /// Topic of validated positions (written by the processor).
    #[arg(long, env = "TRACKER_POSITIONS_TOPIC", default_value = fleetstream_core::topics::POSITIONS)]
    pub positions_topic: String,

    /// Compacted topic of the latest position per vehicle, read whole at start-up so the map
    /// is complete before the positions backlog is consumed, then followed for decommissioned
    /// vehicles (tombstones, which the admin API writes).
    #[arg(long, env = "TRACKER_LATEST_TOPIC", default_value = fleetstream_core::topics::LATEST)]
    pub latest_topic: String,

    /// Topic of fleet events (written by the processor in transactions, read committed only),
    /// consumed in the same group as the positions topic.
    #[arg(long, env = "TRACKER_EVENTS_TOPIC", default_value = fleetstream_core::topics::EVENTS)]
    pub events_topic: String,

    /// Compacted topic of the geofences (GeoJSON Features keyed by fence id): followed whole to
    /// answer `/api/geofences`, written by its POST/PUT/DELETE; created if missing.
    #[arg(long, env = "TRACKER_GEOFENCES_TOPIC", default_value = fleetstream_core::topics::GEOFENCES)]
    pub geofences_topic: String,

    /// Most positions (and events) written to the database in one transaction.
    #[arg(long, env = "TRACKER_BATCH_SIZE", default_value_t = 1_000)]
    pub batch_size: usize,

    /// Longest a partial batch waits before it is written (and its offsets committed).
    #[arg(long, env = "TRACKER_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,

    /// How long positions, events and trips are kept, by device time; older ones are deleted.
    #[arg(long, env = "TRACKER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// How often positions, events and trips older than the retention are deleted.
    #[arg(long, env = "TRACKER_PRUNE_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub prune_interval: Duration,

    /// A vehicle whose latest position is older than this is shown as offline.
    #[arg(long, env = "TRACKER_ONLINE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub online_timeout: Duration,

    /// Longest time range one track request may ask for (larger ones get 400 range_too_large).
    #[arg(long, env = "TRACKER_MAX_TRACK_RANGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_track_range: Duration,

    /// Most points one track response holds (and the largest `limit` accepted).
    #[arg(long, env = "TRACKER_MAX_TRACK_POINTS", default_value_t = 10_000)]
    pub max_track_points: usize,

    /// Most events or trips one response holds (and the largest `limit` accepted).
    #[arg(long, env = "TRACKER_MAX_EVENTS", default_value_t = 1_000)]
    pub max_events: usize,

    /// Map tile URL template ({z}/{x}/{y}); empty for no tiles (markers on a blank background).
    #[arg(long, env = "TRACKER_TILE_URL", default_value = "https://tile.openstreetmap.org/{z}/{x}/{y}.png")]
    pub tile_url: String,

    /// Attribution shown under the tiles (HTML).
    #[arg(
        long,
        env = "TRACKER_TILE_ATTRIBUTION",
        default_value = "&copy; <a href=\"https://www.openstreetmap.org/copyright\">OpenStreetMap</a> contributors"
    )]
    pub tile_attribution: String,

    /// How far back the trail of a clicked vehicle reaches on the map.
    #[arg(long, env = "TRACKER_TRAIL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub trail: Duration,

    /// Updates buffered per live-feed client; a client further behind gets a `lagged` event.
    #[arg(long, env = "TRACKER_LIVE_BUFFER", default_value = "4096")]
    pub live_buffer: NonZeroUsize,

    /// First delay before retrying a failed database write; doubles per attempt, with jitter.
    #[arg(long, env = "TRACKER_RETRY_INITIAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,

    /// Longest delay between retries of a failed database write. Retries go on until the write
    /// succeeds or the tracker is stopped; nothing is committed before it succeeds.
    #[arg(long, env = "TRACKER_RETRY_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// How long shutdown waits for the batch in hand to be written and committed.
    #[arg(long, env = "TRACKER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The producer of geofence writes.
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
