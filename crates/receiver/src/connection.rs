//! One device connection: read frames, hand positions to Kafka, answer each in order.
//!
//! Two halves share a bounded, ordered queue of outcomes. The reader parses frames and hands
//! each position to the producer, taking a per-connection and a global in-flight permit first:
//! when either runs out it simply stops reading the socket, which is the back-pressure. The
//! writer takes outcomes in arrival order and waits for each one's delivery report before
//! writing its ack or error frame, so answers come back in the order positions were sent and an
//! ack always means "in Kafka". A device that stops reading its answers stalls the writer: after
//! `--write-timeout` the writer gives up, tells the reader, and the connection is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use rdkafka::producer::DeliveryFuture;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use fleetstream_core::frames::{ErrorFrame, ServerFrame};
use fleetstream_core::now_ms;
use fleetstream_core::otel::PositionSpan;
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::wire::{self, WirePosition};

use crate::auth::Allowed;
use crate::ingest::{Ingest, Refused};
use crate::limits::{AbuseWindow, ConnectionLimits, TokenBucket};
use crate::metrics::Metrics;

/// WebSocket close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// A frame breaking the protocol: a continuation with nothing to continue, a new message
    /// inside a fragmented one, a fragmented or oversized control frame, reserved bits, no mask.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Private use (4000-4999): the device's token was revoked (removed from the tokens).
    pub const TOKEN_REVOKED: u16 = 4001;
}

/// The token a connection authenticated with (its hash) and the receiver's current tokens,
/// watched so that a revoked token closes the connection and a changed one takes effect.
#[derive(Debug)]
pub(crate) struct Credential {
    key: fleetstream_core::tokens::TokenHash,
    tokens: tokio::sync::watch::Receiver<Arc<crate::auth::Tokens>>,
}

impl Credential {
    pub(crate) fn new(key: fleetstream_core::tokens::TokenHash, tokens: tokio::sync::watch::Receiver<Arc<crate::auth::Tokens>>) -> Self {
        Credential { key, tokens }
    }

    /// Waits for the tokens to change; then what the token allows now (None: revoked). Never
    /// returns if the tokens can no longer change.
    async fn changed(&mut self) -> Option<Allowed> {
        if self.tokens.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.tokens.borrow_and_update().allowed(&self.key)
    }
}

/// What the writer must answer, in order.
enum Outcome {
    /// A position handed to Kafka; ack it once the delivery report arrives.
    Delivery {
        obu_id: u64,
        seq: u64,
        received: Instant,
        handed: Instant,
        delivery: DeliveryFuture,
        /// The position's span when it is traced (boxed: most positions are not).
        span: Option<Box<PositionSpan>>,
        _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    /// A refusal; when the input was kept, wait for the DLQ write first to say so.
    Refused { error: ErrorFrame, dlq: Option<DeliveryFuture> },
    /// The last thing the connection will say.
    Close { code: u16, reason: &'static str },
}

/// When a frame's positions arrived.
#[derive(Clone, Copy)]
struct Receipt {
    at: Instant,
    /// Unix ms: the record's timestamp and `received_at` header.
    ms: i64,
}

/// What the writer tells the reader when answers can no longer be written.
#[derive(Debug, Default)]
struct WriteFailure {
    failed: CancellationToken,
    /// The socket took no answer for `--write-timeout` (else: writing failed, the device is gone).
    timed_out: AtomicBool,
}

impl WriteFailure {
    fn fail(&self, timed_out: bool) {
        self.timed_out.store(timed_out, Ordering::Relaxed);
        self.failed.cancel();
    }
}

/// Counts for the connection's closing log line.
#[derive(Debug, Default)]
struct Counts {
    frames: u64,
    positions: u64,
    refused: u64,
}

/// Why the reader stopped.
struct Ending {
    code: u16,
    reason: &'static str,
    label: &'static str,
}

/// A refusal to send back: why, and what is known of the refused input.
struct Refusal<'a> {
    rejection: Rejection,
    /// The input's bytes: kept in the DLQ unless the refusal is retryable.
    raw: Option<&'a [u8]>,
    obu_id: Option<u64>,
    seq: Option<u64>,
    /// Position of the input in an array frame.
    index: Option<usize>,
}

impl<'a> Refusal<'a> {
    fn new(rejection: Rejection) -> Self {
        Refusal { rejection, raw: None, obu_id: None, seq: None, index: None }
    }

