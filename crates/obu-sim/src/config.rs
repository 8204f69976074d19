//! The simulator's configuration: every flag is also an environment variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng as _;

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

/// The area vehicles drive in: a bounding box in degrees, written longitude first like the
/// tracker's `bbox` query parameter (the GeoJSON and OpenStreetMap order):
/// `MIN_LON,MIN_LAT,MAX_LON,MAX_LAT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    min_lon: f64,
    min_lat: f64,
    max_lon: f64,
    max_lat: f64,
}

impl Area {
    /// A box from its corners in the GeoJSON order: longitudes in [-180, 180], latitudes in
    /// [-90, 90], each minimum below its maximum (no box across the antimeridian). `Err` says
    /// which value is wrong.
    pub fn new(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64) -> Result<Area, String> {
        for lon in [min_lon, max_lon] {
            if !(-180.0..=180.0).contains(&lon) {
                return Err(format!("longitude {lon} is outside [-180, 180]"));
            }
        }
        for lat in [min_lat, max_lat] {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(format!("latitude {lat} is outside [-90, 90]"));
            }
        }
        if min_lon >= max_lon {
            return Err(format!("min_lon {min_lon} is not below max_lon {max_lon}"));
        }
        if min_lat >= max_lat {
            return Err(format!("min_lat {min_lat} is not below max_lat {max_lat}"));
        }
        Ok(Area { min_lon, min_lat, max_lon, max_lat })
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }

    /// A uniformly random point inside, as (lat, lon).
    pub fn random_point(&self, rng: &mut StdRng) -> (f64, f64) {
        // Latitude first: the draws of a seed stay those of earlier versions.
        let lat = rng.random_range(self.min_lat..=self.max_lat);
        (lat, rng.random_range(self.min_lon..=self.max_lon))
    }

    /// The nearest point inside, as (lat, lon).
    pub fn clamp(&self, lat: f64, lon: f64) -> (f64, f64) {
        (lat.clamp(self.min_lat, self.max_lat), lon.clamp(self.min_lon, self.max_lon))
    }
}

impl FromStr for Area {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| format!("the area must be MIN_LON,MIN_LAT,MAX_LON,MAX_LAT in degrees, longitude first; {why}");
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
            return Err(invalid(format!("got {} values in `{s}`", parts.len())));
        };
        let number = |part: &str| part.parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| invalid(format!("`{part}` is not a number")));
        Area::new(number(min_lon)?, number(min_lat)?, number(max_lon)?, number(max_lat)?).map_err(invalid)
    }
}

/// The local addresses connections are made from (`--source-addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddresses(Vec<IpAddr>);

impl SourceAddresses {
    /// Most addresses one flag may name: a range typo (`127.0.0.1-127.1.0.1`) is refused
    /// instead of becoming a list of millions.
    pub const MAX: usize = 65_536;

