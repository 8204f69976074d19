//! The simulator's configuration: every flag is also an environment variable.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use fleetstream_core::telemetry::LogArgs;

/// What the simulator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Vehicles driving plausible routes, each reporting at an interval (demos).
    Fleet,
    /// Positions at a fixed total rate or as fast as acks allow (benchmarks).
    Load,
}

/// A kind of bad input the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Fault {
    /// Latitude outside [-90, 90] (processor: lat_out_of_range).
    BadCoords,
    /// The (0, 0) fix (processor: null_island).
    NullIsland,
    /// Timestamp an hour ahead (processor: future_timestamp).
    FutureTs,
    /// A jump of ~50 km (processor: teleport).
    Teleport,
    /// A frame that is not JSON (receiver: malformed_json).
    NonJson,
    /// A position without `lat` (receiver: missing_field).
    MissingField,
    /// `lat` as a string (receiver: wrong_type).
    WrongType,
    /// A `NaN` token (receiver: non_finite_number).
    Nan,
}

/// A bounding box: `MIN_LAT,MIN_LON,MAX_LAT,MAX_LON`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    pub min_lat: f64,
    pub min_lon: f64,
    pub max_lat: f64,
    pub max_lon: f64,
}

impl FromStr for Area {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>().map_err(|e| format!("`{x}`: {e}")))
            .collect::<Result<_, _>>()?;
        let [min_lat, min_lon, max_lat, max_lon] = v[..] else {
            return Err("expected MIN_LAT,MIN_LON,MAX_LAT,MAX_LON".into());
        };
        if !(min_lat < max_lat && min_lon < max_lon && (-90.0..=90.0).contains(&min_lat) && (-90.0..=90.0).contains(&max_lat)
            && (-180.0..=180.0).contains(&min_lon) && (-180.0..=180.0).contains(&max_lon))
        {
            return Err("the box must have MIN < MAX, latitudes in [-90, 90] and longitudes in [-180, 180]".into());
        }
        Ok(Area { min_lat, min_lon, max_lat, max_lon })
    }
}

impl Area {
    /// Berlin, inside the ring road and a bit beyond.
    pub const BERLIN: Area = Area { min_lat: 52.40, min_lon: 13.20, max_lat: 52.60, max_lon: 13.60 };

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }
}

/// fleetstream OBU simulator: a fleet of vehicles (or a load generator) streaming positions to
/// the receiver over WebSocket, resending whatever was not acked.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "obu-sim", version, about)]
pub struct Config {
    /// Receiver WebSocket URL.
    #[arg(long, env = "SIM_URL", default_value = "ws://127.0.0.1:30000/ws")]
    pub url: String,

    /// fleet: vehicles driving routes (default); load: a rate of positions for benchmarks.
    #[arg(long, env = "SIM_MODE", value_enum, default_value = "fleet")]
    pub mode: Mode,

    /// Number of vehicles.
    #[arg(long, env = "SIM_VEHICLES", default_value_t = 5)]
    pub vehicles: u64,

    /// obu_id of the first vehicle; the others follow consecutively.
    #[arg(long, env = "SIM_FIRST_OBU_ID", default_value_t = 1)]
    pub first_obu_id: u64,

    /// WebSocket connections: 0 = one per vehicle (realistic); N = vehicles multiplexed over N.
    #[arg(long, env = "SIM_CONNECTIONS", default_value_t = 0)]
    pub connections: usize,

    /// Device token sent as `Authorization: Bearer` (must allow every simulated obu_id).
    #[arg(long, env = "SIM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM file of the CA (or self-signed certificate) to trust for a wss:// URL, instead of
    /// the public web roots.
    #[arg(long, env = "SIM_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Fleet mode: how often each vehicle reports.
    #[arg(long, env = "SIM_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Fleet mode: random +/- variation of each report interval.
    #[arg(long, env = "SIM_JITTER", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub jitter: Duration,

    /// Fleet mode: area vehicles drive in, MIN_LAT,MIN_LON,MAX_LAT,MAX_LON (default Berlin).
    #[arg(long, env = "SIM_AREA", default_value = "52.40,13.20,52.60,13.60")]
    pub area: Area,

    /// Fleet mode: top speed of a vehicle, km/h.
    #[arg(long, env = "SIM_MAX_SPEED_KMH", default_value_t = 90.0)]
    pub max_speed_kmh: f64,

    /// Fleet mode: strongest acceleration, m/s^2.
    #[arg(long, env = "SIM_MAX_ACCEL", default_value_t = 2.5)]
    pub max_accel: f64,

    /// Fleet mode: strongest braking, m/s^2.
    #[arg(long, env = "SIM_MAX_DECEL", default_value_t = 4.0)]
    pub max_decel: f64,

    /// Fleet mode: GPS noise added to reported fixes, metres.
    #[arg(long, env = "SIM_GPS_NOISE_M", default_value_t = 3.0)]
    pub gps_noise_m: f64,

    /// Seed of every random choice: the same seed drives the same tracks.
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Share of generated positions replaced by a fault (0.0 to 1.0).
    #[arg(long, env = "SIM_INVALID_RATIO", default_value_t = 0.0)]
    pub invalid_ratio: f64,

    /// Fault kinds to inject, comma-separated.
    #[arg(long, env = "SIM_INVALID_KINDS", value_enum, value_delimiter = ',', default_value = "bad-coords,null-island,non-json,missing-field")]
    pub invalid_kinds: Vec<Fault>,

    /// Share of positions sent twice (a resend the receiver acks and the processor drops).
    #[arg(long, env = "SIM_DUPLICATE_RATIO", default_value_t = 0.0)]
    pub duplicate_ratio: f64,

    /// Share of vehicles speaking the seed's legacy `{"obuid","lat","lon"}` form.
    #[arg(long, env = "SIM_LEGACY_RATIO", default_value_t = 0.0)]
    pub legacy_ratio: f64,

    /// Unacked positions kept per vehicle for resending; beyond it the oldest is dropped.
    #[arg(long, env = "SIM_BUFFER", default_value_t = 1_000)]
    pub buffer: usize,

    /// First reconnect delay; doubles per failed attempt, with jitter.
    #[arg(long, env = "SIM_RECONNECT_INITIAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub reconnect_initial: Duration,

    /// Longest reconnect delay.
    #[arg(long, env = "SIM_RECONNECT_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,

    /// Stop generating after this long (default: run until Ctrl-C or --count).
    #[arg(long, env = "SIM_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Stop generating after this many positions in total.
    #[arg(long, env = "SIM_COUNT")]
    pub count: Option<u64>,

    /// Load mode: total positions per second; 0 = as fast as acks allow.
    #[arg(long, env = "SIM_RATE", default_value_t = 1_000.0)]
    pub rate: f64,

    /// Positions per frame (a JSON array when above 1).
    #[arg(long, env = "SIM_BATCH", default_value_t = 1)]
    pub batch: usize,

    /// Load mode: most unacked positions per connection.
    #[arg(long, env = "SIM_MAX_IN_FLIGHT", default_value_t = 2_000)]
    pub max_in_flight: usize,

    /// On stop, how long to wait for outstanding acks before the summary.
    #[arg(long, env = "SIM_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Serve /metrics on this address (off by default).
    #[arg(long, env = "SIM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// No live progress line.
    #[arg(long, env = "SIM_QUIET")]
    pub quiet: bool,

    /// Print the final summary as JSON (for scripts).
    #[arg(long, env = "SIM_JSON")]
    pub json: bool,

    #[command(flatten)]
    pub log: LogArgs,
}