    /// Keeps these bytes as the dead letter.
    fn keeping(mut self, raw: &'a [u8]) -> Self {
        self.raw = Some(raw);
        self
    }

    /// Names the vehicle (and seq) the input was about, where it could be read.
    fn about(mut self, id: Option<(u64, Option<u64>)>) -> Self {
        if let Some((obu_id, seq)) = id {
            self.obu_id = Some(obu_id);
            self.seq = seq;
        }
        self
    }

    fn at(mut self, index: Option<usize>) -> Self {
        self.index = index;
        self
    }
}

/// What every connection of the receiver works with: where input goes, what it may do, what
/// it counts, and when to stop.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub ingest: Arc<Ingest>,
    pub limits: ConnectionLimits,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

pub(crate) struct Connection {
    ingest: Arc<Ingest>,
    limits: ConnectionLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
    id: u64,
    peer: SocketAddr,
    allowed: Allowed,
    credential: Option<Credential>,
    bucket: Option<TokenBucket>,
    /// Ping and pong frames allowed (none: unlimited).
    pings: Option<TokenBucket>,
    abuse: AbuseWindow,
    write: Arc<WriteFailure>,
    frame_no: u64,
    last_legacy_seq: u64,
    counts: Counts,
    in_flight_here: Arc<Semaphore>,
}

impl Connection {
    pub(crate) fn new(gateway: Gateway, id: u64, peer: SocketAddr, allowed: Allowed, credential: Option<Credential>) -> Self {
        let Gateway { ingest, limits, metrics, shutdown } = gateway;
        let bucket = (limits.rate_limit > 0.0).then(|| TokenBucket::new(limits.rate_limit, limits.rate_burst.max(1.0)));
        let abuse = AbuseWindow::new(limits.abuse_limit, Duration::from_secs(10));
        let pings = (limits.ping_rate > 0.0).then(|| TokenBucket::new(limits.ping_rate, limits.ping_rate.max(1.0)));
        Connection {
            in_flight_here: Arc::new(Semaphore::new(limits.max_in_flight)),
            ingest,
            limits,
            metrics,
            shutdown,
            id,
            peer,
            allowed,
            credential,
            bucket,
            pings,
            abuse,
            write: Arc::default(),
            frame_no: 0,
            last_legacy_seq: 0,
            counts: Counts::default(),
        }
    }

    pub(crate) async fn run(mut self, socket: WebSocket) {
        let started = Instant::now();
        let m = self.metrics.clone();
        m.connections.inc();
        m.connections_opened.inc();
        let (sink, mut stream) = socket.split();
        let capacity = self.limits.max_in_flight + self.limits.max_positions_per_frame + 2;
        let answers = Answers { metrics: self.metrics.clone(), ingest: self.ingest.clone(), timeout: self.limits.write_timeout, failure: self.write.clone() };
        let mut tx = Answering::Idle { sink, answers, capacity };

        let ending = self.read_frames(&mut stream, &mut tx).await;
        m.connections_closed.with_label_values(&[ending.label]).inc();
        let _ = tx.send(Outcome::Close { code: ending.code, reason: ending.reason }).await;
        let acked = tx.finish().await;
        // The closing handshake: our Close frame is out; read (and drop: they were never
        // answered, so the device still holds them) what the device had already sent, until
        // its Close reply. Closing with unread data would reset the TCP connection and could
        // destroy our Close frame before the device read it. (After a read error the stream
        // yields nothing more; the socket's lingering close, socket.rs, protects the frame
        // then.) Unless nothing could be written: then there is no Close frame to protect.
        if !self.write.failed.is_cancelled() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        m.connections.dec();
        tracing::info!(
            conn = self.id,
            peer = %self.peer,
            frames = self.counts.frames,
            positions = self.counts.positions,
            acked,
            refused = self.counts.refused,
            secs = started.elapsed().as_secs_f64(),
            close = ending.label,
            "connection closed"
        );
    }

