//! One device connection: read frames, hand positions to Kafka, answer each in order.
//!
//! Two halves share a bounded, ordered queue of outcomes. The reader parses frames and hands
//! each position to the producer, taking a per-connection and a global in-flight permit first:
//! when either runs out it simply stops reading the socket, which is the back-pressure. The
//! writer takes outcomes in arrival order and waits for each one's delivery report before
//! writing its ack or error frame, so answers come back in the order positions were sent and an
//! ack always means "in Kafka".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use fleetstream_core::dlq::DlqContext;
use fleetstream_core::frames::{ErrorFrame, ServerFrame};
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::wire::{self, WirePosition};
use fleetstream_core::{now_ms, Position};

use crate::auth::Allowed;
use crate::limits::{AbuseWindow, TokenBucket};
use crate::Shared;

/// Record headers the receiver adds to every `gpscoords` record.
pub const HEADER_RECEIVED_AT: &str = "fleetstream.received_at";
pub const HEADER_RECEIVER: &str = "fleetstream.receiver";
pub const HEADER_FORMAT: &str = "fleetstream.format";

/// WebSocket close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
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
        _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    /// A refusal; when the input was kept, wait for the DLQ write first to say so.
    Refused { error: ErrorFrame, dlq: Option<DeliveryFuture> },
    /// The last thing the connection will say.
    Close { code: u16, reason: &'static str },
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

pub(crate) struct Connection {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    allowed: Allowed,
    bucket: Option<TokenBucket>,
    abuse: AbuseWindow,
    frame_no: u64,
    last_legacy_seq: u64,
    counts: Counts,
    in_flight_here: Arc<tokio::sync::Semaphore>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, id: u64, peer: SocketAddr, allowed: Allowed) -> Self {
        let c = &shared.config;
        let bucket = (c.rate_limit > 0.0).then(|| TokenBucket::new(c.rate_limit, c.rate_burst.max(1.0)));
        let abuse = AbuseWindow::new(c.abuse_limit, Duration::from_secs(10));
        let in_flight_here = Arc::new(tokio::sync::Semaphore::new(c.max_in_flight_per_connection.max(1)));
        Connection {
            shared,
            id,
            peer,
            allowed,
            bucket,
            abuse,
            frame_no: 0,
            last_legacy_seq: 0,
            counts: Counts::default(),
            in_flight_here,
        }
    }

    pub(crate) async fn run(mut self, socket: WebSocket) {
        let started = Instant::now();
        let m = self.shared.metrics.clone();
        m.connections.inc();
        m.connections_opened.inc();
        let (sink, mut stream) = socket.split();
        let capacity = self.shared.config.max_in_flight_per_connection + self.shared.config.max_positions_per_frame + 2;
        let (tx, rx) = mpsc::channel(capacity);
        let writer = tokio::spawn(write_answers(rx, sink, self.shared.clone()));

        let ending = self.read_frames(&mut stream, &tx).await;
        m.connections_closed.with_label_values(&[ending.label]).inc();
        let _ = tx.send(Outcome::Close { code: ending.code, reason: ending.reason }).await;
        drop(tx);
        let acked = writer.await.unwrap_or(0);
        // The closing handshake: our Close frame is out; read (and drop: they were never
        // answered, so the device still holds them) what the device had already sent, until
        // its Close reply. Closing with unread data would reset the TCP connection and could
        // destroy our Close frame before the device read it.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
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

    async fn read_frames(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>, tx: &mpsc::Sender<Outcome>) -> Ending {
        let shutdown = self.shared.shutdown.clone();
        loop {
            let next = tokio::select! {
                // Shutdown first: stop taking frames, let the writer drain what is in flight.
                biased;
                () = shutdown.cancelled() => {
                    return Ending { code: close_code::GOING_AWAY, reason: "receiver shutting down", label: "shutdown" };
                }
                next = stream.next() => next,
            };
            let message = match next {
                None => return Ending { code: close_code::NORMAL, reason: "", label: "client_gone" },
                Some(Err(error)) => {
                    if is_too_big(&error) {
                        self.count_frame("text", 0);
                        self.shared.metrics.positions_received.inc();
                        self.refuse(tx, Rejection::new(Reason::FrameTooLarge, format!(
                            "frame exceeds the hard limit of {} bytes; connection closed",
                            self.shared.config.max_frame_bytes * 4
                        )), None, None, None).await;
                        return Ending { code: close_code::MESSAGE_TOO_BIG, reason: "frame too large", label: "frame_too_big" };
                    }
                    tracing::debug!(conn = self.id, %error, "websocket read error");
                    return Ending { code: close_code::NORMAL, reason: "", label: "read_error" };
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    self.count_frame("text", text.len());
                    self.handle_text(tx, text.as_str()).await;
                }
                Message::Binary(bytes) => {
                    self.count_frame("binary", bytes.len());
                    self.shared.metrics.positions_received.inc();
                    self.abuse.record();
                    let rejection = Rejection::new(Reason::BinaryFrame, "binary frames are not accepted; send positions as JSON text frames");
                    self.refuse(tx, rejection, Some(&bytes), None, None).await;
                }
                Message::Ping(_) => self.count_frame("ping", 0),
                Message::Pong(_) => self.count_frame("pong", 0),
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
        self.shared.metrics.frames.with_label_values(&[kind]).inc();
        self.shared.metrics.bytes_received.inc_by(len as u64);
    }

    async fn handle_text(&mut self, tx: &mpsc::Sender<Outcome>, text: &str) {
        let config = &self.shared.config;
        if text.len() > config.max_frame_bytes {
            self.shared.metrics.positions_received.inc();
            self.abuse.record();
            let rejection = Rejection::new(
                Reason::FrameTooLarge,
                format!("frame of {} bytes exceeds the limit of {} bytes", text.len(), config.max_frame_bytes),
            );
            self.refuse(tx, rejection, Some(text.as_bytes()), None, None).await;
            return;
        }
        let elements = match wire::parse_frame(text, config.max_positions_per_frame) {
            Ok(elements) => elements,
            Err(rejection) => {
                self.shared.metrics.positions_received.inc();
                if rejection.reason == Reason::TooManyPositions {
                    self.abuse.record();
                }
                self.refuse(tx, rejection, Some(text.as_bytes()), None, None).await;
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
            self.shared.metrics.positions_received.inc();
            let index = indexed.then_some(i);
            if i >= admitted {
                let rejection = Rejection::new(
                    Reason::RateLimited,
                    format!("over the limit of {} positions/s for this connection; resend later", self.shared.config.rate_limit),
                );
                self.refuse(tx, rejection, None, element.obu_id.map(|o| (o, element.seq)), index).await;
                continue;
            }
            let wire_position = match element.parsed {
                Ok(p) => p,
                Err(rejection) => {
                    self.refuse(tx, rejection, Some(element.raw.as_bytes()), element.obu_id.map(|o| (o, element.seq)), index).await;
                    continue;
                }
            };
            if !self.allowed.permits(wire_position.obu_id) {
                let rejection = Rejection::new(
                    Reason::ObuNotAllowed,
                    format!("this device's token does not allow obu_id {}", wire_position.obu_id),
                );
                let id = Some((wire_position.obu_id, wire_position.seq));
                self.refuse(tx, rejection, Some(element.raw.as_bytes()), id, index).await;
                continue;
            }
            self.publish(tx, wire_position, received, received_ms, index).await;
        }
    }

    /// Hands one position to Kafka and queues its delivery for the writer.
    async fn publish(&mut self, tx: &mpsc::Sender<Outcome>, wire: WirePosition, received: Instant, received_ms: i64, index: Option<usize>) {
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
            () = self.shared.shutdown.cancelled() => None,
            permits = acquire(&self.in_flight_here, &self.shared.global_in_flight) => permits,
        };
        let Some(permits) = permits else {
            let rejection = Rejection::new(Reason::ShuttingDown, "the receiver is shutting down; reconnect and resend");
            self.refuse(tx, rejection, None, id, index).await;
            return;
        };
        match self.send_to_kafka(&position, received_ms, legacy).await {
            Ok(delivery) => {
                self.shared.metrics.in_flight.inc();
                let outcome = Outcome::Delivery {
                    obu_id: position.obu_id,
                    seq: position.seq,
                    received,
                    handed: Instant::now(),
                    delivery,
                    _permits: permits,
                };
                let _ = tx.send(outcome).await;
            }
            Err(error) => {
                drop(permits);
                let rejection = Rejection::new(Reason::KafkaUnavailable, format!("could not hand the position to Kafka: {error}"));
                self.refuse(tx, rejection, None, id, index).await;
            }
        }
    }

    async fn send_to_kafka(&self, position: &Position, received_ms: i64, legacy: bool) -> Result<DeliveryFuture, KafkaError> {
        let payload = position.to_json();
        let key = position.key();
        let received_at = received_ms.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: HEADER_RECEIVED_AT, value: Some(received_at.as_bytes()) })
            .insert(Header { key: HEADER_RECEIVER, value: Some(self.shared.instance.as_bytes()) });
        if legacy {
            headers = headers.insert(Header { key: HEADER_FORMAT, value: Some("legacy".as_bytes()) });
        }
        let mut record = FutureRecord::to(&self.shared.config.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers)
            .timestamp(received_ms);
        let deadline = Instant::now() + self.shared.config.producer.delivery_timeout;
        loop {
            match self.shared.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                // The local queue is full: Kafka is slower than the devices. Wait, bounded by the
                // delivery timeout; the in-flight limits normally keep this from happening.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if Instant::now() < deadline => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Answers with an error frame; keeps non-retryable input in the DLQ first.
    async fn refuse(&mut self, tx: &mpsc::Sender<Outcome>, rejection: Rejection, raw: Option<&[u8]>, id: Option<(u64, Option<u64>)>, index: Option<usize>) {
        self.counts.refused += 1;
        let m = &self.shared.metrics;
        m.positions_refused.with_label_values(&[rejection.reason.as_str()]).inc();
        let (obu_id, seq) = match id {
            Some((o, s)) => (Some(o), s),
            None => (None, None),
        };
        let dlq = match raw {
            Some(raw) if !rejection.reason.retryable() => self.send_to_dlq(raw, &rejection, obu_id, seq),
            _ => None,
        };
        let mut error = ErrorFrame::new(rejection);
        error.obu_id = obu_id;
        error.seq = seq;
        error.frame = Some(self.frame_no);
        error.index = index;
        let _ = tx.send(Outcome::Refused { error, dlq }).await;
    }

    fn send_to_dlq(&self, raw: &[u8], rejection: &Rejection, obu_id: Option<u64>, seq: Option<u64>) -> Option<DeliveryFuture> {
        let now = now_ms();
        let peer = self.peer.to_string();
        let context = DlqContext {
            stage: "receiver",
            topic: &self.shared.config.topic,
            partition: None,
            offset: None,
            timestamp: Some(now),
            group: &self.shared.instance,
            reason: rejection.reason,
            message: &rejection.message,
            attempts: 1,
            failed_at: now,
            peer: Some(&peer),
            connection: Some(self.id),
            obu_id,
            seq,
        };
        let key = obu_id.map(|o| o.to_string());
        let mut record = FutureRecord::<String, [u8]>::to(&self.shared.config.dlq_topic)
            .payload(raw)
            .headers(context.headers())
            .timestamp(now);
        if let Some(key) = key.as_ref() {
            record = record.key(key);
        }
        match self.shared.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((error, _)) => {
                tracing::warn!(conn = self.id, %error, "cannot queue refused input for the DLQ");
                self.shared.metrics.dlq_failures.inc();
                None
            }
        }
    }
}

/// Whether a read error is tungstenite's capacity error (a message over the hard size cap).
/// axum does not re-export tungstenite's error type, so this reads its stable Display text.
fn is_too_big(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("Message too long")
}

async fn acquire(
    here: &Arc<tokio::sync::Semaphore>,
    global: &Arc<tokio::sync::Semaphore>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let local = here.clone().acquire_owned().await.ok()?;
    let global = global.clone().acquire_owned().await.ok()?;
    Some((local, global))
}

/// The writer half: answers outcomes in order, then closes the socket.
async fn write_answers(
    mut rx: mpsc::Receiver<Outcome>,
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    shared: Arc<Shared>,
) -> u64 {
    let m = &shared.metrics;
    let mut acked = 0u64;
    let mut open = true;
    while let Some(outcome) = rx.recv().await {
        let frame = match outcome {
            Outcome::Delivery { obu_id, seq, received, handed, delivery, _permits } => {
                let result = delivery.await;
                m.in_flight.dec();
                m.kafka_delivery.observe(handed.elapsed().as_secs_f64());
                match result {
                    Ok(Ok(_)) => {
                        m.positions_acked.inc();
                        m.ack_latency.observe(received.elapsed().as_secs_f64());
                        acked += 1;
                        ServerFrame::Ack { obu_id, seq }
                    }
                    Ok(Err((error, _))) => delivery_failed(m, obu_id, seq, &error.to_string()),
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
        if sink.feed(Message::Text(frame.to_json().into())).await.is_err() {
            open = false;
            continue;
        }
        if rx.is_empty() && sink.flush().await.is_err() {
            open = false;
        }
    }
    acked
}

fn delivery_failed(m: &crate::metrics::Metrics, obu_id: u64, seq: u64, why: &str) -> ServerFrame {
    m.positions_refused.with_label_values(&[Reason::KafkaUnavailable.as_str()]).inc();
    let mut error = ErrorFrame::new(Rejection::new(
        Reason::KafkaUnavailable,
        format!("Kafka did not acknowledge the position within the delivery timeout ({why}); resend it"),
    ));
    error.obu_id = Some(obu_id);
    error.seq = Some(seq);
    ServerFrame::Error(error)
}
