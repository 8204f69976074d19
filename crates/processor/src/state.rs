//! What the processor remembers of each vehicle: its latest valid position, and which seqs
//! below it were never processed. This is all that exactly-once needs, and it is exactly what
//! `vehicle-latest` holds, so the state can be rebuilt from Kafka after a crash or a rebalance
//! (see `restore`).
//!
//! Positions are ordered by `(boot, seq)` ([`order_key`]): a device that restarts its seq with
//! a higher boot goes on from there, and what it sent before the restart can still come late.
//! The keys below the latest are remembered as the *gaps* between what was processed: a key in
//! a gap is a late position (valid), any other key at or below the latest was processed (a
//! duplicate). A device that resends hundreds of positions after an outage, after newer ones
//! went through, is judged right however far behind they are; only the number of gaps is
//! bounded ([`MAX_GAPS`]), and a seq below the oldest gap still remembered is too old to tell.

use fleetstream_core::events::FleetState;
use fleetstream_core::position::{order_key, Order, VehicleLatest};
use fleetstream_core::ProcessedPosition;

/// How many gaps (ranges of seqs never processed) a vehicle's state keeps; when there are more,
/// the oldest are forgotten and seqs below the [`VehicleState::horizon`] become too old to tell.
pub const MAX_GAPS: usize = 64;

/// How a seq relates to what a vehicle already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Higher than any seen: the normal case.
    Next,
    /// Lower than the latest and never processed: a late position.
    Late,
    /// Processed before.
    Duplicate,
    /// Below the oldest seq the state still tracks.
    TooOld,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VehicleState {
    pub latest: ProcessedPosition,
    /// Order keys below the latest's never processed, as inclusive ranges in ascending order.
    gaps: Vec<(u128, u128)>,
    /// Order keys below this are no longer tracked.
    horizon: u128,
    /// What the event rules remember (see `fleet`).
    pub fleet: FleetState,
    /// Changed since the last `vehicle-latest` write.
    pub dirty: bool,
}

impl VehicleState {
    /// The state after a vehicle's first position: every seq below it may still come late.
    pub fn new(latest: ProcessedPosition) -> Self {
        let key = latest.order();
        let gaps = if key > 0 { vec![(0, key - 1)] } else { Vec::new() };
        VehicleState { latest, gaps, horizon: 0, fleet: FleetState::default(), dirty: true }
    }

    pub fn from_latest(record: VehicleLatest) -> Self {
        let VehicleLatest { position, gaps, horizon, seen_below, fleet } = record;
        let (gaps, horizon): (Vec<(u128, u128)>, u128) = match seen_below {
            // Written before gaps were kept (and before boots): the 64 seqs below the latest as
            // a bit map.
            Some(bits) if gaps.is_empty() => {
                let horizon = u128::from(position.seq.saturating_sub(64));
                let gaps = (1..=64u64)
                    .filter(|d| *d <= position.seq && bits & (1u64 << (d - 1)) == 0)
                    .map(|d| (u128::from(position.seq - d), u128::from(position.seq - d)))
                    .rev()
                    .collect();
                (gaps, horizon)
            }
            _ => (gaps.into_iter().map(|(a, b)| (a.0, b.0)).collect(), horizon.0),
        };
        let mut state = VehicleState { latest: position, gaps: Vec::new(), horizon, fleet, dirty: false };
        for (from, to) in gaps {
            state.add_gap(from, to);
        }
        state
    }

    pub fn to_latest(&self) -> VehicleLatest {
        VehicleLatest {
            position: self.latest.clone(),
            gaps: self.gaps.iter().map(|(a, b)| (Order(*a), Order(*b))).collect(),
            horizon: Order(self.horizon),
            seen_below: None,
            fleet: self.fleet.clone(),
        }
    }

    /// The oldest order key still tracked.
    pub fn horizon(&self) -> u128 {
        self.horizon
    }

    /// How a position of `boot` and `seq` relates to what the vehicle had.
    pub fn verdict(&self, boot: u64, seq: u64) -> SeqVerdict {
        self.verdict_key(order_key(boot, seq))
    }

    fn verdict_key(&self, seq: u128) -> SeqVerdict {
        if seq > self.latest.order() {
            SeqVerdict::Next
        } else if seq < self.horizon {
            SeqVerdict::TooOld
        } else if self.in_gap(seq) {
            SeqVerdict::Late
        } else {
            SeqVerdict::Duplicate
        }
    }

    fn in_gap(&self, seq: u128) -> bool {
        let i = self.gaps.partition_point(|g| g.1 < seq);
        self.gaps.get(i).is_some_and(|g| g.0 <= seq)
    }

    /// Records a processed valid position. A higher seq becomes the latest (the seqs skipped
    /// become a gap); a lower one closes its place in a gap.
    pub fn apply(&mut self, p: ProcessedPosition) {
        let (max, key) = (self.latest.order(), p.order());
        if key > max {
            if key > max + 1 {
                self.add_gap(max + 1, key - 1);
            }
            self.latest = p;
        } else if key < max {
            self.fill(key);
        }
        self.dirty = true;
    }

    /// Appends a gap above every other, forgetting the oldest beyond [`MAX_GAPS`].
    fn add_gap(&mut self, from: u128, to: u128) {
        let from = from.max(self.horizon);
        if from > to {
            return;
        }
        self.gaps.push((from, to));
        while self.gaps.len() > MAX_GAPS {
            let (_, end) = self.gaps.remove(0);
            self.horizon = end + 1;
        }
    }