    async fn read_frames(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>, tx: &mut Answering) -> Ending {
        let shutdown = self.shutdown.clone();
        let write = self.write.clone();
        let mut credential = self.credential.take();
        loop {
            let next = tokio::select! {
                // Shutdown first: stop taking frames, let the writer drain what is in flight.
                biased;
                () = shutdown.cancelled() => {
                    return Ending { code: close_code::GOING_AWAY, reason: "receiver shutting down", label: "shutdown" };
                }
                // No answer can reach the device: taking more of its frames would only grow
                // what it never learns about.
                () = write.failed.cancelled() => {
                    if write.timed_out.load(Ordering::Relaxed) {
                        tracing::info!(conn = self.id, peer = %self.peer, "device reads no answers; closing the connection");
                        return Ending { code: close_code::POLICY_VIOLATION, reason: "answers not read", label: "write_timeout" };
                    }
                    return Ending { code: close_code::NORMAL, reason: "", label: "client_gone" };
                }
                now = async { match &mut credential { Some(c) => c.changed().await, None => std::future::pending().await } } => {
                    match now {
                        Some(allowed) => self.allowed = allowed,
                        None => {
                            tracing::info!(conn = self.id, peer = %self.peer, "device token revoked; closing the connection");
                            return Ending { code: close_code::TOKEN_REVOKED, reason: "device token revoked", label: "token_revoked" };
                        }
                    }
                    continue;
                }
                next = stream.next() => next,
            };
            let message = match next {
                None => return Ending { code: close_code::NORMAL, reason: "", label: "client_gone" },
                Some(Err(error)) => match ReadFailure::of(&error) {
                    ReadFailure::TooBig => {
                        self.count_frame("text", 0);
                        self.metrics.positions_received.inc();
                        let rejection = Rejection::new(Reason::FrameTooLarge, format!(
                            "frame exceeds the hard limit of {} bytes; connection closed",
                            self.limits.hard_frame_cap()
                        ));
                        Box::pin(self.refuse(tx, Refusal::new(rejection))).await;
                        return Ending { code: close_code::MESSAGE_TOO_BIG, reason: "frame too large", label: "frame_too_big" };
                    }
                    ReadFailure::InvalidUtf8 => {
                        tracing::info!(conn = self.id, peer = %self.peer, %error, "closing the connection: a text frame is not UTF-8");
                        return Ending { code: close_code::INVALID_PAYLOAD, reason: "text frame is not valid UTF-8", label: "invalid_utf8" };
                    }
                    ReadFailure::Protocol => {
                        tracing::info!(conn = self.id, peer = %self.peer, %error, "closing the connection: WebSocket protocol violation");
                        return Ending { code: close_code::PROTOCOL_ERROR, reason: "WebSocket protocol violation", label: "protocol_error" };
                    }
                    ReadFailure::Other => {
                        tracing::debug!(conn = self.id, %error, "websocket read error");
                        return Ending { code: close_code::NORMAL, reason: "", label: "read_error" };
                    }
                },
                Some(Ok(message)) => message,
            };
            match message {
                // Boxed, here and below: what a frame needs while it is handled (parsing,
                // publishing, a refusal and its DLQ write) is allocated for that frame, not
                // carried in every idle connection's task.
                Message::Text(text) => {
                    self.count_frame("text", text.len());
                    Box::pin(self.handle_text(tx, text.as_str())).await;
                }
                Message::Binary(bytes) => {
                    self.count_frame("binary", bytes.len());
                    self.metrics.positions_received.inc();
                    self.abuse.record();
                    let rejection = Rejection::new(Reason::BinaryFrame, "binary frames are not accepted; send positions as JSON text frames");
                    Box::pin(self.refuse(tx, Refusal::new(rejection).keeping(&bytes))).await;
                }
                // tungstenite answers pings itself, keeping at most one pong unsent; a flood of
                // them is a limit violation like any other.
                Message::Ping(_) | Message::Pong(_) => {
                    self.count_frame(if matches!(message, Message::Ping(_)) { "ping" } else { "pong" }, 0);
                    if let Some(pings) = self.pings.as_mut() {
                        if pings.take(1, Instant::now()) == 0 {
                            self.abuse.record();
                        }
                    }
                }
                Message::Close(_) => {
                    self.count_frame("close", 0);
                    return Ending { code: close_code::NORMAL, reason: "", label: "client_closed" };
                }
            }
            if self.abuse.exceeded() {
                return Ending { code: close_code::POLICY_VIOLATION, reason: "too many limit violations", label: "abuse" };
            }
        }
    }

    fn count_frame(&mut self, kind: &str, len: usize) {
        self.counts.frames += 1;
        self.frame_no += 1;
        self.metrics.frames.with_label_values(&[kind]).inc();
        self.metrics.bytes_received.inc_by(len as u64);
    }

