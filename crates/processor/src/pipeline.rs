//! The consume -> validate -> write -> commit loop.
//!
//! It runs on a thread of its own with a `BaseConsumer`, in batches: poll up to `batch_size`
//! records, judge them (each partition on its own thread; a vehicle lives in one partition, so
//! no two workers ever see the same vehicle), write every output and wait for every
//! acknowledgement, write the touched vehicles' latest state, and only then commit. Rebalances
//! happen inside `poll`, i.e. only between batches, when nothing is in flight: a revoked
//! partition has always been committed up to what was processed, so the next owner neither
//! loses nor repeats anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::Rng as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use fleetstream_core::dlq::DlqContext;
use fleetstream_core::http::Health;
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::wire;
use fleetstream_core::{now_ms, Position, ProcessedPosition};

use crate::metrics::Metrics;
use crate::restore::{restore, PartitionState};
use rdkafka::consumer::DefaultConsumerContext;
use crate::rules::Verdict;
use crate::state::VehicleState;
use crate::{Config, HEADER_SRC_OFFSET, HEADER_SRC_PARTITION};

/// Header the receiver puts on every raw record: when it received the position.
const HEADER_RECEIVED_AT: &str = "fleetstream.received_at";

#[derive(Debug)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Records rebalances for the loop to act on after `poll` returns.
pub(crate) struct Context {
    pub events: Arc<Mutex<Vec<RebalanceEvent>>>,
    pub metrics: Metrics,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions revoked");
            self.metrics.rebalances.with_label_values(&["revoke"]).inc();
            if let Ok(mut e) = self.events.lock() {
                e.push(RebalanceEvent::Revoked(partitions));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                if let Ok(mut e) = self.events.lock() {
                    e.push(RebalanceEvent::Assigned(partitions));
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// What happens to one input record.
enum Decision {
    Valid(ProcessedPosition),
    Invalid(Rejection),
    Duplicate,
    /// Its output was written before a crash or a failed attempt: skip it.
    Replay,
}

pub(crate) struct Pipeline {
    pub config: Arc<Config>,
    pub consumer: BaseConsumer<Context>,
    pub producer: FutureProducer,
    pub metrics: Metrics,
    pub health: Health,
    pub events: Arc<Mutex<Vec<RebalanceEvent>>>,
    pub shutdown: CancellationToken,
    pub runtime: tokio::runtime::Handle,
    pub partitions: HashMap<i32, PartitionState>,
    pub assigned: Vec<i32>,
    /// Next offset to process per partition, for the lag gauge.
    pub next_offset: HashMap<i32, i64>,
    /// Reads the output topics back when a partition's state is rebuilt.
    pub reader: BaseConsumer<DefaultConsumerContext>,
}

impl Pipeline {
    pub fn run(mut self) {
        let mut last_lag = Instant::now();
        while !self.shutdown.is_cancelled() {
            let mut batch = self.collect();
            self.handle_rebalances(&mut batch);
            if !batch.is_empty() && !self.process(batch) {
                break; // stopped while retrying: nothing committed, the next owner redoes it
            }
            if last_lag.elapsed() > Duration::from_secs(5) {
                self.update_lag();
                last_lag = Instant::now();
            }
        }
        tracing::info!("consumer loop stopped; leaving the group");
    }

    /// Polls up to `batch_size` records or `batch_wait`, stopping early on a rebalance.
    fn collect(&mut self) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        let started = Instant::now();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < self.config.batch_size {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(error)) => tracing::warn!(%error, "consumer error"),
                None if batch.is_empty() => return batch,
                None => break,
            }
            if self.events.lock().map(|e| !e.is_empty()).unwrap_or(false) {
                break;
            }
            let Some(left) = self.config.batch_wait.checked_sub(started.elapsed()) else { break };
            timeout = left;
        }
        batch
    }