    /// Removes `seq` from the gap holding it.
    fn fill(&mut self, seq: u128) {
        let i = self.gaps.partition_point(|g| g.1 < seq);
        let Some(&(from, to)) = self.gaps.get(i) else { return };
        if seq < from {
            return;
        }
        match (seq == from, seq == to) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, to));
                while self.gaps.len() > MAX_GAPS {
                    let (_, end) = self.gaps.remove(0);
                    self.horizon = end + 1;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid position of vehicle 1 with this seq.
    pub(crate) fn p(seq: u64) -> ProcessedPosition {
        ProcessedPosition {
            obu_id: 1,
            seq,
            boot: 0,
            ts: 0,
            lat: 1.0,
            lon: 1.0,
            speed: None,
            heading: None,
            speed_computed: false,
            heading_computed: false,
            distance_m: 0.0,
            received_at: None,
            processed_at: 0,
            out_of_order: false,
            attributes: None,
        }
    }

    #[test]
    fn gaps_tell_late_positions_from_duplicates_however_far_behind() {
        let mut s = VehicleState::new(p(100));
        assert_eq!(s.verdict(0, 100), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(0, 101), SeqVerdict::Next);
        assert_eq!(s.verdict(0, 99), SeqVerdict::Late, "seqs before the first one may still come");
        assert_eq!(s.verdict(0, 0), SeqVerdict::Late);
        s.apply(p(102)); // 101 skipped
        assert_eq!(s.verdict(0, 100), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(0, 101), SeqVerdict::Late);
        s.apply(p(101));
        assert_eq!(s.verdict(0, 101), SeqVerdict::Duplicate);
        assert_eq!(s.latest.seq, 102, "a late seq never moves the latest back");
        // An outage: 500 seqs go through before 103..=600's resends arrive.
        s.apply(p(1_000));
        for seq in (103..=999).rev() {
            assert_eq!(s.verdict(0, seq), SeqVerdict::Late, "{seq}");
            s.apply(p(seq));
        }
        for seq in [103, 500, 999, 1_000] {
            assert_eq!(s.verdict(0, seq), SeqVerdict::Duplicate, "{seq}");
        }
        let restored = VehicleState::from_latest(s.to_latest());
        assert_eq!(restored, VehicleState { dirty: false, ..s.clone() });
        assert_eq!(restored.verdict(0, 50), SeqVerdict::Late);
        assert_eq!(restored.verdict(0, 101), SeqVerdict::Duplicate);
    }

    /// A position of vehicle 1 in `boot` with this seq.
    fn pb(boot: u64, seq: u64) -> ProcessedPosition {
        ProcessedPosition { boot, ..p(seq) }
    }

    #[test]
    fn a_restarted_device_goes_on_from_its_new_boot_and_its_old_boot_can_still_come_late() {
        let mut s = VehicleState::new(pb(1, 500));
        s.apply(pb(1, 502)); // 501 not heard before the device restarted
        // Restarted: boot 2 counts from 1 again.
        assert_eq!(s.verdict(2, 1), SeqVerdict::Next, "a new boot is newer than any seq of the old one");
        s.apply(pb(2, 1));
        s.apply(pb(2, 2));
        assert_eq!((s.latest.boot, s.latest.seq), (2, 2));
        assert_eq!(s.verdict(2, 1), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(2, 3), SeqVerdict::Next);
        assert_eq!(s.verdict(1, 501), SeqVerdict::Late, "sent before the restart, heard after");
        assert_eq!(s.verdict(1, 503), SeqVerdict::Late, "the old boot's last positions may still come");
        assert_eq!(s.verdict(1, 502), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(1, 400), SeqVerdict::Late, "below the first position heard");
        s.apply(pb(1, 501));
        assert_eq!(s.verdict(1, 501), SeqVerdict::Duplicate);
        assert_eq!((s.latest.boot, s.latest.seq), (2, 2), "a late position of the old boot does not move the latest");
        // Through vehicle-latest and back.
        let json = serde_json::to_string(&s.to_latest()).unwrap_or_default();
        let back: VehicleLatest = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let restored = VehicleState::from_latest(back);
        assert_eq!(restored, VehicleState { dirty: false, ..s.clone() });
        assert_eq!(restored.verdict(1, 503), SeqVerdict::Late);
        assert_eq!(restored.verdict(2, 2), SeqVerdict::Duplicate);
    }

    #[test]
    fn too_many_gaps_forget_the_oldest() {
        let mut s = VehicleState::new(p(2));
        // Every other seq: each skip is a gap.
        for seq in (4..=2 * (MAX_GAPS as u64 + 3)).step_by(2) {
            s.apply(p(seq));
        }
        assert_eq!(s.gaps.len(), MAX_GAPS);
        assert!(s.horizon() > 2);
        assert_eq!(s.verdict(0, 1), SeqVerdict::TooOld);
        assert_eq!(s.verdict(0, s.latest.seq - 1), SeqVerdict::Late);
        assert_eq!(s.verdict(0, s.latest.seq - 2), SeqVerdict::Duplicate);
    }

    #[test]
    fn the_old_bit_map_form_is_read() {
        let record = VehicleLatest { position: p(100), gaps: Vec::new(), horizon: Order(0), seen_below: Some(!0b101), fleet: FleetState::default() };
        let s = VehicleState::from_latest(record);
        assert_eq!(s.verdict(0, 99), SeqVerdict::Late, "bit 0 clear: 99 never seen");
        assert_eq!(s.verdict(0, 98), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(0, 97), SeqVerdict::Late);
        assert_eq!(s.verdict(0, 36), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(0, 35), SeqVerdict::TooOld);
    }
}
