//! The consume -> judge -> write -> commit loop.
//!
//! It runs on a thread of its own with a `BaseConsumer`, in batches: poll up to `batch_size`
//! records, judge them (each partition on its own thread; a vehicle lives in one partition, so
//! no two workers ever see the same vehicle), then write and commit:
//! - with transactions (the default): the batch's outputs, its vehicles' latest states and the
//!   input offsets go out in one Kafka transaction; before committing it the loop makes sure it
//!   is still a member of the group (a frozen instance whose partitions moved on aborts), and
//!   Kafka itself refuses the offsets of a stale group generation;
//! - without (`--exactly-once rebuild`): outputs, then latest states, each acknowledged, then
//!   the offsets; a new owner recognises what was written from the outputs (see `restore`).
//!
//! A batch that fails is not retried in place: its transaction is aborted, its partitions'
//! state is dropped, the consumer is rewound to the batch's first offsets and the loop polls
//! again after a backoff, so rebalances that happened meanwhile are seen first. Rebalances
//! happen inside `poll`, i.e. only between batches, when nothing is in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_util::future::try_join_all;
use rand::Rng as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use fleetstream_core::http::Health;
use fleetstream_core::telemetry::Throttle;
use fleetstream_core::now_ms;
use fleetstream_core::otel::Tracing;
use fleetstream_core::publish::{delivered, headers, Outgoing, PublishError, Publisher};
use fleetstream_core::reason::Reason;
use fleetstream_core::events::Event;
use fleetstream_core::ProcessedPosition;

use crate::config::ExactlyOnce;
use crate::geofences::Geofences;
use crate::judge::{decide, Decision, Judge};
use crate::metrics::Metrics;
use crate::outputs::Layout;
use crate::rebalance::{Context, Events, RebalanceEvent};
use crate::restore::{self, PartitionState};
use crate::config::Config;
use crate::traced::{BatchClock, BatchSpans};

/// How often vehicles are checked for silence (`offline`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often a wait for acknowledgements wakes the producer's broker threads (see `await_all`).
const WAKE_EVERY: Duration = Duration::from_millis(5);

/// Longest a commit waits for librdkafka to release the batch's acknowledged records (see
/// [`released`]); usually well under a millisecond.
const RELEASE_WAIT: Duration = Duration::from_millis(20);

/// A partition with a backlog that delivers nothing for this long is sought again.
const STALLED_FETCH: Duration = Duration::from_secs(30);

/// How long a transaction's control calls (offsets, commit, abort) may take, as librdkafka is
/// told.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long we wait for one of them before abandoning it (see [`bounded`]).
const TXN_CALL_BOUND: Duration = Duration::from_secs(15);

/// The processor's Kafka clients.
pub(crate) struct Clients {
    consumer: BaseConsumer<Context>,
    producer: FutureProducer,
    /// How to make the producer again after Kafka fenced it (transactions only).
    producer_config: Option<rdkafka::ClientConfig>,
    reader: restore::Reader,
    events: Events,
    /// Spans of traced positions (off unless --otlp-endpoint).
    tracing: Tracing,
}

impl Clients {
    /// Creates the producer (transactional in that mode, with its transactions initialised,
    /// which fences an earlier instance with the same id and aborts what it left open), the
    /// consumer (subscribed to the input) and the state reader.
    pub(crate) async fn connect(config: &Config, transactional_id: Option<&str>, metrics: &Metrics) -> anyhow::Result<Clients> {
        // Traces mostly start at the receiver; here only for positions that arrive without one.
        let tracing = Tracing::start(&config.trace, "fleetstream-processor", config.trace_sample_ratio)?;
        let mut producer_config = config.kafka.producer_config(&config.producer);
        if let Some(id) = transactional_id {
            let timeout = config.transaction_timeout.as_millis();
            let delivery = config.producer.delivery_timeout.as_millis().min(timeout);
            producer_config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", timeout.to_string())
                .set("message.timeout.ms", delivery.to_string())
                // A batch's offsets often reach the coordinator while the previous commit's
                // markers are still being written: Kafka answers CONCURRENT_TRANSACTIONS, and
                // librdkafka 2.12 retries AddOffsetsToTxn after retry.backoff.ms (100 ms by
                // default; it uses 20 ms for AddPartitionsToTxn, as the Java client does). About
                // once a second at 1k positions/s in the processor's librdkafka debug log (eos).
                .set("retry.backoff.ms", "20");
            config.kafka.apply_overrides(&mut producer_config);
        }
        let producer = match transactional_id {
            None => producer_config.create().context("cannot create Kafka producer")?,
            Some(_) => {
                let c = producer_config.clone();
                tokio::task::spawn_blocking(move || transactional_producer(&c))
                    .await?
                    .context("cannot initialise Kafka transactions (does the broker support them? else --exactly-once rebuild)")?
            }
        };
        let producer_config = transactional_id.map(|_| producer_config);
        let consumer_config = config.kafka.consumer_config(&config.group_id);
        let events = Events::default();
        let consumer: BaseConsumer<Context> = consumer_config
            .create_with_context(Context::new(events.clone(), metrics.clone()))
            .context("cannot create Kafka consumer")?;
        consumer.subscribe(&[&config.input_topic]).context("cannot subscribe")?;
        let reader = restore::reader(config)?;
        Ok(Clients { consumer, producer, producer_config, reader, events, tracing })
    }

    pub(crate) fn tracing(&self) -> Tracing {
        self.tracing.clone()
    }
}

