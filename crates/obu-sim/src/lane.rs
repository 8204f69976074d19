//! One WebSocket connection and the vehicles it carries.
//!
//! Positions are generated into each vehicle's buffer whether or not the connection is up (an
//! OBU keeps recording while offline); whatever is unsent goes out as soon as it is. A position
//! leaves the buffer only when acked, refused for good, or pushed out by a full buffer (counted
//! as dropped). On reconnect every unacked position is sent again with its original seq.
//!
//! Writing runs in a task of its own so that acks keep being read while the receiver applies
//! back-pressure: a lane that stopped reading could never get the acks that free the receiver.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use fleetstream_core::frames::ServerFrame;
use fleetstream_core::{now_ms, Attributes, Position};

use crate::config::{Config, Fault, Mode};
use crate::movement::{Fix, Limits, Vehicle};
use crate::stats::{AckedSeqs, Stats};

/// What the lane does with a frame once it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A generated position with its own seq: kept until the receiver acks it (or refuses it
    /// for good), and resent with the same seq after a reconnect.
    UntilAcked { seq: u64 },
    /// Sent once and forgotten: fault frames and deliberate duplicate copies, whose answers
    /// are only counted.
    FireAndForget,
}

/// A frame waiting to be sent, or sent and waiting for its ack.
#[derive(Debug)]
struct Pending {
    delivery: Delivery,
    text: String,
    legacy: bool,
    /// When it was last written to the socket; `None` = not sent on this connection.
    sent_at: Option<Instant>,
    /// Not before this time (after a retryable refusal).
    retry_at: Option<Instant>,
    sends: u32,
}

impl Pending {
    fn until_acked(seq: u64, text: String, legacy: bool) -> Self {
        Pending { delivery: Delivery::UntilAcked { seq }, text, legacy, sent_at: None, retry_at: None, sends: 0 }
    }

    /// Never matched to an ack (it is gone once sent), so never treated as legacy either.
    fn fire_and_forget(text: String) -> Self {
        Pending { delivery: Delivery::FireAndForget, text, legacy: false, sent_at: None, retry_at: None, sends: 0 }
    }

    /// The seq an ack or a refusal names; none for a fire-and-forget frame.
    fn seq(&self) -> Option<u64> {
        match self.delivery {
            Delivery::UntilAcked { seq } => Some(seq),
            Delivery::FireAndForget => None,
        }
    }

    fn is_fire_and_forget(&self) -> bool {
        self.delivery == Delivery::FireAndForget
    }
}

/// The JSON a device sends for a structurally valid position, whether or not it is believable
/// (the processor judges that): the shared [`Position`], or the legacy form.
fn position_json(position: &Position, legacy: bool) -> serde_json::Result<String> {
    if legacy {
        serde_json::to_string(&fleetstream_core::wire::LegacyPosition { obuid: position.obu_id, lat: position.lat, lon: position.lon })
    } else {
        serde_json::to_string(position)
    }
}

/// `x` rounded to `decimals` places, as a device reports it (7 for coordinates: about a
/// centimetre; 1 for speed and heading), which also keeps frames short.
fn rounded(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

struct SimVehicle {
    obu_id: u64,
    next_seq: u64,
    model: Vehicle,
    pending: VecDeque<Pending>,
    next_report: Instant,
    base: (f64, f64),
    /// Speaks the seed's legacy form (a vehicle's format never changes).
    legacy: bool,
    /// The seqs the receiver acknowledged.
    acked: AckedSeqs,
}

/// Shared stop signals and budget of a run.
#[derive(Clone)]
pub struct Control {
    /// Stop generating (duration, count or Ctrl-C reached).
    pub stop_generating: CancellationToken,
    /// Stop everything now (drain timeout).
    pub hard_stop: CancellationToken,
    /// Positions left to generate, when `--count` is set.
    pub budget: Option<Arc<AtomicU64>>,
    /// TLS settings for wss:// when a CA was given (else the public web roots).
    pub connector: Option<tokio_tungstenite::Connector>,
    /// Connection attempts in progress, at most [`HANDSHAKES`]: a fleet of 100,000 would
    /// otherwise send 100,000 SYNs at once, overflow the receiver's listen backlog and retry
    /// in waves of timeouts.
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

/// Longest a lane sleeps when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(10);

/// Most connection attempts (TCP, TLS and WebSocket handshakes) at once, over all lanes.
pub const HANDSHAKES: usize = 256;

/// Socket read buffer of each connection. tungstenite's default, 128 KiB, is zero-filled
/// before the first read: 13 GB for 100,000 idle connections. Acks are small; larger reads
/// just take several calls.
const READ_BUFFER_BYTES: usize = 4 * 1024;

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("budget", &self.budget).field("tls", &self.connector.is_some()).finish()
    }
}

