//! From Kafka into the database: the start-up seed from `vehicle-latest`, then the
//! consume -> batch -> write -> commit loop over `positions` and `events`.
//!
//! One consumer, in one group, subscribed to both topics: a batch holds the positions and the
//! events taken since the last flush, each topic's records are written in their own
//! transaction, and the offsets of both are committed once both are durable. So a crash
//! re-reads at most the batches that were not yet durable; writing them again is a no-op (the
//! history is keyed by `(obu_id, boot, seq)`, the latest position only moves forward, events
//! are keyed by their deterministic `event_id`). A rebalance needs no special care for the same
//! reason: committing an offset for a partition that has just moved is harmless, because
//! everything before it is stored. Events are read committed only: the processor writes them in
//! transactions, and an aborted one never reaches the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rand::Rng as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use fleetstream_core::http::Health;
use fleetstream_core::otel::{PositionSpan, Tracing};
use fleetstream_core::publish::headers;
use fleetstream_core::telemetry::Throttle;
use fleetstream_core::ProcessedPosition;

use crate::config::Config;
use crate::latest::{Seed, Vehicles};
use crate::live::Feeds;
use crate::metrics::Metrics;
use crate::store::{storable, NewEvent, Store, StoreError};
use crate::view::VehicleView;

/// Logs partition movements of the ingest consumer.
pub(crate) struct Context;

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<String> = tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<String> = tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
                tracing::info!(?partitions, "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

pub(crate) type IngestConsumer = StreamConsumer<Context>;

/// The consumer of `--positions-topic` and `--events-topic` in `--group-id`, subscribed
/// (partitions are assigned once it is polled; read committed, as every consumer group member
/// of fleetstream). Offsets are committed by [`Ingest`] only, after each durable batch.
pub(crate) fn subscribe(config: &Config) -> anyhow::Result<IngestConsumer> {
    if config.positions_topic == config.events_topic {
        anyhow::bail!("--positions-topic and --events-topic are both `{}`; they must differ", config.positions_topic);
    }
    let consumer: IngestConsumer =
        config.kafka.consumer_config(&config.group_id).create_with_context(Context).context("cannot create Kafka consumer")?;
    consumer.subscribe(&[&config.positions_topic, &config.events_topic]).context("cannot subscribe")?;
    Ok(consumer)
}

/// The topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Positions,
    Events,
}

/// Records taken from Kafka and not yet stored, with the offsets to commit once they are.
#[derive(Default)]
struct Batch {
    positions: Vec<ProcessedPosition>,
    events: Vec<NewEvent>,
    /// Next offset to consume, per topic and partition, covering every record taken (stored
    /// or skipped).
    offsets: BTreeMap<(Source, i32), i64>,
    started: Option<tokio::time::Instant>,
    /// Spans of the traced positions, by index in `positions`.
    spans: Vec<(usize, PositionSpan)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.positions.len() + self.events.len()
    }
}

/// The ingest loop: seeds from `vehicle-latest`, then stores the positions and events topics
/// batch by batch and publishes what was new to the live feeds.
pub(crate) struct Ingest {
    config: Arc<Config>,
    consumer: Arc<IngestConsumer>,
    store: Store,
    metrics: Metrics,
    health: Health,
    live: Feeds,
    /// Where the seed leaves what it read of `vehicle-latest` (partitions, decommissions).
    vehicles: Vehicles,
    stopping: Stopping,
    tracing: Tracing,
}

/// When the ingest loop ends.
#[derive(Debug, Clone)]
pub(crate) struct Stopping {
    /// Stop consuming; write and commit the batch in hand, then return.
    pub drain: CancellationToken,
    /// Give up even on the batch in hand (the shutdown timeout passed): nothing more is
    /// committed, and the records are read again after a restart.
    pub abort: CancellationToken,
}

impl Ingest {
    /// An ingest of `consumer` (from [`subscribe`]) into `store`, reporting readiness on `health`.
    #[allow(clippy::too_many_arguments)] // each is a separate shared handle of the tracker
    pub(crate) fn new(
        config: Arc<Config>,
        consumer: Arc<IngestConsumer>,
        store: Store,
        metrics: Metrics,
        health: Health,
        live: Feeds,
        vehicles: Vehicles,
        stopping: Stopping,
        tracing: Tracing,
    ) -> Self {
        Ingest { config, consumer, store, metrics, health, live, vehicles, stopping, tracing }
    }