    /// Drops the state of revoked partitions, and records fetched from them this round: the
    /// next owner resumes from our last commit, which did not include them.
    fn handle_rebalances(&mut self, batch: &mut Vec<OwnedMessage>) {
        let events: Vec<RebalanceEvent> = match self.events.lock() {
            Ok(mut e) => e.drain(..).collect(),
            Err(_) => return,
        };
        for event in events {
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
                    }
                }
            }
        }
        self.metrics.assigned.set(self.assigned.len() as i64);
        self.metrics.vehicles.set(self.partitions.values().map(|s| s.vehicles.len() as i64).sum());
    }

    /// Processes one batch to the commit. Returns false if shutdown interrupted a retry.
    fn process(&mut self, batch: Vec<OwnedMessage>) -> bool {
        let started = Instant::now();
        self.metrics.consumed.inc_by(batch.len() as u64);
        self.metrics.batch_records.observe(batch.len() as f64);
        let mut by_partition: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
        for m in batch {
            // A record at an offset this instance already processed (a redelivery after a
            // fetch-position reset) is skipped here: its outputs are written and committed.
            let p = m.partition();
            let floor = by_partition.get(&p).and_then(|v| v.last()).map(|l| l.offset() + 1).or_else(|| self.next_offset.get(&p).copied());
            if floor.is_some_and(|f| m.offset() < f) {
                self.metrics.replayed.inc();
                continue;
            }
            by_partition.entry(p).or_default().push(m);
        }
        if by_partition.is_empty() {
            return true;
        }
        let transactional = self.config.transactional_id.is_some();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // (Re)build the state of partitions we hold none for: new ones, or all of them after
            // a failed attempt, so that what that attempt did write is recognised.
            for (p, msgs) in &by_partition {
                if !self.partitions.contains_key(p) {
                    let resume_from = msgs.first().map(|m| m.offset()).unwrap_or(0);
                    match self.load(*p, resume_from) {
                        Some(state) => {
                            self.partitions.insert(*p, state);
                        }
                        None => return false,
                    }
                }
            }
            let t_decide = Instant::now();
            let decisions = self.decide(&by_partition);
            let t_write = Instant::now();
            let written = if transactional {
                self.transaction(&by_partition, &decisions, attempt)
            } else {
                self.write_outputs(&by_partition, &decisions, attempt)
            };
            match written {
                Ok(()) => {
                    tracing::debug!(
                        records = by_partition.values().map(Vec::len).sum::<usize>(),
                        decide_ms = (t_write - t_decide).as_secs_f64() * 1e3,
                        write_ms = t_write.elapsed().as_secs_f64() * 1e3,
                        "batch outputs written"
                    );
                    break;
                }
                Err(error) => {
                    self.metrics.retries.with_label_values(&["produce"]).inc();
                    self.health.set_not_ready(format!("writing outputs failed: {error}"));
                    tracing::warn!(%error, attempt, "writing outputs failed; rebuilding state and retrying");
                    if let KafkaError::Transaction(e) = &error {
                        if e.is_fatal() {
                            tracing::error!(%error, "fatal transaction error (fenced by a newer instance?); stopping");
                            return false;
                        }
                    }
                    if transactional {
                        if let Err(error) = self.producer.abort_transaction(Duration::from_secs(30)) {
                            tracing::warn!(%error, "aborting the transaction failed");
                        }
                    }
                    for p in by_partition.keys() {
                        self.partitions.remove(p);
                    }
                    if !self.backoff(attempt) {
                        return false;
                    }
                }
            }
        }
        let t_commit = Instant::now();
        if transactional {
            // The offsets went out with the transaction.
            self.mark_committed(&by_partition);
            self.metrics.commits.inc();
        } else {
            let mut attempt = 0u32;
            while let Err(error) = self.write_latest(&by_partition) {
                attempt += 1;
                self.metrics.retries.with_label_values(&["latest"]).inc();
                self.health.set_not_ready(format!("writing vehicle-latest failed: {error}"));
                tracing::warn!(%error, attempt, "writing vehicle-latest failed; retrying");
                if !self.backoff(attempt) {
                    return false;
                }
            }
            self.commit(&by_partition);
        }
        tracing::debug!(
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            commit_ms = t_commit.elapsed().as_secs_f64() * 1e3,
            "batch committed"
        );
        self.health.set_ready();
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        true
    }

    fn load(&mut self, partition: i32, resume_from: i64) -> Option<PartitionState> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match restore(&self.reader, &self.config, partition, resume_from) {
                Ok(state) => {
                    self.metrics.state_loads.inc();
                    self.metrics.state_load_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::info!(
                        partition,
                        resume_from,
                        vehicles = state.vehicles.len(),
                        already_written = state.written.len(),
                        already_dead_lettered = state.dead_lettered.len(),
                        "partition state restored"
                    );
                    return Some(state);
                }
                Err(error) => {
                    attempt += 1;
                    self.metrics.retries.with_label_values(&["restore"]).inc();
                    self.health.set_not_ready(format!("restoring partition {partition} failed: {error:#}"));
                    tracing::warn!(partition, error = format!("{error:#}"), "restoring partition state failed; retrying");
                    if !self.backoff(attempt) {
                        return None;
                    }
                }
            }
        }
    }

    /// Exponential backoff with full jitter, capped. False if shutdown came first.
    fn backoff(&self, attempt: u32) -> bool {
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

    /// Judges every record; each partition on its own thread.
    fn decide(&mut self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>) -> HashMap<i32, Vec<Decision>> {
        let rules = &self.config.rules;
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
                    scope.spawn(move || (p, msgs.iter().map(|m| decide_one(rules, state, m, now)).collect::<Vec<_>>()))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    }

    /// Writes valid positions and dead letters, then waits for every acknowledgement.
    fn write_outputs(&self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>, decisions: &HashMap<i32, Vec<Decision>>, attempt: u32) -> Result<(), KafkaError> {
        let mut deliveries: Vec<DeliveryFuture> = Vec::new();
        let mut counts = (0u64, 0u64, 0u64, 0u64);
        let mut reasons: Vec<Reason> = Vec::new();
        let now = now_ms();
        for (p, msgs) in by_partition {
            let Some(ds) = decisions.get(p) else { continue };
            for (m, d) in msgs.iter().zip(ds) {
                match d {
                    Decision::Valid(pos) => {
                        let payload = serde_json::to_vec(pos).unwrap_or_default();
                        let key = pos.obu_id.to_string();
                        let (sp, so) = (p.to_string(), m.offset().to_string());
                        let headers = OwnedHeaders::new_with_capacity(2)
                            .insert(Header { key: HEADER_SRC_PARTITION, value: Some(sp.as_bytes()) })
                            .insert(Header { key: HEADER_SRC_OFFSET, value: Some(so.as_bytes()) });
                        let record = FutureRecord::to(&self.config.positions_topic)
                            .partition(*p)
                            .key(&key)
                            .payload(&payload)
                            .headers(headers)
                            .timestamp(pos.ts);
                        deliveries.push(self.send(record)?);
                        counts.0 += 1;
                        self.observe_latency(pos, now);
                    }
                    Decision::Invalid(rejection) => {
                        let context = DlqContext {
                            stage: "processor",
                            topic: &self.config.input_topic,
                            partition: Some(*p),
                            offset: Some(m.offset()),
                            timestamp: m.timestamp().to_millis(),
                            group: &self.config.group_id,
                            reason: rejection.reason,
                            message: &rejection.message,
                            attempts: attempt,
                            failed_at: now,
                            peer: None,
                            connection: None,
                            obu_id: None,
                            seq: None,
                        };
                        let mut record = FutureRecord::<[u8], [u8]>::to(&self.config.dlq_topic)
                            .partition(*p)
                            .payload(m.payload().unwrap_or_default())
                            .headers(context.headers());
                        if let Some(key) = m.key() {
                            record = record.key(key);
                        }
                        deliveries.push(self.send(record)?);
                        reasons.push(rejection.reason);
                        counts.1 += 1;
                    }
                    Decision::Duplicate => counts.2 += 1,
                    Decision::Replay => counts.3 += 1,
                }
            }
        }
        let results = self.runtime.block_on(join_all(deliveries));
        for r in results {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        for reason in reasons {
            self.metrics.invalid.with_label_values(&[reason.as_str()]).inc();
        }
        self.metrics.valid.inc_by(counts.0);
        self.metrics.dlq.inc_by(counts.1);
        self.metrics.duplicates.inc_by(counts.2);
        self.metrics.replayed.inc_by(counts.3);
        Ok(())
    }

    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(&self, mut record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.producer.send_result(record) {
                Ok(d) => return Ok(d),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    fn observe_latency(&self, pos: &ProcessedPosition, now: i64) {
        self.metrics.end_to_end.with_label_values(&["device"]).observe((now - pos.ts).max(0) as f64 / 1000.0);
        if let Some(received) = pos.received_at {
            self.metrics.end_to_end.with_label_values(&["receiver"]).observe((now - received).max(0) as f64 / 1000.0);
        }
        if pos.out_of_order {
            self.metrics.out_of_order.inc();
        }
    }

    /// Writes the latest state of every vehicle the batch changed, and waits for it.
    fn write_latest(&mut self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>) -> Result<(), KafkaError> {
        let mut deliveries = Vec::new();
        let mut written: Vec<(i32, u64)> = Vec::new();
        for p in by_partition.keys() {
            let Some(state) = self.partitions.get(p) else { continue };
            for (obu_id, v) in state.vehicles.iter().filter(|(_, v)| v.dirty) {
                let payload = serde_json::to_vec(&v.to_latest()).unwrap_or_default();
                let key = obu_id.to_string();
                let record = FutureRecord::to(&self.config.latest_topic)
                    .partition(*p)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(v.latest.ts);
                deliveries.push(self.send(record)?);
                written.push((*p, *obu_id));
            }
        }
        for r in self.runtime.block_on(join_all(deliveries)) {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        self.metrics.latest_writes.inc_by(written.len() as u64);
        for (p, obu_id) in written {
            if let Some(v) = self.partitions.get_mut(&p).and_then(|s| s.vehicles.get_mut(&obu_id)) {
                v.dirty = false;
            }
        }
        Ok(())
    }

    /// One batch as one Kafka transaction: outputs, latest state and input offsets commit
    /// together or not at all.
    fn transaction(&mut self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>, decisions: &HashMap<i32, Vec<Decision>>, attempt: u32) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        self.write_outputs(by_partition, decisions, attempt)?;
        self.write_latest(by_partition)?;
        let metadata = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        self.producer.send_offsets_to_transaction(&self.offsets_after(by_partition), &metadata, Duration::from_secs(30))?;
        self.producer.commit_transaction(Duration::from_secs(30))
    }

    /// The offsets to commit: after the last record of each partition in the batch.
    fn offsets_after(&self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, msgs) in by_partition {
            if let Some(last) = msgs.last() {
                let _ = tpl.add_partition_offset(&self.config.input_topic, *p, Offset::Offset(last.offset() + 1));
            }
        }
        tpl
    }

    /// Records that the batch is committed: lag bookkeeping, and offsets behind the commit can
    /// no longer be replayed.
    fn mark_committed(&mut self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>) {
        for (p, msgs) in by_partition {
            if let Some(last) = msgs.last() {
                self.next_offset.insert(*p, last.offset() + 1);
                if let Some(s) = self.partitions.get_mut(p) {
                    s.written.clear();
                    s.dead_lettered.clear();
                }
            }
        }
    }

    /// Commits the offset after the last record of each partition in the batch. A failed
    /// commit is not retried: the next owner re-reads those records, and the restored state
    /// makes their second pass a no-op.
    fn commit(&mut self, by_partition: &BTreeMap<i32, Vec<OwnedMessage>>) {
        let tpl = self.offsets_after(by_partition);
        self.mark_committed(by_partition);
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.metrics.commits.inc(),
            Err(error) => {
                self.metrics.retries.with_label_values(&["commit"]).inc();
                tracing::warn!(%error, "offset commit failed; these records will be re-read and recognised as already written");
            }
        }
    }

    fn update_lag(&self) {
        for p in &self.assigned {
            let Ok((_, high)) = self.consumer.fetch_watermarks(&self.config.input_topic, *p, Duration::from_secs(1)) else { continue };
            let next = self.next_offset.get(p).copied().or_else(|| {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.config.input_topic, *p);
                self.consumer.committed_offsets(tpl, Duration::from_secs(1)).ok().and_then(|t| {
                    t.elements().first().and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0)
                })
            });
            let lag = high - next.unwrap_or(0);
            self.metrics.lag.with_label_values(&[&p.to_string()]).set(lag.max(0));
        }
    }
}