    async fn handle_text(&mut self, tx: &mut Answering, text: &str) {
        let limits = self.limits;
        if text.len() > limits.max_frame_bytes {
            self.metrics.positions_received.inc();
            self.abuse.record();
            let rejection = Rejection::new(
                Reason::FrameTooLarge,
                format!("frame of {} bytes exceeds the limit of {} bytes", text.len(), limits.max_frame_bytes),
            );
            self.refuse(tx, Refusal::new(rejection).keeping(text.as_bytes())).await;
            return;
        }
        let elements = match wire::parse_frame(text, limits.max_positions_per_frame) {
            Ok(elements) => elements,
            Err(rejection) => {
                self.metrics.positions_received.inc();
                if rejection.reason == Reason::TooManyPositions {
                    self.abuse.record();
                }
                self.refuse(tx, Refusal::new(rejection).keeping(text.as_bytes())).await;
                return;
            }
        };
        let received = Instant::now();
        let received_ms = now_ms();
        let admitted = match self.bucket.as_mut() {
            Some(bucket) => bucket.take(elements.len(), received),
            None => elements.len(),
        };
        if admitted < elements.len() {
            self.abuse.record();
        }
        let indexed = elements.len() > 1 || text.trim_start().starts_with('[');
        for (i, element) in elements.into_iter().enumerate() {
            self.counts.positions += 1;
            self.metrics.positions_received.inc();
            let index = indexed.then_some(i);
            let id = element.obu_id.map(|o| (o, element.seq));
            if i >= admitted {
                let rejection = Rejection::new(
                    Reason::RateLimited,
                    format!("over the limit of {} positions/s for this connection; resend later", limits.rate_limit),
                );
                self.refuse(tx, Refusal::new(rejection).about(id).at(index)).await;
                continue;
            }
            let wire_position = match element.parsed {
                Ok(p) => p,
                Err(rejection) => {
                    self.refuse(tx, Refusal::new(rejection).keeping(element.raw.as_bytes()).about(id).at(index)).await;
                    continue;
                }
            };
            if !self.allowed.permits(wire_position.obu_id) {
                let rejection = Rejection::new(
                    Reason::ObuNotAllowed,
                    format!("this device's token does not allow obu_id {}", wire_position.obu_id),
                );
                let id = Some((wire_position.obu_id, wire_position.seq));
                self.refuse(tx, Refusal::new(rejection).keeping(element.raw.as_bytes()).about(id).at(index)).await;
                continue;
            }
            self.publish(tx, wire_position, Receipt { at: received, ms: received_ms }, index).await;
        }
    }

    /// Hands one position to Kafka and queues its delivery for the writer.
    async fn publish(&mut self, tx: &mut Answering, wire: WirePosition, receipt: Receipt, index: Option<usize>) {
        let Receipt { at: received, ms: received_ms } = receipt;
        let legacy = wire.legacy;
        let last = &mut self.last_legacy_seq;
        // Legacy devices send no seq: use the receive time in microseconds, strictly rising on
        // the connection, so (obu_id, seq) stays unique and ordered.
        let position = wire.into_position(
            || {
                let micros = u64::try_from(received_ms).unwrap_or(0).saturating_mul(1000);
                *last = micros.max(*last + 1);
                *last
            },
            || received_ms,
        );
        let id = Some((position.obu_id, Some(position.seq)));
        let permits = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            permits = acquire(&self.in_flight_here, &self.ingest) => permits,
        };
        let Some(permits) = permits else {
            let rejection = Rejection::new(Reason::ShuttingDown, "the receiver is shutting down; reconnect and resend");
            self.refuse(tx, Refusal::new(rejection).about(id).at(index)).await;
            return;
        };
        // The span starts when the frame arrived; only a sampled position reads the clock.
        let mut span = self.ingest.tracing.root("receive position", || {
            let now = SystemTime::now();
            now.checked_sub(received.elapsed()).unwrap_or(now)
        }).map(Box::new);
        let traceparent = span.as_mut().map(|span| {
            span.attribute("fleetstream.obu_id", position.obu_id as i64);
            span.attribute("fleetstream.seq", position.seq as i64);
            span.attribute("fleetstream.connection", self.id as i64);
            span.traceparent()
        });
        match self.ingest.publish(&position, received_ms, legacy, traceparent.as_deref()).await {
            Ok(delivery) => {
                self.metrics.in_flight.inc();
                if let Some(span) = span.as_mut() {
                    span.event("handed to Kafka");
                }
                let outcome = Outcome::Delivery {
                    obu_id: position.obu_id,
                    seq: position.seq,
                    received,
                    handed: Instant::now(),
                    delivery,
                    span,
                    _permits: permits,
                };
                let _ = tx.send(outcome).await;
            }
            Err(error) => {
                drop(permits);
                if let Some(mut span) = span {
                    span.fail(format!("not handed to Kafka: {error}"));
                }
                let rejection = Rejection::new(Reason::KafkaUnavailable, format!("could not hand the position to Kafka: {error}"));
                self.refuse(tx, Refusal::new(rejection).about(id).at(index)).await;
            }
        }
    }

