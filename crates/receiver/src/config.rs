//! The receiver's configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleetstream_core::kafka::{KafkaArgs, ProducerArgs};
use fleetstream_core::otel::TraceArgs;
use fleetstream_core::telemetry::LogArgs;

/// How devices prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every device must present a token bound to its obu_id(s).
    Token,
    /// No authentication: for local demos only.
    None,
}

/// fleetstream receiver: devices stream positions over WebSocket; each is acked once Kafka has it.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "receiver", version, about)]
pub struct Config {
    /// Address to listen on for WebSocket (/ws) and operations (/metrics, /healthz, /readyz).
    #[arg(long, env = "RECEIVER_LISTEN", default_value = "0.0.0.0:30000")]
    pub listen: SocketAddr,

    /// Topic raw positions are written to (key = obu_id).
    #[arg(long, env = "RECEIVER_TOPIC", default_value = fleetstream_core::topics::RAW)]
    pub topic: String,

    /// Topic refused input is kept in, with headers saying why.
    #[arg(long, env = "RECEIVER_DLQ_TOPIC", default_value = fleetstream_core::topics::DLQ)]
    pub dlq_topic: String,

    /// Largest text frame accepted, in bytes; larger ones get a `frame_too_large` error frame.
    /// Frames over 4x this size close the connection with 1009 (message too big).
    #[arg(long, env = "RECEIVER_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Most positions one frame may carry; more gets a `too_many_positions` error frame.
    #[arg(long, env = "RECEIVER_MAX_POSITIONS_PER_FRAME", default_value_t = 500)]
    pub max_positions_per_frame: usize,

    /// Most concurrent device connections; the next gets `too_many_connections` and close 1013.
    #[arg(long, env = "RECEIVER_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most positions of one connection waiting for Kafka; at the bound the receiver stops
    /// reading that socket (back-pressure).
    #[arg(long, env = "RECEIVER_MAX_IN_FLIGHT_PER_CONNECTION", default_value_t = 1_000)]
    pub max_in_flight_per_connection: usize,

    /// Most positions waiting for Kafka in the whole process; at the bound every connection
    /// stops reading until deliveries complete.
    #[arg(long, env = "RECEIVER_MAX_IN_FLIGHT", default_value_t = 100_000)]
    pub max_in_flight: usize,

    /// Positions per second one connection may send (token bucket); 0 turns the limit off.
    /// Over the limit: `rate_limited` error frames (retryable).
    #[arg(long, env = "RECEIVER_RATE_LIMIT", default_value_t = 1_000.0)]
    pub rate_limit: f64,

    /// Burst allowance of the per-connection rate limit, in positions.
    #[arg(long, env = "RECEIVER_RATE_BURST", default_value_t = 2_000.0)]
    pub rate_burst: f64,

    /// Limit violations (rate, frame size, positions per frame, binary frames) a connection may
    /// commit within 10 seconds before it is closed with 1008 (policy violation).
    #[arg(long, env = "RECEIVER_ABUSE_LIMIT", default_value_t = 20)]
    pub abuse_limit: u32,

    /// Ping and pong frames one connection may send per second (as a burst, or on average);
    /// each one beyond counts as a limit violation towards --abuse-limit. 0 turns the limit off.
    #[arg(long, env = "RECEIVER_PING_RATE_LIMIT", default_value_t = 10.0)]
    pub ping_rate_limit: f64,

    /// Most TCP connections open at once from one source address (WebSocket sessions and HTTP
    /// requests alike); the next gets `429 Too Many Requests` and is closed. 0: no limit.
    #[arg(long, env = "RECEIVER_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Longest a client may take to send a complete HTTP request head (the WebSocket upgrade
    /// request, or a /metrics request), counted from the connection's start or its previous
    /// answer; slower connections are closed without an answer (slowloris).
    #[arg(long, env = "RECEIVER_UPGRADE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub upgrade_timeout: Duration,

    /// Largest HTTP request head accepted (request line and headers, in bytes; at most 100
    /// header fields); larger ones get `431 Request Header Fields Too Large`.
    #[arg(long, env = "RECEIVER_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Longest the receiver waits to write an answer frame to a device that does not read its
    /// socket; then the connection is closed (its unanswered positions are resent by the device).
    #[arg(long, env = "RECEIVER_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Device authentication: token (default) or none (local demos only).
    #[arg(long, env = "RECEIVER_AUTH", value_enum, default_value = "token")]
    pub auth: AuthMode,

    /// File of device tokens, one per line: `TOKEN OBU_IDS` or `sha256:HEX OBU_IDS`, where
    /// OBU_IDS is a comma-separated list of ids or `*` for any. `#` starts a comment.
    #[arg(long, env = "RECEIVER_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Device tokens inline, in the file's line format, entries separated by `;`.
    #[arg(long, env = "RECEIVER_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<fleetstream_core::secret::Secret>,

    /// How often the token file is checked for changes; a changed file (or SIGHUP) reloads
    /// the tokens without a restart, and connections whose token is gone are closed (4001).
    #[arg(long, env = "RECEIVER_AUTH_TOKENS_POLL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub auth_tokens_poll: std::time::Duration,

    /// PEM certificate chain: with --tls-key, devices connect with wss:// (TLS via rustls).
    #[arg(long, env = "RECEIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "RECEIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Longest a TLS handshake may take before the connection is dropped.
    #[arg(long, env = "RECEIVER_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// How long to wait on shutdown for in-flight positions to be acked before closing sockets.
    #[arg(long, env = "RECEIVER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Name of this receiver instance, in DLQ headers and logs (default: a random id).
    #[arg(long, env = "RECEIVER_INSTANCE_ID")]
    pub instance_id: Option<String>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerArgs,

    /// Share of positions traced when tracing is on (--otlp-endpoint), 0 to 1: the decision
    /// is made here, where a position enters, and the processor and tracker follow it.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value = "0.01", value_parser = fleetstream_core::otel::parse_ratio)]
    pub trace_sample_ratio: f64,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
