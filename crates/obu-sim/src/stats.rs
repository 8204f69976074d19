//! What the simulator counts: the summary at the end, the progress line and `/metrics` all
//! read the same counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use fleetstream_core::telemetry as t;
use hdrhistogram::Histogram;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use serde::Serialize;

#[derive(Debug)]
pub struct Stats {
    pub registry: Registry,
    pub generated: IntCounter,
    pub sent: IntCounter,
    pub acked: IntCounter,
    pub duplicate_acks: IntCounter,
    pub refused: IntCounterVec,
    pub resent: IntCounter,
    pub dropped: IntCounter,
    pub faults: IntCounter,
    pub duplicates_sent: IntCounter,
    pub connects: IntCounter,
    pub disconnects: IntCounter,
    pub connected: IntGauge,
    pub unacked: IntGauge,
    latency_us: Mutex<Histogram<u64>>,
    ack_latency: prometheus::Histogram,
    acked_by_vehicle: Mutex<BTreeMap<u64, AckedSeqs>>,
}

/// The seqs of one vehicle the receiver acknowledged, as sorted, disjoint ranges (acks mostly
/// come in order, so there are few).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedSeqs {
    ranges: Vec<(u64, u64)>,
}

impl AckedSeqs {
    pub fn insert(&mut self, seq: u64) {
        // The common case: the next seq after the last range.
        if let Some(last) = self.ranges.last_mut() {
            if seq == last.1.saturating_add(1) {
                last.1 = seq;
                return;
            }
            if seq >= last.0 && seq <= last.1 {
                return;
            }
        }
        let i = self.ranges.partition_point(|r| r.1 < seq);
        if self.ranges.get(i).is_some_and(|r| r.0 <= seq) {
            return;
        }
        self.ranges.insert(i, (seq, seq));
        // Merge with the neighbours where they touch.
        if i + 1 < self.ranges.len() && self.ranges[i + 1].0 == seq + 1 {
            self.ranges[i].1 = self.ranges[i + 1].1;
            self.ranges.remove(i + 1);
        }
        if i > 0 && self.ranges[i - 1].1 + 1 == seq {
            self.ranges[i - 1].1 = self.ranges[i].1;
            self.ranges.remove(i);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        self.ranges.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// How many seqs were acknowledged.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0 + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every acknowledged seq, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.0..=r.1)
    }
}

impl Stats {
    pub fn new() -> Self {
        let r = Registry::new();
        Stats {
            generated: t::counter(&r, "fleetstream_sim_positions_generated_total", "Positions the simulated vehicles produced (each with its own seq)."),
            sent: t::counter(&r, "fleetstream_sim_positions_sent_total", "Positions written to a WebSocket, resends included."),
            acked: t::counter(&r, "fleetstream_sim_positions_acked_total", "Distinct positions acked by the receiver."),
            duplicate_acks: t::counter(&r, "fleetstream_sim_duplicate_acks_total", "Acks for positions already acked (deliberate duplicates, resends)."),
            refused: t::counter_vec(&r, "fleetstream_sim_refused_total", "Error frames received, by reason code.", &["reason"]),
            resent: t::counter(&r, "fleetstream_sim_positions_resent_total", "Positions sent again after a reconnect or a retryable error."),
            dropped: t::counter(&r, "fleetstream_sim_positions_dropped_total", "Unacked positions dropped because a vehicle's buffer was full."),
            faults: t::counter(&r, "fleetstream_sim_faults_injected_total", "Invalid positions or frames injected on purpose."),
            duplicates_sent: t::counter(&r, "fleetstream_sim_duplicates_injected_total", "Positions deliberately sent twice."),
            connects: t::counter(&r, "fleetstream_sim_connects_total", "Successful WebSocket connections."),
            disconnects: t::counter(&r, "fleetstream_sim_disconnects_total", "Connections lost or closed by the receiver."),
            connected: t::gauge(&r, "fleetstream_sim_connections", "WebSocket connections open now."),
            unacked: t::gauge(&r, "fleetstream_sim_unacked", "Positions generated and not yet acked or dropped."),
            ack_latency: t::histogram(&r, "fleetstream_sim_ack_latency_seconds", "Time from sending a position to its ack.", t::LATENCY_BUCKETS),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))),
            acked_by_vehicle: Mutex::new(BTreeMap::new()),
            registry: r,
        }
    }

    /// Adds vehicles' acknowledged seqs (each lane reports its vehicles once, at its end).
    pub fn record_acked(&self, acked: impl Iterator<Item = (u64, AckedSeqs)>) {
        if let Ok(mut all) = self.acked_by_vehicle.lock() {
            all.extend(acked.filter(|(_, a)| !a.is_empty()));
        }
    }

    pub fn record_ack_latency(&self, d: Duration) {
        self.ack_latency.observe(d.as_secs_f64());
        if let Ok(mut h) = self.latency_us.lock() {
            let _ = h.record((d.as_micros() as u64).max(1));
        }
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let mut refused = BTreeMap::new();
        for family in self.registry.gather() {
            if family.name() == "fleetstream_sim_refused_total" {
                for m in family.get_metric() {
                    let reason = m.get_label().first().map(|l| l.value().to_string()).unwrap_or_default();
                    refused.insert(reason, m.get_counter().get_value() as u64);
                }
            }
        }
        let (p50, p90, p99, max) = self
            .latency_us
            .lock()
            .map(|h| {
                let ms = |v: u64| v as f64 / 1000.0;
                if h.is_empty() {
                    (0.0, 0.0, 0.0, 0.0)
                } else {
                    (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.9)), ms(h.value_at_quantile(0.99)), ms(h.max()))
                }
            })
            .unwrap_or_default();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            elapsed_s: secs,
            generated: self.generated.get(),
            sent: self.sent.get(),
            acked: self.acked.get(),
            duplicate_acks: self.duplicate_acks.get(),
            refused,
            resent: self.resent.get(),
            dropped: self.dropped.get(),
            unacked: self.unacked.get().max(0) as u64,
            faults_injected: self.faults.get(),
            duplicates_injected: self.duplicates_sent.get(),
            connects: self.connects.get(),
            disconnects: self.disconnects.get(),
            acked_per_s: self.acked.get() as f64 / secs,
            ack_latency_ms: Latency { p50, p90, p99, max },
            acked_by_vehicle: self.acked_by_vehicle.lock().map(|a| a.clone()).unwrap_or_default(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// The end-of-run summary (`--json` prints exactly this).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub generated: u64,
    pub sent: u64,
    pub acked: u64,
    pub duplicate_acks: u64,
    pub refused: BTreeMap<String, u64>,
    pub resent: u64,
    pub dropped: u64,
    pub unacked: u64,
    pub faults_injected: u64,
    pub duplicates_injected: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub acked_per_s: f64,
    pub ack_latency_ms: Latency,
    /// Which seqs of each vehicle were acknowledged (for exact accounting in tests; not in
    /// the `--json` output).
    #[serde(skip)]
    pub acked_by_vehicle: BTreeMap<u64, AckedSeqs>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "obu-sim summary after {:.1} s", self.elapsed_s)?;
        writeln!(f, "  generated   {:>10}   (positions with their own seq)", self.generated)?;
        writeln!(f, "  sent        {:>10}   (resends included)", self.sent)?;
        writeln!(f, "  acked       {:>10}   ({:.0}/s)", self.acked, self.acked_per_s)?;
        writeln!(f, "  resent      {:>10}", self.resent)?;
        writeln!(f, "  dropped     {:>10}   (buffer full)", self.dropped)?;
        writeln!(f, "  unacked     {:>10}   (still buffered at exit)", self.unacked)?;
        writeln!(f, "  faults      {:>10}   duplicates injected {}", self.faults_injected, self.duplicates_injected)?;
        let refused: u64 = self.refused.values().sum();
        writeln!(f, "  refused     {:>10}", refused)?;
        for (reason, n) in &self.refused {
            writeln!(f, "    {reason:<22}{n:>8}")?;
        }
        writeln!(f, "  connects    {:>10}   disconnects {}", self.connects, self.disconnects)?;
        let l = &self.ack_latency_ms;
        write!(f, "  ack latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}", l.p50, l.p90, l.p99, l.max)
    }
}

#[cfg(test)]
mod tests {
    use super::AckedSeqs;

    #[test]
    fn acked_seqs_merge_into_ranges() {
        let mut a = AckedSeqs::default();
        for seq in [1, 2, 3, 7, 5, 6, 4, 10, 2, 9] {
            a.insert(seq);
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7, 9, 10]);
        assert_eq!(a.len(), 9);
        assert_eq!(a.ranges, vec![(1, 7), (9, 10)]);
        assert!(a.contains(9) && !a.contains(8) && !a.contains(11));
    }
}