fn header_i64(m: &OwnedMessage, key: &str) -> Option<i64> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok())
}

/// Decides one record, updating the vehicle's state if it is valid.
fn decide_one(rules: &crate::rules::Rules, state: &mut PartitionState, m: &OwnedMessage, now: i64) -> Decision {
    if state.written.contains(&m.offset()) || state.dead_lettered.contains(&m.offset()) {
        return Decision::Replay;
    }
    let position = match parse_record(m) {
        Ok(p) => p,
        Err(r) => return Decision::Invalid(r),
    };
    let received_at = header_i64(m, HEADER_RECEIVED_AT).or_else(|| m.timestamp().to_millis());
    match rules.judge(&position, state.vehicles.get(&position.obu_id), received_at, now) {
        Verdict::Valid(p) => {
            match state.vehicles.get_mut(&p.obu_id) {
                Some(v) => v.apply(p.clone()),
                None => {
                    state.vehicles.insert(p.obu_id, VehicleState::new(p.clone()));
                }
            }
            Decision::Valid(p)
        }
        Verdict::Invalid(r) => Decision::Invalid(r),
        Verdict::Duplicate => Decision::Duplicate,
    }
}

/// A raw record to a position: structure, then the key.
fn parse_record(m: &OwnedMessage) -> Result<Position, Rejection> {
    let payload = m.payload().unwrap_or_default();
    let text = std::str::from_utf8(payload).map_err(|e| Rejection::new(Reason::MalformedJson, format!("the record is not UTF-8: {e}")))?;
    let element = wire::parse_element(text);
    let wire = element.parsed?;
    let (Some(seq), Some(ts)) = (wire.seq, wire.ts) else {
        let field = if wire.seq.is_none() { "seq" } else { "ts" };
        return Err(Rejection::new(Reason::MissingField, format!("missing required field `{field}`")));
    };
    let position = wire.into_position(|| seq, || ts);
    let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
    if key != Some(position.key().as_str()) {
        return Err(Rejection::new(
            Reason::KeyMismatch,
            format!("record key {:?} is not the position's obu_id {}", key.unwrap_or("<none>"), position.obu_id),
        ));
    }
    Ok(position)
}