impl Control {
    fn take_budget(&self, n: u64) -> u64 {
        let Some(b) = &self.budget else { return n };
        let mut current = b.load(Ordering::Relaxed);
        loop {
            let take = current.min(n);
            match b.compare_exchange(current, current - take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if current - take == 0 {
                        self.stop_generating.cancel();
                    }
                    return take;
                }
                Err(now) => current = now,
            }
        }
    }
}

pub struct Lane {
    id: usize,
    config: Arc<Config>,
    stats: Arc<Stats>,
    control: Control,
    vehicles: Vec<SimVehicle>,
    index: HashMap<u64, usize>,
    rng: StdRng,
    round_robin: usize,
    lane_rate: f64,
    started: Instant,
    generated: u64,
    unacked: usize,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Lane {
    pub fn new(id: usize, obu_ids: Vec<u64>, lanes: usize, config: Arc<Config>, stats: Arc<Stats>, control: Control) -> Self {
        let limits = Limits {
            max_speed_ms: config.max_speed_kmh / 3.6,
            max_accel: config.max_accel,
            max_decel: config.max_decel,
            noise_m: config.gps_noise_m,
        };
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(id as u64 * 7919));
        let now = Instant::now();
        let vehicles: Vec<SimVehicle> = obu_ids
            .iter()
            .map(|&obu_id| {
                let mut model = Vehicle::new(config.area, limits, config.seed, obu_id);
                let base = config.area.random_point(model.rng());
                // Spread first reports over one interval so a fleet does not report in lockstep.
                let offset = config.interval.mul_f64(rng.random_range(0.0..1.0));
                let legacy = config.legacy_ratio > 0.0 && rng.random_bool(config.legacy_ratio.clamp(0.0, 1.0));
                SimVehicle { obu_id, next_seq: 1, model, pending: VecDeque::new(), next_report: now + offset, base, legacy, acked: AckedSeqs::default() }
            })
            .collect();
        let index = vehicles.iter().enumerate().map(|(i, v)| (v.obu_id, i)).collect();
        Lane {
            id,
            lane_rate: config.rate / lanes.max(1) as f64,
            config,
            stats,
            control,
            vehicles,
            index,
            rng,
            round_robin: 0,
            started: now,
            generated: 0,
            unacked: 0,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = self.config.reconnect_initial;
        let mut next_connect = Instant::now();
        let mut out: Option<mpsc::UnboundedSender<Message>> = None;
        let mut reader: Option<futures_util::stream::SplitStream<Ws>> = None;
        loop {
            if self.control.hard_stop.is_cancelled() || (self.control.stop_generating.is_cancelled() && self.unacked == 0) {
                if let Some(tx) = out.take() {
                    let _ = tx.send(Message::Close(None));
                }
                break;
            }
            let wake = self.next_wake();
            let connected = reader.is_some();
            tokio::select! {
                () = self.control.hard_stop.cancelled() => continue,
                () = self.control.stop_generating.cancelled(), if !self.control.stop_generating.is_cancelled() => continue,
                () = tokio::time::sleep_until(next_connect), if !connected => {
                    match self.connect().await {
                        Ok(ws) => {
                            backoff = self.config.reconnect_initial;
                            self.stats.connects.inc();
                            self.stats.connected.inc();
                            let (sink, stream) = ws.split();
                            let (tx, rx) = mpsc::unbounded_channel();
                            tokio::spawn(write_frames(sink, rx));
                            reader = Some(stream);
                            out = Some(tx);
                            self.send_unsent(out.as_ref());
                        }
                        Err(error) => {
                            tracing::debug!(lane = self.id, %error, "connect failed");
                            next_connect = Instant::now() + jittered(&mut self.rng, backoff);
                            backoff = (backoff * 2).min(self.config.reconnect_max);
                        }
                    }
                }
                frame = next_frame(&mut reader), if connected => {
                    match frame {
                        Some(text) => self.on_frame(&text),
                        None => {
                            // Lost: everything unacked goes out again on the next connection.
                            reader = None;
                            out = None;
                            self.stats.disconnects.inc();
                            self.stats.connected.dec();
                            for v in &mut self.vehicles {
                                for p in &mut v.pending {
                                    p.sent_at = None;
                                }
                            }
                            next_connect = Instant::now() + jittered(&mut self.rng, backoff);
                            backoff = (backoff * 2).min(self.config.reconnect_max);
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    self.generate();
                    self.send_unsent(out.as_ref());
                }
            }
        }
        if reader.is_some() {
            self.stats.connected.dec();
        }
        self.stats.record_acked(self.vehicles.iter_mut().map(|v| (v.obu_id, std::mem::take(&mut v.acked))));
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let mut request = self.config.url.as_str().into_client_request()?;
        if let Some(token) = &self.config.token {
            request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {}", token.expose()))?);
        }
        let _permit = tokio::select! {
            permit = self.control.handshakes.acquire() => permit?,
            () = self.control.hard_stop.cancelled() => anyhow::bail!("stopped before connecting"),
        };
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let connect = async {
            let Some(sources) = &self.config.source_addresses else {
                return Ok(tokio_tungstenite::connect_async_tls_with_config(request, Some(config), false, self.control.connector.clone()).await?);
            };
            let source = sources.nth(self.id);
            let tcp = connect_from(source, request.uri()).await?;
            anyhow::Ok(tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), self.control.connector.clone()).await?)
        };
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), connect).await??;
        Ok(ws)
    }

    /// When the lane next has something to do.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let generating = !self.control.stop_generating.is_cancelled();
        // Everything else that ends a wait (an answer, a stop, a reconnect) is a branch of the
        // lane's select!: the fallback only bounds the wait. Short, it would cost an idle fleet
        // of 100,000 vehicles reporting once a minute 200,000 wake-ups a second.
        let mut wake = now + IDLE_WAKE;
        if generating {
            match self.config.mode {
                Mode::Fleet => {
                    if let Some(t) = self.vehicles.iter().map(|v| v.next_report).min() {
                        wake = wake.min(t);
                    }
                }
                Mode::Load => wake = wake.min(now + Duration::from_millis(5)),
            }
        }
        for v in &self.vehicles {
            for p in &v.pending {
                if let Some(r) = p.retry_at {
                    wake = wake.min(r);
                }
            }
        }
        wake
    }

    /// Generates what is due.
    fn generate(&mut self) {
        if self.control.stop_generating.is_cancelled() {
            return;
        }
        let now = Instant::now();
        match self.config.mode {
            Mode::Fleet => {
                for i in 0..self.vehicles.len() {
                    if self.vehicles[i].next_report > now {
                        continue;
                    }
                    if self.control.take_budget(1) == 0 {
                        return;
                    }
                    let jitter = self.config.jitter.as_secs_f64();
                    let interval = self.config.interval.as_secs_f64();
                    let dt = (interval + self.rng.random_range(-jitter..=jitter)).max(0.01);
                    let v = &mut self.vehicles[i];
                    let fix = v.model.advance(dt);
                    v.next_report += Duration::from_secs_f64(dt);
                    if v.next_report < now {
                        v.next_report = now + Duration::from_secs_f64(dt);
                    }
                    self.emit(i, fix);
                }
            }
            Mode::Load => {
                let due = if self.lane_rate > 0.0 {
                    let target = (self.started.elapsed().as_secs_f64() * self.lane_rate) as u64;
                    target.saturating_sub(self.generated)
                } else {
                    u64::MAX
                };
                let room = self.config.max_in_flight.saturating_sub(self.unacked) as u64;
                let n = self.control.take_budget(due.min(room));
                self.generated += n;
                for _ in 0..n {
                    let i = self.round_robin % self.vehicles.len().max(1);
                    self.round_robin += 1;
                    let v = &self.vehicles[i];
                    // A slow zig-zag of ~1 m per position: plausible for the processor at any rate.
                    let step = (v.next_seq % 200).abs_diff(100) as f64 * 0.00001;
                    let fix = Fix { lat: v.base.0 + step, lon: v.base.1 + step, speed: 30.0, heading: 45.0, ignition: None };
                    self.emit(i, fix);
                }
            }
        }
    }

    /// Turns a fix into a pending position (or a fault), honouring the buffer bound.
    fn emit(&mut self, i: usize, fix: Fix) {
        let config = self.config.clone();
        let ts = now_ms();
        let roll_fault = config.invalid_ratio > 0.0 && self.rng.random_bool(config.invalid_ratio.clamp(0.0, 1.0));
        let fault = if roll_fault && !config.invalid_kinds.is_empty() {
            Some(config.invalid_kinds[self.rng.random_range(0..config.invalid_kinds.len())])
        } else {
            None
        };
        let duplicate = config.duplicate_ratio > 0.0 && self.rng.random_bool(config.duplicate_ratio.clamp(0.0, 1.0));
        let alarm = (config.alarm_ratio > 0.0 && self.rng.random_bool(config.alarm_ratio.clamp(0.0, 1.0)))
            .then(|| ["sos", "power_cut", "tamper"][self.rng.random_range(0..3)].to_string());
        let v = &mut self.vehicles[i];
        let (obu, legacy) = (v.obu_id, v.legacy);
        // Structural faults are extra frames the receiver refuses, so they use no seq. They are
        // written by hand on purpose: no serializer writes a missing field, a string for a
        // number or a NaN token.
        let structural = match fault {
            Some(Fault::NonJson) => Some(format!("obu {obu} says hello")),
            Some(Fault::MissingField) => Some(format!(r#"{{"obu_id":{obu},"seq":0,"ts":{ts},"lon":{}}}"#, fix.lon)),
            Some(Fault::WrongType) => Some(format!(r#"{{"obu_id":{obu},"seq":0,"ts":{ts},"lat":"{}","lon":{}}}"#, fix.lat, fix.lon)),
            Some(Fault::Nan) => Some(format!(r#"{{"obu_id":{obu},"seq":0,"ts":{ts},"lat":NaN,"lon":{}}}"#, fix.lon)),
            _ => None,
        };
        if let Some(text) = structural {
            self.stats.faults.inc();
            v.pending.push_back(Pending::fire_and_forget(text));
            self.unacked += 1;
            self.stats.unacked.inc();
            return;
        }
        // Semantic faults: well-formed positions the processor refuses.
        let (mut lat, mut lon, mut ts) = (fix.lat, fix.lon, ts);
        match fault {
            Some(Fault::BadCoords) => lat = 91.5,
            Some(Fault::NullIsland) => (lat, lon) = (0.0, 0.0),
            Some(Fault::FutureTs) => ts += 3_600_000,
            Some(Fault::Teleport) => lat = if lat > 0.0 { lat - 0.45 } else { lat + 0.45 },
            _ => {}
        }
        let position = Position {
            obu_id: obu,
            seq: v.next_seq,
            boot: self.config.boot_number(),
            ts,
            lat: rounded(lat, 7),
            lon: rounded(lon, 7),
            speed: Some(rounded(fix.speed, 1)),
            // 359.96 rounds to 360.0, which is not a heading: it is 0.0.
            heading: Some(rounded(fix.heading, 1) % 360.0),
            attributes: (fix.ignition.is_some() || alarm.is_some())
                .then(|| Attributes { ignition: fix.ignition, alarm, ..Attributes::default() }),
        };
        let text = match position_json(&position, legacy) {
            Ok(text) => text,
            Err(error) => {
                // Cannot happen for a struct of numbers; skipped rather than sent broken.
                tracing::error!(obu_id = obu, %error, "cannot serialize a position");
                return;
            }
        };
        v.next_seq += 1;
        if fault.is_some() {
            self.stats.faults.inc();
        }
        self.stats.generated.inc();
        if duplicate {
            self.stats.duplicates_sent.inc();
            v.pending.push_back(Pending::fire_and_forget(text.clone()));
            self.unacked += 1;
            self.stats.unacked.inc();
        }
        v.pending.push_back(Pending::until_acked(position.seq, text, legacy));
        self.unacked += 1;
        self.stats.unacked.inc();
        while v.pending.len() > config.buffer.max(1) {
            if v.pending.pop_front().is_some() {
                self.stats.dropped.inc();
                self.unacked -= 1;
                self.stats.unacked.dec();
            }
        }
    }

    /// Writes every unsent position whose time has come, in seq order per vehicle.
    fn send_unsent(&mut self, out: Option<&mpsc::UnboundedSender<Message>>) {
        let Some(out) = out else { return };
        let now = Instant::now();
        let batch = self.config.batch.max(1);
        let mut frame: Vec<&str> = Vec::with_capacity(batch);
        let flush = |frame: &mut Vec<&str>| {
            if frame.is_empty() {
                return;
            }
            let text = if frame.len() == 1 { frame[0].to_string() } else { format!("[{}]", frame.join(",")) };
            let _ = out.send(Message::Text(text.into()));
            frame.clear();
        };
        for v in &mut self.vehicles {
            for p in &mut v.pending {
                if p.sent_at.is_some() {
                    continue;
                }
                // A vehicle's positions go out in seq order, like an OBU's store-and-forward
                // queue: one waiting to be retried holds back the newer ones behind it.
                if p.retry_at.is_some_and(|r| r > now) {
                    break;
                }
                if p.sends > 0 {
                    self.stats.resent.inc();
                }
                p.sends += 1;
                p.sent_at = Some(now);
                p.retry_at = None;
                self.stats.sent.inc();
                if p.is_fire_and_forget() {
                    // Faults and duplicate copies travel alone so their refusal is unambiguous.
                    flush(&mut frame);
                    frame.push(&p.text);
                    flush(&mut frame);
                } else {
                    frame.push(&p.text);
                    if frame.len() >= batch {
                        flush(&mut frame);
                    }
                }
            }
        }
        flush(&mut frame);
        // Fault frames and duplicate copies are fire-and-forget: forget them once sent.
        for v in &mut self.vehicles {
            let before = v.pending.len();
            v.pending.retain(|p| !(p.is_fire_and_forget() && p.sent_at.is_some()));
            let removed = before - v.pending.len();
            self.unacked -= removed;
            self.stats.unacked.sub(removed as i64);
        }
    }

    fn on_frame(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            tracing::warn!(lane = self.id, frame = text, "unexpected frame from the receiver");
            return;
        };
        match frame {
            ServerFrame::Ack { obu_id, seq } => {
                let Some(&i) = self.index.get(&obu_id) else { return };
                let v = &mut self.vehicles[i];
                let pos = v.pending.iter().position(|p| p.seq() == Some(seq) && p.sent_at.is_some() && !p.legacy).or_else(|| {
                    // Legacy positions get their seq from the receiver: acks come in order, so
                    // the oldest legacy position in flight is the one acked.
                    v.pending.iter().position(|p| p.legacy && p.sent_at.is_some())
                });
                match pos.and_then(|pos| v.pending.remove(pos)) {
                    Some(p) => {
                        if let Some(sent) = p.sent_at {
                            if self.started.elapsed() >= self.config.latency_from {
                                self.stats.record_ack_latency(sent.elapsed());
                            }
                        }
                        v.acked.insert(seq);
                        self.stats.acked.inc();
                        self.unacked -= 1;
                        self.stats.unacked.dec();
                    }
                    None => self.stats.duplicate_acks.inc(),
                }
            }
            ServerFrame::Error(e) => {
                self.stats.refused.with_label_values(&[e.reason.as_str()]).inc();
                let (Some(obu_id), Some(seq)) = (e.obu_id, e.seq) else { return };
                let Some(&i) = self.index.get(&obu_id) else { return };
                let v = &mut self.vehicles[i];
                let Some(pos) = v.pending.iter().position(|p| p.seq() == Some(seq)) else { return };
                if e.retryable {
                    let wait = Duration::from_millis(250) * v.pending[pos].sends.min(20);
                    v.pending[pos].sent_at = None;
                    v.pending[pos].retry_at = Some(Instant::now() + wait);
                } else if v.pending.remove(pos).is_some() {
                    self.unacked -= 1;
                    self.stats.unacked.dec();
                }
            }
        }
    }
}

/// A TCP connection to the URL's host from `source` (bound before connecting: the kernel
/// picks the port among those free on that address).
async fn connect_from(source: IpAddr, uri: &tokio_tungstenite::tungstenite::http::Uri) -> anyhow::Result<tokio::net::TcpStream> {
    let host = uri.host().context("the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let target = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .with_context(|| format!("{host} has no address of the source address's family ({source})"))?;
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("cannot bind to source address {source}"))?;
    Ok(socket.connect(target).await?)
}

fn jittered(rng: &mut StdRng, d: Duration) -> Duration {
    d.mul_f64(rng.random_range(0.5..=1.0))
}

async fn next_frame(reader: &mut Option<futures_util::stream::SplitStream<Ws>>) -> Option<String> {
    let r = reader.as_mut()?;
    loop {
        match r.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn write_frames(mut sink: futures_util::stream::SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(m) = rx.recv().await {
        let close = matches!(m, Message::Close(_));
        if sink.feed(m).await.is_err() {
            return;
        }
        if (rx.is_empty() || close) && sink.flush().await.is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use fleetstream_core::position::distance_m;
    use fleetstream_core::wire::parse_frame;
    use fleetstream_core::Reason;

    /// (seconds since start, seq, lat, lon) of every fix each vehicle generated.
    async fn drive(seed: u64) -> Vec<Vec<(f64, u64, f64, f64)>> {
        let config = Config::try_parse_from(["obu-sim", "--vehicles=3", &format!("--seed={seed}"), "--interval=1s", "--jitter=200ms"])
            .unwrap_or_else(|e| panic!("{e}"));
        let control = Control { stop_generating: CancellationToken::new(), hard_stop: CancellationToken::new(), budget: None, connector: None, handshakes: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES)) };
        let mut lane = Lane::new(0, vec![1, 2, 3], 1, Arc::new(config), Arc::new(Stats::new()), control);
        let start = Instant::now();
        let mut tracks = vec![Vec::new(); 3];
        for _ in 0..600 {
            tokio::time::sleep_until(lane.next_wake()).await;
            let before: Vec<usize> = lane.vehicles.iter().map(|v| v.pending.len()).collect();
            lane.generate();
            let t = start.elapsed().as_secs_f64();
            for (i, v) in lane.vehicles.iter_mut().enumerate() {
                for p in v.pending.iter().skip(before[i]) {
                    let position: Position = serde_json::from_str(&p.text).expect("a generated position is a Position");
                    let seq = p.seq().expect("a generated position waits for its ack");
                    assert_eq!(position.seq, seq, "the frame carries the seq the lane tracks");
                    tracks[i].push((t, seq, position.lat, position.lon));
                }
                v.pending.clear(); // as if acked: keep the buffer from filling
            }
        }
        tracks
    }

    /// The frames a load-mode lane of 20 vehicles generates in one go with `args` (200 of
    /// them, plus duplicate copies), oldest first.
    fn frames(args: &[&str]) -> Vec<Pending> {
        let mut all = vec!["obu-sim", "--mode=load", "--rate=0", "--max-in-flight=200", "--vehicles=20"];
        all.extend(args);
        let config = Config::try_parse_from(all).expect("valid flags");
        let control = Control { stop_generating: CancellationToken::new(), hard_stop: CancellationToken::new(), budget: None, connector: None, handshakes: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES)) };
        let mut lane = Lane::new(0, (1..=20).collect(), 1, Arc::new(config), Arc::new(Stats::new()), control);
        lane.generate();
        lane.vehicles.iter_mut().flat_map(|v| std::mem::take(&mut v.pending)).collect()
    }

    /// What the receiver's parser makes of a frame of one position.
    fn parsed(text: &str) -> Result<fleetstream_core::wire::WirePosition, Reason> {
        let mut elements = parse_frame(text, 1).map_err(|r| r.reason)?;
        assert_eq!(elements.len(), 1, "{text}");
        elements.remove(0).parsed.map_err(|r| r.reason)
    }

    #[test]
    fn positions_are_the_shared_type_and_acked_by_seq() {
        let frames = frames(&[]);
        assert_eq!(frames.len(), 200);
        for p in &frames {
            let position: Position = serde_json::from_str(&p.text).unwrap_or_else(|e| panic!("{e}: {}", p.text));
            assert_eq!(p.seq(), Some(position.seq), "{}", p.text);
            let wire = parsed(&p.text).unwrap_or_else(|r| panic!("{r:?}: {}", p.text));
            assert_eq!((wire.obu_id, wire.seq, wire.legacy), (position.obu_id, Some(position.seq), false));
            assert!(position.heading.is_some_and(|h| (0.0..360.0).contains(&h)) && position.speed.is_some(), "{}", p.text);
        }
    }

    #[test]
    fn legacy_vehicles_send_the_seeds_form() {
        for p in frames(&["--legacy-ratio=1"]) {
            let wire = parsed(&p.text).unwrap_or_else(|r| panic!("{r:?}: {}", p.text));
            assert!(wire.legacy && wire.seq.is_none() && wire.ts.is_none(), "{}", p.text);
            assert!(p.legacy && p.seq().is_some(), "tracked under its own seq until acked");
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&p.text).expect("an object");
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["lat", "lon", "obuid"], "{}", p.text);
        }
    }

    #[test]
    fn structural_faults_are_refused_by_the_receiver_and_forgotten() {
        let frames = frames(&["--invalid-ratio=1", "--invalid-kinds=non-json,missing-field,wrong-type,nan"]);
        let mut reasons = std::collections::BTreeSet::new();
        for p in &frames {
            assert!(p.is_fire_and_forget(), "{}", p.text);
            let reason = parsed(&p.text).expect_err(&p.text);
            reasons.insert(reason.as_str());
        }
        assert_eq!(reasons.into_iter().collect::<Vec<_>>(), ["malformed_json", "missing_field", "non_finite_number", "wrong_type"]);
    }

    #[test]
    fn semantic_faults_are_well_formed_positions() {
        for p in frames(&["--invalid-ratio=1", "--invalid-kinds=bad-coords,null-island,future-ts,teleport"]) {
            let position: Position = serde_json::from_str(&p.text).unwrap_or_else(|e| panic!("{e}: {}", p.text));
            assert_eq!(p.seq(), Some(position.seq), "the processor judges them: they wait for their ack");
            assert!(parsed(&p.text).is_ok(), "{}", p.text);
        }
    }

    #[test]
    fn duplicates_are_fire_and_forget_copies_of_a_tracked_position() {
        let frames = frames(&["--duplicate-ratio=1"]);
        assert_eq!(frames.len(), 400);
        for pair in frames.chunks(2) {
            assert!(pair[0].is_fire_and_forget() && pair[1].seq().is_some(), "{pair:?}");
            assert_eq!(pair[0].text, pair[1].text);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fleet_reports_are_deterministic_plausible_and_on_schedule() {
        let (a, b, c) = (drive(9).await, drive(9).await, drive(10).await);
        let berlin = Config::defaults().area;
        assert_eq!(a, b, "same seed, same tracks and report times");
        assert_ne!(a, c, "another seed, other tracks");
        for track in &a {
            assert!(track.len() > 150, "{} reports", track.len());
            for w in track.windows(2) {
                let ((t0, s0, la0, lo0), (t1, s1, la1, lo1)) = (w[0], w[1]);
                assert_eq!(s1, s0 + 1, "seq rises by one");
                let dt = t1 - t0;
                assert!((0.79..=1.21).contains(&dt), "report interval {dt} s outside 1 s ± 200 ms");
                assert!(berlin.contains(la1, lo1));
                // 90 km/h is 25 m/s; GPS noise (3 m each way per axis) adds at most ~8.5 m.
                let implied = (distance_m(la0, lo0, la1, lo1) - 8.5).max(0.0) / dt;
                assert!(implied <= 25.0 + 1e-6, "implied {implied} m/s");
            }
        }
    }
}