    #[tracing::instrument(name = "ingest", skip_all)]
    pub(crate) async fn run(self) {
        self.health.set_not_ready("reading vehicle-latest");
        if !self.seed().await {
            return;
        }
        self.refresh_vehicle_gauge().await;
        self.health.set_ready();
        let mut batch = Batch::default();
        // While brokers are down the client reports every failed connection; a producer gone
        // wrong may write nothing but garbage.
        let mut errors = Throttle::new(Duration::from_secs(5));
        let mut garbage = Throttle::new(Duration::from_secs(5));
        loop {
            let deadline = batch.started.map(|s| s + self.config.flush_interval);
            tokio::select! {
                biased;
                () = self.stopping.drain.cancelled() => break,
                // A partial batch waits at most the flush interval.
                () = sleep_until(deadline), if deadline.is_some() => {
                    if !self.flush(&mut batch).await {
                        return;
                    }
                }
                message = self.consumer.recv() => match message {
                    Ok(m) => {
                        self.take(&m, &mut batch, &mut garbage);
                        if batch.len() >= self.config.batch_size && !self.flush(&mut batch).await {
                            return;
                        }
                    }
                    Err(error) => {
                        if let Some(held_back) = errors.pass() {
                            tracing::warn!(%error, similar_since_last = held_back, "consumer error");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        if batch.started.is_some() {
            tracing::info!(positions = batch.positions.len(), events = batch.events.len(), "shutting down: writing the batch in hand");
            self.flush(&mut batch).await;
        }
        tracing::info!("ingest stopped");
    }

    /// Adds one record to the batch (or counts why it cannot be stored, and logs it unless
    /// `garbage` holds the line back).
    fn take(&self, m: &BorrowedMessage<'_>, batch: &mut Batch, garbage: &mut Throttle) {
        let source = if m.topic() == self.config.events_topic { Source::Events } else { Source::Positions };
        batch.started.get_or_insert_with(tokio::time::Instant::now);
        let next = batch.offsets.entry((source, m.partition())).or_insert(0);
        *next = (*next).max(m.offset() + 1);
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        match source {
            Source::Positions => {
                self.metrics.consumed.inc();
                let why = match m.payload().map(serde_json::from_slice::<ProcessedPosition>) {
                    Some(Ok(p)) if storable(&p) => {
                        if let Some(mut span) = self.span_of(m) {
                            span.attribute("fleetstream.obu_id", p.obu_id as i64);
                            span.attribute("fleetstream.seq", p.seq as i64);
                            span.attribute("messaging.source.partition.id", partition.to_string());
                            span.attribute("messaging.kafka.offset", offset);
                            batch.spans.push((batch.positions.len(), span));
                        }
                        batch.positions.push(p);
                        return;
                    }
                    Some(Ok(p)) => ("out_of_range", format!("obu_id {}, boot {} or seq {} is beyond i64::MAX", p.obu_id, p.boot, p.seq)),
                    Some(Err(error)) => ("undecodable", format!("not a position: {error}")),
                    None => ("undecodable", "the record has no value".to_string()),
                };
                self.metrics.skipped.with_label_values(&[why.0]).inc();
                if let Some(held_back) = garbage.pass() {
                    tracing::warn!(topic, partition, offset, reason = why.0, error = why.1, similar_since_last = held_back, "record not stored");
                }
            }
            Source::Events => {
                self.metrics.events_consumed.inc();
                match NewEvent::from_record(m.payload()) {
                    Ok(event) => batch.events.push(event),
                    Err(error) => {
                        self.metrics.events_skipped.with_label_values(&[error.reason()]).inc();
                        if let Some(held_back) = garbage.pass() {
                            tracing::warn!(topic, partition, offset, reason = error.reason(), %error, similar_since_last = held_back, "record not stored");
                        }
                    }
                }
            }
        }
    }

    /// The span of a position record if it is traced, or sampled here without a trace
    /// (`--trace-sample-ratio`); None when tracing is off.
    fn span_of(&self, m: &BorrowedMessage<'_>) -> Option<PositionSpan> {
        if !self.tracing.is_on() {
            return None;
        }
        match headers::text(m.headers(), headers::TRACEPARENT) {
            Some(parent) => self.tracing.child("store position", Some(parent), SystemTime::now()),
            None => self.tracing.root("store position", SystemTime::now),
        }
    }

    /// Writes the batch (retrying until it is durable), commits its offsets, feeds the live
    /// clients. False if the tracker is aborting: then nothing was committed, and the records
    /// are read again after the restart.
    async fn flush(&self, batch: &mut Batch) -> bool {
        let started = Instant::now();
        let taken = std::mem::take(batch);
        let positions = Arc::new(taken.positions);
        let events = Arc::new(taken.events);
        let mut retried = false;
        let Some(outcome) = self.durably("write", "positions", positions.len(), &mut retried, || self.store.write(positions.clone())).await else {
            return false;
        };
        let Some(new_events) = self.durably("write_events", "events", events.len(), &mut retried, || self.store.write_events(events.clone())).await
        else {
            return false;
        };
        let stored_at = SystemTime::now();
        self.commit(&taken.offsets).await;
        self.metrics.batch_size.observe(positions.len() as f64);
        self.metrics.written.inc_by(outcome.inserted.len() as u64);
        self.metrics.duplicates.inc_by(outcome.duplicates);
        self.metrics.event_duplicates.inc_by(new_events.duplicates);
        for e in new_events.inserted.iter().filter_map(|&i| events.get(i)) {
            self.metrics.events_stored.with_label_values(&[e.event().type_name()]).inc();
        }
        self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        if retried || !self.health.is_ready() {
            self.health.set_ready();
        }
        // Only what is new goes to the live feeds: a replay does not make the map jump.
        self.live.positions.publish(outcome.inserted.iter().filter_map(|&i| positions.get(i)).map(VehicleView::live));
        self.live.events.publish_json(new_events.inserted.iter().filter_map(|&i| events.get(i)).map(NewEvent::body));
        end_spans(taken.spans, &outcome.inserted, stored_at);
        if !positions.is_empty() {
            self.refresh_vehicle_gauge().await;
        }
        true
    }

    /// Runs one database write of `n` records (`what`) until it succeeds, with backoff; counts
    /// each failure under `op` and reports not ready meanwhile. Nothing to write: `T::default()`
    /// at once. `None` if the tracker is aborting.
    async fn durably<T, F, Fut>(&self, op: &'static str, what: &'static str, n: usize, retried: &mut bool, mut write: F) -> Option<T>
    where
        T: Default,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        if n == 0 {
            return Some(T::default());
        }
        let mut attempt = 0u32;
        loop {
            match write().await {
                Ok(outcome) => return Some(outcome),
                Err(error) => {
                    attempt += 1;
                    *retried = true;
                    self.metrics.db_errors.with_label_values(&[op]).inc();
                    let error = error.chain();
                    self.health.set_not_ready(format!("database write failed: {error}"));
                    tracing::warn!(error, attempt, records = n, what, "database write failed; retrying");
                    if !self.backoff(attempt).await {
                        tracing::warn!(records = n, what, "gave up on the batch in hand; it will be read again after a restart");
                        return None;
                    }
                }
            }
        }
    }

    /// Commits synchronously (on a blocking thread): when this returns, a restart resumes
    /// after the batch. A failed commit is only logged: the records are read again and
    /// recognised as stored.
    async fn commit(&self, offsets: &BTreeMap<(Source, i32), i64>) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((source, p), next) in offsets {
            let topic = match source {
                Source::Positions => &self.config.positions_topic,
                Source::Events => &self.config.events_topic,
            };
            if let Err(error) = tpl.add_partition_offset(topic, *p, Offset::Offset(*next)) {
                tracing::warn!(%error, topic, partition = p, "cannot build the offset commit");
            }
        }
        let consumer = self.consumer.clone();
        match tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
            Ok(Ok(())) => self.metrics.commits.inc(),
            Ok(Err(error)) => tracing::warn!(%error, "offset commit failed; the batch will be read again and recognised as stored"),
            Err(error) => tracing::warn!(%error, "offset commit task failed"),
        }
    }

    async fn refresh_vehicle_gauge(&self) {
        match self.store.vehicle_count().await {
            Ok(n) => self.metrics.vehicles.set(n),
            Err(error) => {
                self.metrics.db_errors.with_label_values(&["count"]).inc();
                tracing::debug!(error = error.chain(), "cannot count vehicles");
            }
        }
    }

    /// Exponential backoff with full jitter, capped. False if the tracker is aborting.
    async fn backoff(&self, attempt: u32) -> bool {
        let base = self.config.retry_initial.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
        let capped = base.min(self.config.retry_max.as_secs_f64()).max(0.001);
        let delay = Duration::from_secs_f64(rand::rng().random_range(capped / 2.0..=capped));
        tokio::select! {
            () = self.stopping.abort.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Reads `vehicle-latest` whole and moves each vehicle's latest position forward to it, so
    /// the map is complete at once even when the positions backlog is long, and takes the
    /// vehicles it holds a tombstone of off the map. Retries until it succeeds; false if the
    /// tracker stopped first.
    async fn seed(&self) -> bool {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let config = self.config.clone();
            let read = tokio::task::spawn_blocking(move || read_latest(&config)).await;
            let result = match read {
                Ok(Ok(latest)) => {
                    self.metrics.latest_seeded.inc_by(latest.records);
                    let positions = latest.positions();
                    let gone = latest.decommissioned();
                    let mut changed = 0;
                    let mut failed = None;
                    for chunk in positions.chunks(1_000) {
                        match self.store.seed_latest(chunk.to_vec()).await {
                            Ok(n) => changed += n,
                            Err(error) => {
                                self.metrics.db_errors.with_label_values(&["seed"]).inc();
                                failed = Some(anyhow::anyhow!("writing the seed: {}", error.chain()));
                                break;
                            }
                        }
                    }
                    for (obu_id, after) in &gone {
                        if failed.is_some() {
                            break;
                        }
                        if let Err(error) = self.store.decommission(*obu_id, *after).await {
                            self.metrics.db_errors.with_label_values(&["seed"]).inc();
                            failed = Some(anyhow::anyhow!("writing the seed's decommissions: {}", error.chain()));
                        }
                    }
                    match failed {
                        None => {
                            tracing::info!(
                                records = latest.records,
                                vehicles = positions.len(),
                                decommissioned = gone.len(),
                                changed,
                                elapsed = ?started.elapsed(),
                                "latest positions seeded from vehicle-latest"
                            );
                            self.vehicles.seeded(latest);
                            Ok(())
                        }
                        Some(e) => Err(e),
                    }
                }
                Ok(Err(error)) => Err(error),
                Err(error) => Err(anyhow::anyhow!("seed task failed: {error}")),
            };
            match result {
                Ok(()) => return true,
                Err(error) => {
                    attempt += 1;
                    self.health.set_not_ready(format!("reading vehicle-latest failed: {error:#}"));
                    tracing::warn!(error = format!("{error:#}"), attempt, "seeding from vehicle-latest failed; retrying");
                    let stop = self.stopping.drain.clone();
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        ok = self.backoff(attempt) => if !ok { return false },
                    }
                }
            }
        }
    }
}

/// Ends the spans of a stored batch's traced positions: `inserted` (indices) were new and went
/// to the live feed; the rest were stored already (a replay).
fn end_spans(spans: Vec<(usize, PositionSpan)>, inserted: &[usize], stored_at: SystemTime) {
    for (i, mut span) in spans {
        span.event_at("stored", stored_at);
        if inserted.contains(&i) {
            span.event("pushed to the live feed");
        } else {
            span.attribute("fleetstream.duplicate", true);
        }
        span.end();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A read that makes no progress for this long fails (and is retried).
const STALL: Duration = Duration::from_secs(15);

/// Every partition of `vehicle-latest` from the beginning up to its end at the time of the
/// call, and where each partition is to be followed from. No consumer group: nothing is
/// committed.
fn read_latest(config: &Config) -> anyhow::Result<Seed> {
    let mut client = config.kafka.client_config();
    client
        .set("group.id", format!("{}-seed", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    config.kafka.apply_overrides(&mut client);
    let reader: BaseConsumer = client.create()?;
    let topic = config.latest_topic.as_str();
    // The probe says in words why Kafka refuses (credentials, TLS, a missing ACL naming the
    // topic) where metadata alone gives "transport failure" or an empty topic list; its error
    // is what /readyz shows while this is retried.
    let count = fleetstream_core::kafka::Probe::new(&config.kafka)?.partitions(topic, Duration::from_secs(10))?.unwrap_or(0);
    let partitions: Vec<i32> = (0..count).collect();
    let mut snapshot = Seed::default();
    if partitions.is_empty() {
        tracing::warn!(topic, "the vehicle-latest topic does not exist; starting from the positions topic alone");
        return Ok(snapshot);
    }
    // Where each partition ends now: later records are the follower's (latest.rs).
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = reader.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    if !ends.is_empty() {
        reader.assign(&tpl)?;
    }
    let mut progress = Instant::now();
    while !ends.is_empty() {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                progress = Instant::now();
                let (p, offset) = (m.partition(), m.offset());
                snapshot.take(&m);
                if ends.get(&p).is_some_and(|end| offset + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None if progress.elapsed() > STALL => anyhow::bail!("reading {topic} made no progress for {STALL:?}"),
            None => {}
        }
    }
    // The follower goes on where this read stopped (an empty partition: from its beginning).
    let stopped = reader.position()?;
    snapshot.resume = partitions
        .iter()
        .map(|p| match stopped.find_partition(topic, *p).map(|e| e.offset()) {
            Some(offset @ Offset::Offset(_)) => (*p, offset),
            _ => (*p, Offset::Beginning),
        })
        .collect();
    Ok(snapshot)
}
