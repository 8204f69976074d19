//! The fences every processor knows: those of `--geofences FILE`, overlaid by the compacted
//! `geofences` topic, which this follows for as long as the processor runs. A change through
//! the tracker's API reaches every processor within a poll (well under a second) without a
//! restart.
//!
//! The pipeline takes a snapshot ([`Geofences::current`]) per batch: a batch is judged against
//! one set of fences.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message as _;

use fleetstream_core::geofence::{parse_collection, Fence, FenceIndex};
use fleetstream_core::kafka::{assign_whole, CatchUp};

use crate::config::Config;
use crate::metrics::Metrics;

/// How long start-up waits for the topic's fences before going on without them (and saying
/// so): events against a partial set of fences would be wrong, but a processor that never
/// starts is worse.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The current fences, shared by the follower (writer) and the pipeline (readers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Geofences(Arc<RwLock<Arc<FenceIndex>>>);

impl Geofences {
    pub(crate) fn current(&self) -> Arc<FenceIndex> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn set(&self, index: FenceIndex) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(index);
        }
    }
}

/// Reads `--geofences` and the topic up to its end, then follows the topic on a thread for as
/// long as anyone holds the returned handle.
pub(crate) async fn follow(config: &Config, metrics: &Metrics) -> anyhow::Result<Geofences> {
    let base = match &config.geofences {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --geofences {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--geofences {}: not JSON", path.display()))?;
            parse_collection(&value).with_context(|| format!("--geofences {}", path.display()))?
        }
    };
    let consumer = reader(config)?;
    let topic = config.geofences_topic.clone();
    let geofences = Geofences::default();
    let mut follower = Follower { consumer, topic, base, from_topic: HashMap::new(), deleted: Default::default(), geofences: geofences.clone(), metrics: metrics.clone() };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("geofences".into())
        .spawn(move || follower.run(ready_tx))
        .context("cannot start the geofence thread")?;
    match tokio::time::timeout(CATCH_UP, ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => return Err(error),
        Ok(Err(_)) => anyhow::bail!("the geofence thread stopped"),
        Err(_) => tracing::warn!(topic = %config.geofences_topic, "the geofences topic was not read to its end in {CATCH_UP:?}; going on with the fences read so far"),
    }
    Ok(geofences)
}

fn reader(config: &Config) -> anyhow::Result<BaseConsumer> {
    let mut client = config.kafka.reader_config(&format!("{}-geofences", config.group_id));
    config.kafka.apply_overrides(&mut client);
    client.create().context("cannot create the geofence reader")
}

struct Follower {
    consumer: BaseConsumer,
    topic: String,
    /// From `--geofences`.
    base: Vec<Fence>,
    /// From the topic, by id.
    from_topic: HashMap<String, Fence>,
    /// Ids the topic deleted (a tombstone): a fence of the file with such an id is deleted too,
    /// as the tracker's API says.
    deleted: std::collections::HashSet<String>,
    geofences: Geofences,
    metrics: Metrics,
}

impl Follower {
    /// Polls until the processor let go of every handle but ours.
    fn run(&mut self, ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>) {
        let ends = match self.assign() {
            Ok(ends) => ends,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        self.publish();
        let mut ready = Some((ready, ends));
        let mut changed = false;
        let mut last_error = Instant::now() - Duration::from_secs(60);
        while Arc::strong_count(&self.geofences.0) > 1 {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let m = m.detach();
                    changed |= self.apply(m.key(), m.payload(), m.offset());
                    if let Some((_, ends)) = &mut ready {
                        ends.read(m.partition(), m.offset());
                    }
                }
                Some(Err(error)) => {
                    if last_error.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(%error, "geofence reader error");
                        last_error = Instant::now();
                    }
                }
                None => {
                    if changed {
                        self.publish();
                        changed = false;
                    }
                }
            }
            if ready.as_ref().is_some_and(|(_, ends)| ends.done()) {
                self.publish();
                changed = false;
                if let Some((tx, _)) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
            }
        }
    }

    /// Assigns every partition from the start; the offsets that end what exists now. A topic
    /// created a moment ago may not be in every broker's metadata yet, or have no leader yet:
    /// that is retried for a while.
    fn assign(&self) -> anyhow::Result<CatchUp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_assign() {
                Ok(ends) => return Ok(ends),
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(error = format!("{error:#}"), "geofences topic not readable yet; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn try_assign(&self) -> anyhow::Result<CatchUp> {
        assign_whole(&self.consumer, &self.topic, Duration::from_secs(10))
    }

    /// One record: a fence (replacing one with its id) or a tombstone. True if it changed
    /// anything.
    fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, offset: i64) -> bool {
        let Some(id) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            self.metrics.geofences_invalid.inc();
            tracing::warn!(offset, "a geofences record without a UTF-8 key (the fence id); ignored");
            return false;
        };
        let Some(value) = value else {
            let had = self.from_topic.remove(id).is_some() || self.base.iter().any(|f| f.id == id);
            self.deleted.insert(id.to_string());
            return had;
        };
        let fence = serde_json::from_slice::<serde_json::Value>(value)
            .map_err(|e| e.to_string())
            .and_then(|v| Fence::from_feature(&v, Some(id)).map_err(|e| e.to_string()));
        match fence {
            Ok(fence) => {
                self.deleted.remove(id);
                self.from_topic.insert(id.to_string(), fence);
                true
            }
            Err(error) => {
                self.metrics.geofences_invalid.inc();
                tracing::warn!(fence = id, offset, %error, "an invalid geofence in the topic; ignored (the fence keeps its previous definition, if any)");
                false
            }
        }
    }

    fn publish(&self) {
        let mut all: HashMap<&str, &Fence> = self.base.iter().filter(|f| !self.deleted.contains(&f.id)).map(|f| (f.id.as_str(), f)).collect();
        all.extend(self.from_topic.iter().map(|(id, f)| (id.as_str(), f)));
        let index = FenceIndex::new(all.into_values().cloned());
        self.metrics.geofences.set(index.len() as i64);
        tracing::info!(fences = index.len(), "geofences loaded");
        self.geofences.set(index);
    }
}

#[cfg(test)]
mod tests {
    use fleetstream_core::geofence::{parse_collection, FenceIndex};

    #[test]
    fn the_demo_fences_are_valid() {
        let value: serde_json::Value = serde_json::from_str(include_str!("../../../examples/geofences.geojson")).expect("JSON");
        let fences = parse_collection(&value).expect("valid fences");
        let index = FenceIndex::new(fences);
        assert_eq!(index.len(), 3);
        // Inside the city centre, in its hole (Tiergarten), in the school zone too.
        let ids = |lat, lon| index.containing(lat, lon).iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(52.50, 13.40), ["city-centre"]);
        assert!(ids(52.515, 13.355).is_empty(), "the hole is outside");
        assert_eq!(ids(52.51, 13.43), ["city-centre", "school-zone"]);
    }
}