    /// The address of connection `n`: the addresses in turn.
    pub fn nth(&self, n: usize) -> IpAddr {
        self.0[n % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SourceAddresses {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let address = |part: &str| part.trim().parse::<IpAddr>().map_err(|_| format!("`{}` is not an IP address", part.trim()));
        let mut all = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('-') {
                None => all.push(address(item)?),
                Some((first, last)) => {
                    let (IpAddr::V4(first), IpAddr::V4(last)) = (address(first)?, address(last)?) else {
                        return Err(format!("`{item}`: ranges are of IPv4 addresses; list IPv6 addresses one by one"));
                    };
                    let (first, last) = (u32::from(first), u32::from(last));
                    if first > last {
                        return Err(format!("`{item}`: the range ends before it starts"));
                    }
                    if (last - first) as usize >= Self::MAX {
                        return Err(format!("`{item}`: more than {} addresses", Self::MAX));
                    }
                    all.extend((first..=last).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
                }
            }
            if all.len() > Self::MAX {
                return Err(format!("more than {} addresses", Self::MAX));
            }
        }
        if all.is_empty() {
            return Err("no address given: a list like 127.0.0.1,127.0.0.2 or a range like 127.0.0.1-127.0.0.8".into());
        }
        Ok(SourceAddresses(all))
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

    /// Local addresses to connect from, spread over the connections in turn: a list
    /// (`127.0.0.1,127.0.0.2`) and/or ranges (`127.0.0.1-127.0.0.8`). One source address has
    /// about 28,000 ephemeral ports towards one receiver (net.ipv4.ip_local_port_range), so
    /// 100,000 connections on loopback need at least four. Default: the kernel's choice.
    #[arg(long, env = "SIM_SOURCE_ADDRESSES")]
    pub source_addresses: Option<SourceAddresses>,

    /// The boot number every position carries: a device that restarts counts `seq` from 1 again
    /// under a higher boot, so nothing it sends after a restart is taken for a duplicate.
    /// Default: the start time in Unix milliseconds (higher at every start); 0 sends none.
    #[arg(long, env = "SIM_BOOT")]
    pub boot: Option<u64>,

    /// Device token sent as `Authorization: Bearer` (must allow every simulated obu_id).
    #[arg(long, env = "SIM_TOKEN", hide_env_values = true)]
    pub token: Option<fleetstream_core::secret::Secret>,

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

    /// Fleet mode: area vehicles drive in, MIN_LON,MIN_LAT,MAX_LON,MAX_LAT in degrees: longitude
    /// first, like the tracker's bbox (default Berlin).
    #[arg(long, env = "SIM_AREA", default_value = "13.20,52.40,13.60,52.60")]
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

    /// Share of positions carrying an alarm attribute (`sos`, `power_cut` or `tamper`), which
    /// the processor turns into `alarm` events.
    #[arg(long, env = "SIM_ALARM_RATIO", default_value_t = 0.0)]
    pub alarm_ratio: f64,

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

    /// Leave acks of the run's first DURATION out of the ack latency (summary and /metrics):
    /// a fleet connecting is not its steady state. Default: count every ack.
    #[arg(long, env = "SIM_LATENCY_FROM", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency_from: Duration,

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

impl Config {
    /// The boot the positions carry (see `--boot`); [`crate::run`] fixes it at start.
    pub fn boot_number(&self) -> u64 {
        self.boot.unwrap_or(0)
    }
}

#[cfg(test)]
impl Config {
    /// Every flag at its default (fleet mode in Berlin), for unit tests.
    pub(crate) fn defaults() -> Config {
        <Config as clap::Parser>::try_parse_from(["obu-sim"]).expect("the defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_longitude_first_like_the_trackers_bbox() {
        let berlin: Area = "13.20,52.40,13.60,52.60".parse().expect("Berlin");
        assert_eq!(berlin, Config::defaults().area, "the default is Berlin");
        assert!(berlin.contains(52.52, 13.40), "Alexanderplatz is in Berlin");
        assert!(!berlin.contains(13.40, 52.52), "latitude and longitude are not interchangeable");
        assert_eq!(berlin.clamp(53.0, 13.0), (52.60, 13.20));
        assert_eq!(" -4.0, 40.0 ,-3.0,41.0".parse::<Area>(), Area::new(-4.0, 40.0, -3.0, 41.0), "Madrid, with spaces");
    }

    #[test]
    fn bad_areas_say_what_is_wrong() {
        for (bad, why) in [
            ("13.2,52.4,13.6", "got 3 values"),
            ("13.2,52.4,13.6,52.6,1", "got 5 values"),
            ("13.2,north,13.6,52.6", "`north` is not a number"),
            ("13.2,NaN,13.6,52.6", "`NaN` is not a number"),
            ("13.2,52.4,inf,52.6", "`inf` is not a number"),
            ("-181,52.4,13.6,52.6", "longitude -181 is outside [-180, 180]"),
            ("13.2,-91,13.6,52.6", "latitude -91 is outside [-90, 90]"),
            // Kansas in the old latitude-first order: -100 is no latitude.
            ("40,-100,45,-90", "latitude -100 is outside [-90, 90]"),
            ("13.6,52.4,13.2,52.6", "min_lon 13.6 is not below max_lon 13.2"),
            ("13.2,52.6,13.6,52.4", "min_lat 52.6 is not below max_lat 52.4"),
            ("13.2,52.4,13.2,52.6", "min_lon 13.2 is not below max_lon 13.2"),
        ] {
            let error = bad.parse::<Area>().expect_err(bad);
            assert!(error.starts_with("the area must be MIN_LON,MIN_LAT,MAX_LON,MAX_LAT"), "{bad}: {error}");
            assert!(error.contains(why), "{bad}: {error:?} lacks {why:?}");
        }
    }

    #[test]
    fn source_addresses_are_lists_and_ranges_taken_in_turn() {
        let sources: SourceAddresses = "127.0.0.1-127.0.0.3, ::1,10.0.0.255-10.0.1.0".parse().expect("valid");
        let want = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1", "10.0.0.255", "10.0.1.0"];
        assert_eq!(sources.len(), want.len());
        for (n, ip) in want.iter().enumerate() {
            assert_eq!(sources.nth(n).to_string(), *ip, "connection {n}");
        }
        assert_eq!(sources.nth(6).to_string(), "127.0.0.1", "then from the start again");
        for (bad, why) in [
            ("127.0.0.8-127.0.0.1", "ends before it starts"),
            ("localhost", "`localhost` is not an IP address"),
            ("::1-::2", "ranges are of IPv4 addresses"),
            ("10.0.0.0-10.1.0.0", "more than 65536 addresses"),
            (" , ", "no address given"),
        ] {
            let error = bad.parse::<SourceAddresses>().expect_err(bad);
            assert!(error.contains(why), "{bad}: {error:?} lacks {why:?}");
        }
    }

    #[test]
    fn a_bad_area_flag_is_refused_with_the_reason() {
        let error = <Config as clap::Parser>::try_parse_from(["obu-sim", "--area=52.40,13.20,52.30,13.60"]).expect_err("a box upside down");
        let text = error.to_string();
        assert!(text.contains("--area") && text.contains("min_lon 52.4 is not below max_lon 52.3"), "{text}");
    }
}