    /// Answers with an error frame; keeps non-retryable input in the DLQ first.
    async fn refuse(&mut self, tx: &mut Answering, refusal: Refusal<'_>) {
        self.counts.refused += 1;
        let Refusal { rejection, raw, obu_id, seq, index } = refusal;
        self.metrics.positions_refused.with_label_values(&[rejection.reason.as_str()]).inc();
        let dlq = match raw {
            Some(raw) if !rejection.reason.retryable() => {
                let refused = Refused { peer: self.peer, connection: self.id, raw, obu_id, seq };
                self.ingest.dead_letter(refused, &rejection).await
            }
            _ => None,
        };
        let mut error = ErrorFrame::new(rejection);
        error.obu_id = obu_id;
        error.seq = seq;
        error.frame = Some(self.frame_no);
        error.index = index;
        let _ = tx.send(Outcome::Refused { error, dlq }).await;
    }
}

/// What a WebSocket read error says about the device's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFailure {
    /// A message over the hard size cap (fragments included).
    TooBig,
    /// A text frame, or fragment, that is not valid UTF-8.
    InvalidUtf8,
    /// A frame that breaks RFC 6455.
    Protocol,
    /// The connection itself failed (reset, EOF mid-frame): nothing to answer.
    Other,
}

impl ReadFailure {
    /// axum does not re-export tungstenite's error type, so this reads its stable Display
    /// prefixes (tungstenite's `Error` variants).
    fn of(error: &axum::Error) -> Self {
        let text = error.to_string();
        if text.starts_with("Space limit exceeded") || text.contains("Message too long") {
            ReadFailure::TooBig
        } else if text.starts_with("UTF-8 encoding error") {
            ReadFailure::InvalidUtf8
        } else if text.starts_with("WebSocket protocol error") {
            ReadFailure::Protocol
        } else {
            ReadFailure::Other
        }
    }
}

/// A permit of this connection's in-flight bound, then one of the receiver's.
async fn acquire(here: &Arc<Semaphore>, ingest: &Ingest) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let local = here.clone().acquire_owned().await.ok()?;
    let global = ingest.in_flight_permit().await?;
    Some((local, global))
}

/// What the writer half works with.
struct Answers {
    metrics: Metrics,
    ingest: Arc<Ingest>,
    /// `--write-timeout`: longest one answer may wait for the socket.
    timeout: Duration,
    failure: Arc<WriteFailure>,
}

/// Where the reader's outcomes go: the writer half (a task and its queue) starts with the first
/// one. Most connections of a large fleet are idle most of the time; the queue's first block
/// and the task would cost each of them about 5 KiB for nothing.
// One per connection, in its task: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Answering {
    Idle { sink: futures_util::stream::SplitSink<WebSocket, Message>, answers: Answers, capacity: usize },
    Started { tx: mpsc::Sender<Outcome>, writer: tokio::task::JoinHandle<u64> },
    /// Only while changing from one to the other.
    Starting,
}

impl Answering {
    /// Queues an outcome for the writer, starting it if need be. Waits while the queue is full.
    async fn send(&mut self, outcome: Outcome) -> Result<(), mpsc::error::SendError<Outcome>> {
        if let Answering::Idle { .. } = self {
            if let Answering::Idle { sink, answers, capacity } = std::mem::replace(self, Answering::Starting) {
                let (tx, rx) = mpsc::channel(capacity);
                *self = Answering::Started { tx, writer: tokio::spawn(write_answers(rx, sink, answers)) };
            }
        }
        match self {
            Answering::Started { tx, .. } => tx.send(outcome).await,
            Answering::Idle { .. } | Answering::Starting => Err(mpsc::error::SendError(outcome)),
        }
    }