/// A transactional producer with its transactions initialised: this fences any earlier
/// producer with the same transactional id and aborts what it left open.
fn transactional_producer(config: &rdkafka::ClientConfig) -> anyhow::Result<FutureProducer> {
    let producer: FutureProducer = config.create().context("cannot create Kafka producer")?;
    producer.init_transactions(TXN_CALL_TIMEOUT)?;
    Ok(producer)
}

/// Runs one of librdkafka's transactional control calls with a deadline of our own: some can
/// block past their own timeout when the broker of a coordinator went away, as when the whole
/// cluster restarts (librdkafka issues #5456 and #5511, open in 2.12). A call that does not
/// return is abandoned on its thread, with its producer: the caller makes a new one, whose
/// `init_transactions` fences the old and aborts what it left open.
///
/// The bound is shorter than librdkafka's own timeout: a commit that waits on a broker failover
/// for longer is better redone with a fresh producer (whose `init_transactions` settles the old
/// transaction one way or the other; the state rebuild recognises what it committed) than
/// waited for.
fn bounded<T: Send + 'static>(what: &'static str, call: impl FnOnce() -> rdkafka::error::KafkaResult<T> + Send + 'static) -> Result<rdkafka::error::KafkaResult<T>, BatchError> {
    // Making a producer waits for the transaction coordinator, which may be loading after a
    // restart: it gets librdkafka's whole timeout.
    let limit = if what == "init_transactions" { TXN_CALL_TIMEOUT + Duration::from_secs(5) } else { TXN_CALL_BOUND };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("txn-{what}"))
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| BatchError::Retry(format!("cannot start a thread for {what}: {e}")))?;
    match rx.recv_timeout(limit) {
        Ok(result) => Ok(result),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(BatchError::Stuck(format!("librdkafka's {what} did not return within {limit:?}; abandoning the producer")))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(BatchError::Retry(format!("{what} panicked"))),
    }
}

/// Waits up to `limit` until `producer` holds no record: every one acknowledged and released.
///
/// rdkafka 0.39's `commit_transaction` first flushes, and its flush, while librdkafka still counts a
/// record, waits on the delivery-event queue for a fixed 100 ms. Every record of the batch is
/// acknowledged by the time the commit starts, but the producer's polling thread completes the
/// delivery futures before it releases the event that holds them, so a commit that starts within
/// that fraction of a millisecond paid 100 ms: about one batch in ten at 1k positions/s, the
/// ~100 ms tail of the end-to-end latency (docs/benchmarks.md). Waiting here for the release
/// costs ~0.2 ms in those batches and nothing in the others.
fn released(producer: &FutureProducer, limit: Duration) {
    let started = Instant::now();
    while producer.in_flight_count() > 0 && started.elapsed() < limit {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A producer fenced this often within the window is not timing out: another running instance
/// shares its transactional id.
const MAX_REFENCES: usize = 3;
const REFENCE_WINDOW: Duration = Duration::from_secs(300);

/// Input records grouped by partition, in offset order.
type ByPartition = BTreeMap<i32, Vec<OwnedMessage>>;

/// Why a batch could not be committed.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Worth another try after a rewind (the usual case: a broker unavailable for a while).
    #[error("{0}")]
    Retry(String),
    /// The transactional producer cannot go on: Kafka fenced it (its transaction outlived
    /// the transaction timeout, or another instance took its transactional id).
    #[error("{0}")]
    Fenced(String),
    /// One of librdkafka's transactional calls did not return in time (see [`bounded`]).
    #[error("{0}")]
    Stuck(String),
    /// Shutdown came first.
    #[error("stopped")]
    Stopped,
}

impl From<KafkaError> for BatchError {
    fn from(error: KafkaError) -> Self {
        match &error {
            KafkaError::Transaction(e) if e.is_fatal() => BatchError::Fenced(error.to_string()),
            _ => BatchError::Retry(error.to_string()),
        }
    }
}

impl From<PublishError> for BatchError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::ShuttingDown => BatchError::Stopped,
            PublishError::Kafka(e) => e.into(),
            other => BatchError::Retry(other.to_string()),
        }
    }
}

/// Why the loop stops.
#[derive(Debug)]
enum Stop {
    Shutdown,
    Fatal(String),
}

/// What a committed batch did, for the metrics.
#[derive(Debug, Default)]
struct Tally {
    valid: u64,
    invalid: Vec<Reason>,
    duplicates: u64,
    replayed: u64,
    latest: u64,
    events: Vec<&'static str>,
}

/// A batch's records to write, valid positions and dead letters apart from events, and the
/// spans of its traced records.
struct Outputs<'a> {
    tally: Tally,
    records: Vec<Outgoing<'a>>,
    events: Vec<Outgoing<'a>>,
    spans: BatchSpans,
}

/// Events of the timers (`offline`) by partition.
type TimerEvents = BTreeMap<i32, Vec<Event>>;

/// The loop and everything it keeps between batches.
pub(crate) struct Pipeline {
    config: Arc<Config>,
    layout: Layout,
    consumer: BaseConsumer<Context>,
    publisher: Publisher,
    producer_config: Option<rdkafka::ClientConfig>,
    /// When the producer was last fenced and made again.
    refenced: Vec<Instant>,
    reader: restore::Reader,
    events: Events,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    /// State of every partition processed since it was assigned.
    partitions: HashMap<i32, PartitionState>,
    assigned: Vec<i32>,
    /// Next offset to process per partition: after the last committed batch.
    next_offset: HashMap<i32, i64>,
    /// Batches failed in a row, for the backoff.
    failures: u32,
    consumer_errors: Throttle,
    progress: Progress,
    /// When the consumer last delivered a record.
    last_record: Instant,
    geofences: Geofences,
    /// When vehicles were last checked for silence.
    last_sweep: Instant,
    tracing: Tracing,
    /// The batch in hand's clock readings for its spans (tracing on only).
    clock: Option<BatchClock>,
}

