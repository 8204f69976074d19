//! Where a connection's input goes: positions to the raw topic, refused input to the DLQ, both
//! through the shared publishing layer; and the global bound on positions in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use fleetstream_core::dlq::{DeadLetter, Origin};
use fleetstream_core::otel::Tracing;
use fleetstream_core::publish::{headers, Outgoing, PublishError, Publisher};
use fleetstream_core::reason::Rejection;
use fleetstream_core::telemetry::Throttle;
use fleetstream_core::{now_ms, Position};

use crate::metrics::Metrics;
use crate::config::Config;

/// The receiver's way into Kafka, shared by its connections.
pub(crate) struct Ingest {
    publisher: Publisher,
    topic: String,
    dlq_topic: String,
    instance: String,
    delivery_timeout: Duration,
    in_flight: Arc<Semaphore>,
    /// Traces of sampled positions (off unless --otlp-endpoint).
    pub(crate) tracing: Tracing,
    metrics: Metrics,
    /// When Kafka last answered a delivery (success or failure), ms after `started`.
    last_answer_ms: AtomicU64,
    /// Failed deliveries are logged at most every few seconds (each is counted and answered).
    failures_logged: Mutex<Throttle>,
    started: Instant,
}

/// A refused input's coordinates, for its dead letter.
pub(crate) struct Refused<'a> {
    pub peer: SocketAddr,
    pub connection: u64,
    pub raw: &'a [u8],
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
}

impl Ingest {
    pub(crate) fn new(config: &Config, producer: FutureProducer, instance: String, tracing: Tracing, metrics: Metrics, shutdown: CancellationToken) -> Self {
        Ingest {
            publisher: Publisher::new(producer, shutdown),
            topic: config.topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            instance,
            delivery_timeout: config.producer.delivery_timeout,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            tracing,
            metrics,
            last_answer_ms: AtomicU64::new(0),
            failures_logged: Mutex::new(Throttle::new(Duration::from_secs(5))),
            started: Instant::now(),
        }
    }

    /// Notes that Kafka answered a delivery.
    pub(crate) fn answered(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_answer_ms.store(ms, Ordering::Relaxed);
    }

    /// Logs a position Kafka did not take (the device is told to resend it): a topic that does
    /// not exist, a denied write, a delivery timeout. Throttled: one line every 5 s, saying how
    /// many more there were.
    pub(crate) fn delivery_failed(&self, obu_id: u64, seq: u64, error: &str) {
        let pass = self.failures_logged.lock().map(|mut t| t.pass()).unwrap_or(None);
        if let Some(held_back) = pass {
            tracing::warn!(topic = %self.topic, obu_id, seq, %error, similar_since_last = held_back, "Kafka did not take a position; the device was told to resend it");
        }
    }

    /// How long positions have been waiting without Kafka answering any of them: None when
    /// nothing is in flight, or Kafka answered within `grace`. Kafka that takes records but
    /// cannot acknowledge them (too few in-sync replicas for acks=all, no controller) answers
    /// metadata requests normally; this is how the receiver notices.
    pub(crate) fn stalled_for(&self, grace: Duration) -> Option<Duration> {
        if self.metrics.in_flight.get() <= 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        let silent = self.started.elapsed().saturating_sub(last);
        (silent > grace).then_some(silent)
    }

    pub(crate) fn producer(&self) -> &FutureProducer {
        self.publisher.producer()
    }

    /// A permit of the global in-flight bound; waits while the receiver is at its limit.
    pub(crate) async fn in_flight_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().acquire_owned().await.ok()
    }

    /// Hands a position to Kafka: key = obu_id, timestamp = receipt, headers saying when, by
    /// whom and in which format it was received, and its trace if it is sampled.
    pub(crate) async fn publish(&self, position: &Position, received_ms: i64, legacy: bool, traceparent: Option<&str>) -> Result<DeliveryFuture, PublishError> {
        let mut record = Outgoing::for_vehicle(&self.topic, position.obu_id, position.to_json())
            .timestamp(received_ms)
            .header(headers::RECEIVED_AT, &received_ms.to_string())
            .header(headers::RECEIVER, &self.instance);
        if legacy {
            record = record.header(headers::FORMAT, "legacy");
        }
        if let Some(traceparent) = traceparent {
            record = record.header(headers::TRACEPARENT, traceparent);
        }
        if self.metrics.in_flight.get() <= 0 {
            // Nothing was waiting: the silence so far was idleness, not a stall.
            self.answered();
        }
        // Bounded by the delivery timeout: the in-flight limits normally keep the local queue
        // from filling at all.
        self.publisher.enqueue(&record, Instant::now() + self.delivery_timeout).await
    }

    /// Keeps refused input in the DLQ; None (counted and logged) if it cannot be queued.
    pub(crate) async fn dead_letter(&self, refused: Refused<'_>, rejection: &Rejection) -> Option<DeliveryFuture> {
        let peer = refused.peer.to_string();
        let letter = DeadLetter {
            origin: Origin::Receiver { instance: &self.instance, peer: &peer, connection: refused.connection },
            source_topic: &self.topic,
            rejection,
            attempts: 1,
            failed_at: now_ms(),
            obu_id: refused.obu_id,
            seq: refused.seq,
        };
        let record = letter.record(&self.dlq_topic, None, refused.raw);
        // A dead letter never waits for room: the device is told either way.
        match self.publisher.enqueue(&record, Instant::now()).await {
            Ok(delivery) => Some(delivery),
            Err(error) => {
                tracing::warn!(conn = refused.connection, %error, "cannot queue refused input for the DLQ");
                self.metrics.dlq_failures.inc();
                None
            }
        }
    }
}