    /// Lets the writer finish what is queued; the number of positions it acked.
    async fn finish(self) -> u64 {
        match self {
            Answering::Started { tx, writer } => {
                drop(tx);
                writer.await.unwrap_or(0)
            }
            Answering::Idle { .. } | Answering::Starting => 0,
        }
    }
}

/// The writer half: answers outcomes in order, then closes the socket.
async fn write_answers(mut rx: mpsc::Receiver<Outcome>, mut sink: futures_util::stream::SplitSink<WebSocket, Message>, answers: Answers) -> u64 {
    let Answers { metrics, ingest, timeout, failure } = answers;
    let m = &metrics;
    let mut acked = 0u64;
    let mut open = true;
    while let Some(outcome) = rx.recv().await {
        // The span of a traced position ends once its answer is written (or given up).
        let mut traced: Option<Box<PositionSpan>> = None;
        let frame = match outcome {
            Outcome::Delivery { obu_id, seq, received, handed, delivery, span, _permits } => {
                let result = delivery.await;
                ingest.answered();
                m.in_flight.dec();
                m.kafka_delivery.observe(handed.elapsed().as_secs_f64());
                traced = span;
                match result {
                    Ok(Ok(delivered)) => {
                        m.positions_acked.inc();
                        m.ack_latency.observe(received.elapsed().as_secs_f64());
                        acked += 1;
                        if let Some(span) = traced.as_mut() {
                            span.event("acknowledged by Kafka");
                            span.attribute("messaging.destination.partition.id", delivered.partition.to_string());
                            span.attribute("messaging.kafka.offset", delivered.offset);
                        }
                        ServerFrame::Ack { obu_id, seq }
                    }
                    Ok(Err((error, _))) => {
                        let error = error.to_string();
                        if let Some(span) = traced.as_mut() {
                            span.fail(format!("Kafka did not acknowledge it: {error}"));
                        }
                        ingest.delivery_failed(obu_id, seq, &error);
                        delivery_failed(m, obu_id, seq, &error)
                    }
                    Err(_) => delivery_failed(m, obu_id, seq, "the producer was closed"),
                }
            }
            Outcome::Refused { mut error, dlq } => {
                if let Some(dlq) = dlq {
                    let kept = matches!(dlq.await, Ok(Ok(_)));
                    if kept {
                        m.dlq_records.inc();
                        error.message.push_str(" (kept in the dead-letter topic)");
                    } else {
                        m.dlq_failures.inc();
                    }
                }
                ServerFrame::Error(error)
            }
            Outcome::Close { code, reason } => {
                if open {
                    let _ = sink.flush().await;
                    let close = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(close)))).await;
                }
                continue;
            }
        };
        if !open {
            continue; // keep draining so permits and metrics settle
        }
        // Batch answers while more are queued; flush when none is. A socket that takes
        // nothing (the device does not read) makes both wait: at most `timeout`.
        let flush = rx.is_empty();
        let written = tokio::time::timeout(timeout, async {
            sink.feed(Message::Text(frame.to_json().into())).await?;
            if flush {
                sink.flush().await?;
            }
            Ok::<_, axum::Error>(())
        })
        .await;
        if let Some(mut span) = traced {
            match &written {
                Ok(Ok(())) => span.event("answered"),
                Ok(Err(_)) => span.fail("the device's socket failed before the answer"),
                Err(_) => span.fail("the device did not take the answer within --write-timeout"),
            }
            span.end();
        }
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                open = false;
                failure.fail(false);
            }
            Err(_) => {
                open = false;
                failure.fail(true);
            }
        }
    }
    acked
}

fn delivery_failed(m: &Metrics, obu_id: u64, seq: u64, why: &str) -> ServerFrame {
    m.positions_refused.with_label_values(&[Reason::KafkaUnavailable.as_str()]).inc();
    let mut error = ErrorFrame::new(Rejection::new(
        Reason::KafkaUnavailable,
        format!("Kafka did not acknowledge the position within the delivery timeout ({why}); resend it"),
    ));
    error.obu_id = Some(obu_id);
    error.seq = Some(seq);
    ServerFrame::Error(error)
}