/// Which step the loop is in, and since when: a watchdog reports a loop stuck in one step (a
/// Kafka call that never returns) instead of leaving a silent processor behind.
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<std::sync::Mutex<(&'static str, Instant)>>);

impl Default for Progress {
    fn default() -> Self {
        Progress(Arc::new(std::sync::Mutex::new(("starting", Instant::now()))))
    }
}

impl Progress {
    fn at(&self, step: &'static str) {
        if let Ok(mut p) = self.0.lock() {
            *p = (step, Instant::now());
        }
    }

    /// The current step and how long it has lasted.
    pub(crate) fn current(&self) -> (&'static str, Duration) {
        self.0.lock().map(|p| (p.0, p.1.elapsed())).unwrap_or(("unknown", Duration::ZERO))
    }
}

impl Pipeline {
    pub(crate) fn new(config: Arc<Config>, clients: Clients, geofences: Geofences, metrics: Metrics, health: Health, shutdown: CancellationToken, progress: Progress) -> Self {
        let Clients { consumer, producer, producer_config, reader, events, tracing } = clients;
        Pipeline {
            layout: Layout::new(&config),
            publisher: Publisher::new(producer, shutdown.clone()),
            producer_config,
            refenced: Vec::new(),
            config,
            consumer,
            reader,
            events,
            metrics,
            health,
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            partitions: HashMap::new(),
            assigned: Vec::new(),
            next_offset: HashMap::new(),
            failures: 0,
            consumer_errors: Throttle::new(Duration::from_secs(5)),
            progress,
            last_record: Instant::now(),
            geofences,
            last_sweep: Instant::now(),
            tracing,
            clock: None,
        }
    }

    fn transactional(&self) -> bool {
        self.config.exactly_once == ExactlyOnce::Transactions
    }

    /// Runs until shutdown or a fatal error (then returns it).
    pub(crate) fn run(mut self) -> Result<(), String> {
        let mut last_lag = Instant::now();
        let mut outcome = Ok(());
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let mut batch = self.collect();
            if !batch.is_empty() {
                self.step("poll", started);
            }
            if self.handle_rebalances(&mut batch).is_err() {
                break;
            }
            let sweep = self.last_sweep.elapsed() >= SWEEP_EVERY;
            if sweep {
                self.last_sweep = Instant::now();
            }
            if !batch.is_empty() || sweep {
                match self.process(batch, started, sweep) {
                    Ok(()) => {}
                    Err(Stop::Shutdown) => break,
                    Err(Stop::Fatal(why)) => {
                        tracing::error!(error = %why, "cannot go on; stopping");
                        outcome = Err(why);
                        break;
                    }
                }
            }
            if last_lag.elapsed() > Duration::from_secs(5) {
                self.update_lag();
                last_lag = Instant::now();
            }
        }
        let _ = self.publisher.producer().flush(Duration::from_secs(5));
        tracing::info!("consumer loop stopped; leaving the group");
        outcome
    }

    /// Polls up to `batch_size` records: those fetched already, and more for up to `batch_wait`
    /// from the start; stops early on a rebalance.
    fn collect(&mut self) -> Vec<OwnedMessage> {
        self.progress.at("poll");
        let mut batch = Vec::new();
        let started = Instant::now();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < self.config.batch_size {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    self.last_record = Instant::now();
                    batch.push(m.detach());
                }
                Some(Err(error)) => {
                    if let Some(held_back) = self.consumer_errors.pass() {
                        tracing::warn!(%error, similar_since_last = held_back, "consumer error");
                    }
                }
                None if batch.is_empty() => return batch,
                None => break,
            }
            if self.events.pending() {
                break;
            }
            // Within --batch-wait, wait for more; after it, take only what was already fetched
            // (a record arriving during the previous batch's commit joins this one).
            timeout = self.config.batch_wait.saturating_sub(started.elapsed());
        }
        batch
    }

    /// Drops the state of revoked partitions, and records fetched from them this round: the
    /// next owner resumes from our last commit, which did not include them. Restores the state
    /// of newly assigned partitions at once, so that their first records are not held up by it
    /// (and a take-over's cost shows as soon as it happens). Errors only when shutdown came
    /// first.
    fn handle_rebalances(&mut self, batch: &mut Vec<OwnedMessage>) -> Result<(), Stop> {
        for event in self.events.take() {
            match event {
                RebalanceEvent::Revoked(ps) => {
                    for p in &ps {
                        self.partitions.remove(p);
                        self.next_offset.remove(p);
                        let _ = self.metrics.lag.remove_label_values(&[&p.to_string()]);
                    }
                    self.assigned.retain(|a| !ps.contains(a));
                    batch.retain(|m| !ps.contains(&m.partition()));
                }
                RebalanceEvent::Assigned(ps) => {
                    for p in ps {
                        if !self.assigned.contains(&p) {
                            self.assigned.push(p);
                        }
                        if !self.partitions.contains_key(&p) {
                            let resume_from = self.resume_point(p);
                            // Where processing resumes, as committed: what a transaction of
                            // this partition's timers commits again (see commit_in_transaction).
                            self.next_offset.entry(p).or_insert(resume_from);
                            match self.load(p, resume_from) {
                                Ok(state) => {
                                    self.partitions.insert(p, state);
                                }
                                Err(_) => return Err(Stop::Shutdown),
                            }
                        }
                    }
                }
            }
        }
        self.metrics.assigned.set(self.assigned.len() as i64);
        self.metrics.vehicles.set(self.partitions.values().map(|s| s.vehicles.len() as i64).sum());
        Ok(())
    }

    /// Where processing of partition `p` resumes: its committed offset, or (a new group) the
    /// start of the partition.
    fn resume_point(&self, p: i32) -> i64 {
        let input = self.layout.input();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(input, p);
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .ok()
            .and_then(|t| t.elements().first().and_then(|e| e.offset().to_raw()))
            .filter(|o| *o >= 0);
        committed.unwrap_or_else(|| self.consumer.fetch_watermarks(input, p, Duration::from_secs(10)).map(|(low, _)| low).unwrap_or(0))
    }

    /// Takes one batch (and, if `sweep`, the timers' events) to its commit, or rewinds it for
    /// another try.
    fn process(&mut self, batch: Vec<OwnedMessage>, started: Instant, sweep: bool) -> Result<(), Stop> {
        if !batch.is_empty() {
            self.metrics.consumed.inc_by(batch.len() as u64);
            self.metrics.batch_records.observe(batch.len() as f64);
        }
        let by_partition = self.group(batch);
        let mut timer_partitions = BTreeSet::new();
        let result = self.attempt(&by_partition, started, sweep, &mut timer_partitions);
        if by_partition.is_empty() && timer_partitions.is_empty() {
            return Ok(());
        }
        match result {
            Ok(tally) => {
                self.failures = 0;
                self.mark_committed(&by_partition);
                self.count(tally);
                self.health.set_ready();
                self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(BatchError::Retry(why)) => {
                self.failures += 1;
                self.metrics.retries.with_label_values(&["produce"]).inc();
                self.health.set_not_ready(format!("writing outputs failed: {why}"));
                tracing::warn!(error = %why, failures = self.failures, "batch failed; rewinding to retry it");
                self.rewind(&by_partition, &timer_partitions);
                if self.backoff(self.failures) {
                    Ok(())
                } else {
                    Err(Stop::Shutdown)
                }
            }
            Err(BatchError::Fenced(why)) => {
                tracing::warn!(error = %why, "the transactional producer was fenced; making it again and retrying the batch");
                self.note_fencing();
                self.rewind(&by_partition, &timer_partitions);
                self.renew_producer()
            }
            Err(BatchError::Stuck(why)) => {
                tracing::warn!(error = %why, "making the transactional producer again and retrying the batch");
                self.rewind(&by_partition, &timer_partitions);
                self.renew_producer()
            }
            Err(BatchError::Stopped) => Err(Stop::Shutdown),
        }
    }

    /// Counts fencings: one now and then is a transaction that outlived its timeout (a broker
    /// failover, a long pause); again and again means another running instance has the same
    /// transactional id, which this says loudly. Both keep working, each fencing the other, and
    /// exactly-once holds, but slowly: the operator must fix the ids.
    fn note_fencing(&mut self) {
        self.refenced.retain(|t| t.elapsed() < REFENCE_WINDOW);
        self.refenced.push(Instant::now());
        if self.refenced.len() >= MAX_REFENCES {
            let id = self.producer_config.as_ref().and_then(|c| c.get("transactional.id")).unwrap_or_default().to_string();
            tracing::error!(
                fenced = self.refenced.len(),
                window = ?REFENCE_WINDOW,
                transactional_id = %id,
                "fenced again and again: is another processor running with this transactional id?"
            );
        }
    }

    /// Replaces the transactional producer (fenced, or abandoned in a call that did not
    /// return); a new one with the same transactional id carries on.
    fn renew_producer(&mut self) -> Result<(), Stop> {
        let Some(config) = self.producer_config.clone() else { return Err(Stop::Fatal("a producer without transactions was fenced".into())) };
        self.metrics.producers_renewed.inc();
        let mut attempt = 0;
        loop {
            self.progress.at("init_transactions");
            let c = config.clone();
            let made = match bounded("init_transactions", move || Ok(transactional_producer(&c))) {
                Ok(Ok(made)) => made,
                Ok(Err(e)) => Err(anyhow::Error::from(e)),
                Err(e) => Err(anyhow::anyhow!(e.to_string())),
            };
            match made {
                Ok(producer) => {
                    self.publisher = Publisher::new(producer, self.shutdown.clone());
                    return Ok(());
                }
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(error = format!("{error:#}"), attempt, "cannot make the transactional producer again; retrying");
                    if !self.backoff(attempt) {
                        return Err(Stop::Shutdown);
                    }
                }
            }
        }
    }

    /// Groups a batch by partition, skipping records at offsets this instance already
    /// committed (a redelivery after a fetch-position reset).
    fn group(&mut self, batch: Vec<OwnedMessage>) -> ByPartition {
        let mut by_partition = ByPartition::new();
        for m in batch {
            let p = m.partition();
            let floor = by_partition.get(&p).and_then(|v| v.last()).map(|l| l.offset() + 1).or_else(|| self.next_offset.get(&p).copied());
            if floor.is_some_and(|f| m.offset() < f) {
                self.metrics.replayed.inc();
                continue;
            }
            by_partition.entry(p).or_default().push(m);
        }
        by_partition
    }

    /// One try at a batch: state, decisions, timers (if `sweep`; the partitions whose state
    /// they changed go to `timer_partitions`), outputs, commit.
    fn attempt(&mut self, by_partition: &ByPartition, started: Instant, sweep: bool, timer_partitions: &mut BTreeSet<i32>) -> Result<Tally, BatchError> {
        for (p, msgs) in by_partition {
            if !self.partitions.contains_key(p) {
                let resume_from = msgs.first().map(|m| m.offset()).unwrap_or(0);
                let state = self.load(*p, resume_from)?;
                self.partitions.insert(*p, state);
            }
        }
        let t_decide = Instant::now();
        let decisions = self.decide(by_partition);
        let timers = if sweep { self.sweep()? } else { TimerEvents::new() };
        self.step("decide", t_decide);
        self.clock = self.tracing.is_on().then(|| {
            let judged = SystemTime::now();
            BatchClock { polled: judged.checked_sub(started.elapsed()).unwrap_or(judged), judged }
        });
        timer_partitions.extend(timers.keys());
        if by_partition.is_empty() && timers.is_empty() {
            return Ok(Tally::default());
        }
        let touched: BTreeSet<i32> = by_partition.keys().chain(timers.keys()).copied().collect();
        let t_write = Instant::now();
        let tally = if self.transactional() {
            self.commit_in_transaction(by_partition, &decisions, &timers, &touched)?
        } else {
            self.write_then_commit(by_partition, &decisions, &timers, &touched)?
        };
        if started.elapsed() > Duration::from_secs(5) {
            tracing::warn!(secs = started.elapsed().as_secs_f64(), "slow batch (a broker failover or an overloaded broker?)");
        }
        tracing::debug!(
            records = by_partition.values().map(Vec::len).sum::<usize>(),
            decide_ms = (t_write - t_decide).as_secs_f64() * 1e3,
            write_commit_ms = t_write.elapsed().as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(tally)
    }

    /// The `offline` events of vehicles silent for too long, by partition. Partitions whose
    /// state was dropped after a failed batch are restored first: their vehicles' silence
    /// counts too.
    fn sweep(&mut self) -> Result<TimerEvents, BatchError> {
        let missing: Vec<i32> = self.assigned.iter().filter(|p| !self.partitions.contains_key(p)).copied().collect();
        for p in missing {
            let resume_from = match self.next_offset.get(&p) {
                Some(o) => *o,
                None => self.resume_point(p),
            };
            let state = self.load(p, resume_from)?;
            self.partitions.insert(p, state);
        }
        let now = now_ms();
        let rules = &self.config.events;
        let mut timers = TimerEvents::new();
        for (p, state) in &mut self.partitions {
            let listening_since = state.loaded_at;
            for v in state.vehicles.values_mut() {
                let events = rules.on_timer(&mut v.fleet, &v.latest, listening_since, now);
                if !events.is_empty() {
                    v.dirty = true;
                    timers.entry(*p).or_default().extend(events);
                }
            }
        }
        Ok(timers)
    }

    /// Judges every record; each partition on its own thread.
    fn decide(&mut self, by_partition: &ByPartition) -> HashMap<i32, Vec<Decision>> {
        let fences = self.geofences.current();
        let judge = Judge { rules: &self.config.rules, events: &self.config.events, fences: &fences, lookups: Some(&self.metrics.geofence_lookup_seconds) };
        let now = now_ms();
        let mut work: Vec<(i32, &mut PartitionState, &Vec<OwnedMessage>)> = self
            .partitions
            .iter_mut()
            .filter_map(|(p, s)| by_partition.get(p).map(|msgs| (*p, s, msgs)))
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .iter_mut()
                .map(|(p, state, msgs)| {
                    let p = *p;
                    scope.spawn(move || (p, msgs.iter().map(|m| decide(judge, state, m, now)).collect::<Vec<_>>()))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    }

    /// The transactional commit: outputs, events, latest states and offsets, atomically.
    ///
    /// Every record is handed to the producer at once and the offsets go to the transaction
    /// while their acknowledgements are on the way: atomicity needs no order inside a
    /// transaction, so a batch costs one produce round trip overlapped with the offsets' two,
    /// then the commit (instead of outputs, then latest states, then offsets, then commit).
    fn commit_in_transaction(&mut self, by_partition: &ByPartition, decisions: &HashMap<i32, Vec<Decision>>, timers: &TimerEvents, touched: &BTreeSet<i32>) -> Result<Tally, BatchError> {
        let producer = self.publisher.producer().clone();
        let p = producer.clone();
        self.progress.at("begin_transaction");
        bounded("begin_transaction", move || p.begin_transaction())??;
        let mut spans = BatchSpans::default();
        let result: Result<Tally, BatchError> = (|| {
            let Outputs { mut tally, mut records, events, spans: traced } = self.outputs(by_partition, decisions, timers);
            spans = traced;
            records.extend(events);
            let (latest, written) = self.latest_records(touched);
            records.extend(latest);
            let t_produce = Instant::now();
            let deadline = t_produce + self.config.producer.delivery_timeout;
            let deliveries = self.enqueue_all(&records, deadline)?;
            let metadata = self.membership()?;
            // The partitions whose timers fired are in too, at the offset already committed:
            // Kafka checks the group generation of every offset commit, so a processor that
            // lost them (a zombie) cannot commit their state.
            let mut offsets = self.offsets_after(by_partition);
            for p in touched.iter().filter(|p| !by_partition.contains_key(p)) {
                if let Some(next) = self.next_offset.get(p) {
                    let _ = offsets.add_partition_offset(self.layout.input(), *p, Offset::Offset(*next));
                }
            }
            if offsets.count() > 0 {
                let p = producer.clone();
                self.progress.at("send_offsets_to_transaction");
                let t_offsets = Instant::now();
                bounded("send_offsets_to_transaction", move || p.send_offsets_to_transaction(&offsets, &metadata, TXN_CALL_TIMEOUT))??;
                self.step("offsets", t_offsets);
            }
            // commit_transaction would flush them too; waiting here names a failed record.
            self.await_all(deliveries, deadline)?;
            self.step("produce", t_produce);
            spans.written();
            self.mark_clean(&written);
            tally.latest = written.len() as u64;
            let p = producer.clone();
            self.progress.at("commit_transaction");
            let t_commit = Instant::now();
            released(&producer, RELEASE_WAIT);
            bounded("commit_transaction", move || p.commit_transaction(TXN_CALL_TIMEOUT))??;
            self.step("commit", t_commit);
            Ok(tally)
        })();
        match &result {
            Ok(_) => spans.committed(),
            Err(error) => spans.failed(&error.to_string()),
        }
        if let Err(error) = &result {
            if matches!(error, BatchError::Fenced(_) | BatchError::Stuck(_)) {
                return result;
            }
            self.abort(&producer)?;
        }
        result
    }

    /// Aborts the open transaction; its records stay invisible to read_committed readers.
    /// While Kafka is unreachable the abort is retried (with backoff) until it succeeds: the
    /// producer cannot begin another transaction before.
    fn abort(&self, producer: &FutureProducer) -> Result<(), BatchError> {
        let mut attempt = 0;
        loop {
            let p = producer.clone();
            self.progress.at("abort_transaction");
            match bounded("abort_transaction", move || p.abort_transaction(TXN_CALL_TIMEOUT))? {
                Ok(()) => {
                    self.metrics.aborts.inc();
                    return Ok(());
                }
                Err(KafkaError::Transaction(t)) if t.is_fatal() => return Err(BatchError::Fenced(format!("cannot abort the transaction: {t}"))),
                Err(error) => {
                    attempt += 1;
                    self.metrics.retries.with_label_values(&["abort"]).inc();
                    tracing::warn!(%error, attempt, "aborting the transaction failed; retrying");
                    if !self.backoff(attempt) {
                        return Err(BatchError::Stopped);
                    }
                }
            }
        }
    }

    /// The group metadata to commit the offsets with, unless this member has lost its
    /// assignment (evicted while frozen or cut off). Taken before the check: librdkafka marks
    /// the assignment lost before it can forget its generation (that happens only when it
    /// rejoins, after `poll` served the revocation), so a snapshot taken while the assignment
    /// was not lost carries the generation Kafka checks, and Kafka refuses the offsets of a
    /// stale one.
    fn membership(&self) -> Result<rdkafka::consumer::ConsumerGroupMetadata, BatchError> {
        let metadata = self.consumer.group_metadata().ok_or_else(|| BatchError::Retry("no consumer group metadata yet".into()))?;
        if self.consumer.assignment_lost() {
            self.metrics.fenced.inc();
            return Err(BatchError::Retry("the consumer's assignment was lost (evicted from the group)".into()));
        }
        Ok(metadata)
    }

    /// Without transactions: events acknowledged, then outputs acknowledged, then latest
    /// states acknowledged, then the offsets. A failed commit is not retried: the next owner
    /// re-reads those records and the restored state recognises them as written.
    fn write_then_commit(&mut self, by_partition: &ByPartition, decisions: &HashMap<i32, Vec<Decision>>, timers: &TimerEvents, touched: &BTreeSet<i32>) -> Result<Tally, BatchError> {
        // A position in `positions` then means its events are in `events`, and a latest state
        // means its positions are written: what the state rebuild relies on.
        let Outputs { mut tally, records, events, mut spans } = self.outputs(by_partition, decisions, timers);
        let t_produce = Instant::now();
        let sent: Result<_, BatchError> = (|| {
            self.send_all(&events)?;
            self.send_all(&records)?;
            let (latest, written) = self.latest_records(touched);
            self.send_all(&latest)?;
            Ok(written)
        })();
        let written = match sent {
            Ok(written) => written,
            Err(error) => {
                spans.failed(&error.to_string());
                return Err(error);
            }
        };
        spans.written();
        self.step("produce", t_produce);
        self.mark_clean(&written);
        tally.latest = written.len() as u64;
        let offsets = self.offsets_after(by_partition);
        if offsets.count() == 0 {
            spans.committed();
            return Ok(tally);
        }
        let t_commit = Instant::now();
        let committed = self.consumer.commit(&offsets, CommitMode::Sync);
        // Without transactions the outputs were visible once written; the commit only moves
        // the group on.
        spans.committed();
        match committed {
            Ok(()) => self.step("commit", t_commit),
            Err(error) => {
                self.metrics.retries.with_label_values(&["commit"]).inc();
                tracing::warn!(%error, "offset commit failed; these records will be re-read and recognised as already written");
            }
        }
        Ok(tally)
    }

    /// The batch's records: valid positions and dead letters, and the events (of the records
    /// and of the timers) apart.
    fn outputs<'a>(&'a self, by_partition: &'a ByPartition, decisions: &'a HashMap<i32, Vec<Decision>>, timers: &'a TimerEvents) -> Outputs<'a> {
        let mut tally = Tally::default();
        let mut records: Vec<Outgoing<'_>> = Vec::new();
        let mut events: Vec<Outgoing<'_>> = Vec::new();
        let mut spans = BatchSpans::default();
        let now = now_ms();
        let attempts = self.failures + 1;
        for (p, msgs) in by_partition {
            let Some(ds) = decisions.get(p) else { continue };
            for (m, d) in msgs.iter().zip(ds) {
                match d {
                    Decision::Valid(pos, triggered) => {
                        // A struct of numbers, booleans and JSON values always serialises.
                        let payload = serde_json::to_vec(pos).unwrap_or_default();
                        let mut record = self.layout.position(*p, m.offset(), pos, payload);
                        if let Some(traceparent) = spans.follow(&self.tracing, self.clock, m, "valid") {
                            record = record.header(headers::TRACEPARENT, &traceparent);
                        }
                        records.push(record);
                        tally.valid += 1;
                        self.observe_latency(pos, now);
                        for e in triggered {
                            events.push(self.layout.event(*p, e));
                            tally.events.push(e.type_name());
                        }
                    }
                    Decision::Invalid(rejection) => {
                        let mut record = self.layout.dead_letter(m, rejection, attempts, now);
                        if let Some(traceparent) = spans.follow(&self.tracing, self.clock, m, rejection.reason.as_str()) {
                            record = record.header(headers::TRACEPARENT, &traceparent);
                        }
                        records.push(record);
                        tally.invalid.push(rejection.reason);
                    }
                    Decision::Duplicate => tally.duplicates += 1,
                    Decision::Replay => tally.replayed += 1,
                }
            }
        }
        for (p, triggered) in timers {
            for e in triggered {
                events.push(self.layout.event(*p, e));
                tally.events.push(e.type_name());
            }
        }
        Outputs { tally, records, events, spans }
    }

    /// The latest state of every vehicle of these partitions that changed, and which vehicles
    /// those are (for [`Pipeline::mark_clean`] once written).
    fn latest_records(&self, partitions: &BTreeSet<i32>) -> (Vec<Outgoing<'_>>, Vec<(i32, u64)>) {
        let mut records = Vec::new();
        let mut written: Vec<(i32, u64)> = Vec::new();
        for p in partitions {
            let Some(state) = self.partitions.get(p) else { continue };
            for (obu_id, v) in state.vehicles.iter().filter(|(_, v)| v.dirty) {
                let latest = v.to_latest();
                let payload = serde_json::to_vec(&latest).unwrap_or_default();
                records.push(self.layout.latest_state(*p, &latest, payload));
                written.push((*p, *obu_id));
            }
        }
        (records, written)
    }

    fn mark_clean(&mut self, written: &[(i32, u64)]) {
        for (p, obu_id) in written {
            if let Some(v) = self.partitions.get_mut(p).and_then(|s| s.vehicles.get_mut(obu_id)) {
                v.dirty = false;
            }
        }
    }

    /// Hands every record to the producer, then waits for every acknowledgement.
    fn send_all(&self, records: &[Outgoing<'_>]) -> Result<(), BatchError> {
        let deadline = Instant::now() + self.config.producer.delivery_timeout;
        let deliveries = self.enqueue_all(records, deadline)?;
        self.await_all(deliveries, deadline)
    }

    /// Hands every record to the producer (waiting while its queue is full, until `deadline`).
    fn enqueue_all(&self, records: &[Outgoing<'_>], deadline: Instant) -> Result<Vec<DeliveryFuture>, BatchError> {
        self.progress.at("write outputs");
        let publisher = &self.publisher;
        self.runtime.block_on(async {
            let mut deliveries = Vec::with_capacity(records.len());
            for r in records {
                deliveries.push(publisher.enqueue(r, deadline).await?);
            }
            Ok(deliveries)
        })
    }

    /// Waits for every acknowledgement: until the first failure (the rest cannot matter: the
    /// batch is redone) or the delivery timeout. The bound is ours, not only librdkafka's: in
    /// a transaction that hit an error, queued records may wait for the abort that this wait
    /// would hold back.
    fn await_all(&self, deliveries: Vec<DeliveryFuture>, deadline: Instant) -> Result<(), BatchError> {
        self.progress.at("outputs acknowledged");
        let timeout = self.config.producer.delivery_timeout;
        let producer = self.publisher.producer();
        self.runtime.block_on(async {
            let all = try_join_all(deliveries.into_iter().map(delivered));
            tokio::pin!(all);
            let give_up = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline) + Duration::from_secs(5));
            tokio::pin!(give_up);
            let mut wake = tokio::time::interval(WAKE_EVERY);
            loop {
                tokio::select! {
                    result = &mut all => return result.map(|_| ()).map_err(BatchError::from),
                    () = &mut give_up => return Err(BatchError::Retry(format!("outputs not acknowledged within {timeout:?}"))),
                    // In a transaction, a partition's records wait until librdkafka has
                    // registered it with the coordinator, and nothing wakes the broker thread
                    // when that completes: the records then sat until its next wake-up, about
                    // 100 ms later, in about one batch a second at 1k positions/s (its eos debug
                    // log). A flush that does not wait is such a wake-up.
                    _ = wake.tick() => {
                        let _ = producer.flush(Duration::ZERO);
                    }
                }
            }
        })
    }

    /// Observes the time since `since` as a batch step (`metrics::STEPS`).
    fn step(&self, step: &str, since: Instant) {
        self.metrics.batch_step_seconds.with_label_values(&[step]).observe(since.elapsed().as_secs_f64());
    }

    fn observe_latency(&self, pos: &ProcessedPosition, now: i64) {
        self.metrics.end_to_end_device.observe((now - pos.ts).max(0) as f64 / 1000.0);
        if let Some(received) = pos.received_at {
            self.metrics.end_to_end_receiver.observe((now - received).max(0) as f64 / 1000.0);
        }
        if pos.out_of_order {
            self.metrics.out_of_order.inc();
        }
    }

    /// The offsets to commit: after the last record of each partition in the batch.
    fn offsets_after(&self, by_partition: &ByPartition) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, msgs) in by_partition {
            if let Some(last) = msgs.last() {
                let _ = tpl.add_partition_offset(self.layout.input(), *p, Offset::Offset(last.offset() + 1));
            }
        }
        tpl
    }

    /// Records that the batch is committed: where each partition resumes, and offsets behind
    /// the commit can no longer be replayed.
    fn mark_committed(&mut self, by_partition: &ByPartition) {
        for (p, msgs) in by_partition {
            if let Some(last) = msgs.last() {
                self.next_offset.insert(*p, last.offset() + 1);
                if let Some(s) = self.partitions.get_mut(p) {
                    s.written.clear();
                    s.dead_lettered.clear();
                }
            }
        }
        self.metrics.commits.inc();
    }

    fn count(&self, tally: Tally) {
        for reason in &tally.invalid {
            self.metrics.invalid.with_label_values(&[reason.as_str()]).inc();
        }
        self.metrics.valid.inc_by(tally.valid);
        self.metrics.dlq.inc_by(tally.invalid.len() as u64);
        self.metrics.duplicates.inc_by(tally.duplicates);
        self.metrics.replayed.inc_by(tally.replayed);
        self.metrics.latest_writes.inc_by(tally.latest);
        for kind in tally.events {
            self.metrics.events.with_label_values(&[kind]).inc();
        }
    }

    /// After a failed batch: forget its partitions' state, and that of the partitions whose
    /// timers fired (rebuilt from Kafka on the next try, so that whatever the failed try did
    /// write is recognised) and fetch the batch again.
    fn rewind(&mut self, by_partition: &ByPartition, timer_partitions: &BTreeSet<i32>) {
        for p in timer_partitions {
            self.partitions.remove(p);
        }
        for (p, msgs) in by_partition {
            self.partitions.remove(p);
            let Some(first) = msgs.first() else { continue };
            // A partition revoked meanwhile cannot be sought; its next owner starts from our
            // last commit anyway.
            if let Err(error) = self.consumer.seek(self.layout.input(), *p, Offset::Offset(first.offset()), Duration::from_secs(5)) {
                tracing::debug!(partition = p, %error, "cannot rewind partition");
            }
        }
    }

    fn load(&mut self, partition: i32, resume_from: i64) -> Result<PartitionState, BatchError> {
        let mut attempt = 0;
        loop {
            self.progress.at("restore");
            let started = Instant::now();
            let fences = self.geofences.current();
            let judge = Judge { rules: &self.config.rules, events: &self.config.events, fences: &fences, lookups: None };
            match restore::restore(&self.reader, &self.layout, judge, partition, resume_from) {
                Ok(state) => {
                    self.metrics.state_loads.inc();
                    self.metrics.state_load_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::info!(
                        partition,
                        resume_from,
                        vehicles = state.vehicles.len(),
                        already_written = state.written.len(),
                        already_dead_lettered = state.dead_lettered.len(),
                        secs = started.elapsed().as_secs_f64(),
                        "partition state restored"
                    );
                    return Ok(state);
                }
                Err(error) => {
                    attempt += 1;
                    self.metrics.retries.with_label_values(&["restore"]).inc();
                    // A fresh reader: the old one's view of the cluster may be stale after a
                    // broker failover (librdkafka keeps no interest in partitions it is not
                    // assigned, so it may never refresh them).
                    match restore::reader(&self.config) {
                        Ok(reader) => self.reader = reader,
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot make a new state reader"),
                    }
                    self.health.set_not_ready(format!("restoring partition {partition} failed: {error:#}"));
                    tracing::warn!(partition, error = format!("{error:#}"), "restoring partition state failed; retrying");
                    if !self.backoff(attempt) {
                        return Err(BatchError::Stopped);
                    }
                }
            }
        }
    }

    /// Exponential backoff with full jitter, capped. False if shutdown came first.
    fn backoff(&self, attempt: u32) -> bool {
        self.progress.at("backoff");
        let base = self.config.retry_initial.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
        let capped = base.min(self.config.retry_max.as_secs_f64());
        let delay = Duration::from_secs_f64(rand::rng().random_range(capped / 2.0..=capped.max(0.001)));
        let shutdown = self.shutdown.clone();
        self.runtime.block_on(async move {
            tokio::select! {
                () = shutdown.cancelled() => false,
                () = tokio::time::sleep(delay) => true,
            }
        })
    }

    /// Updates the lag gauge; a partition with a backlog that has delivered nothing for a
    /// while (its fetcher left in a bad state by an outage and the seeks around it) is sought
    /// back to where processing resumes.
    fn update_lag(&mut self) {
        let input = self.layout.input().to_string();
        let input = input.as_str();
        let mut stalled = Vec::new();
        for p in &self.assigned {
            let Ok((_, high)) = self.consumer.fetch_watermarks(input, *p, Duration::from_secs(1)) else { continue };
            let next = self.next_offset.get(p).copied().or_else(|| {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(input, *p);
                self.consumer.committed_offsets(tpl, Duration::from_secs(1)).ok().and_then(|t| {
                    t.elements().first().and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0)
                })
            });
            let lag = high - next.unwrap_or(0);
            self.metrics.lag.with_label_values(&[&p.to_string()]).set(lag.max(0));
            if lag > 0 && self.last_record.elapsed() > STALLED_FETCH {
                stalled.push((*p, next));
            }
        }
        for (p, next) in stalled {
            let Some(offset) = next else { continue };
            tracing::warn!(partition = p, offset, "records are waiting but none arrived for {STALLED_FETCH:?}; seeking again");
            self.metrics.retries.with_label_values(&["fetch"]).inc();
            if let Err(error) = self.consumer.seek(input, p, Offset::Offset(offset), Duration::from_secs(5)) {
                tracing::warn!(partition = p, %error, "cannot seek");
            }
        }
        if self.last_record.elapsed() > STALLED_FETCH {
            // One nudge per period.
            self.last_record = Instant::now();
        }
    }
}
