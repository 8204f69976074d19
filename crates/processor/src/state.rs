//! What the processor remembers of each vehicle: its latest valid position and which of the
//! seqs just below it were already processed. This is all that exactly-once needs, and it is
//! exactly what `vehicle-latest` holds, so the state can be rebuilt from Kafka after a crash or
//! a rebalance (see `restore`).

use fleetstream_core::position::VehicleLatest;
use fleetstream_core::ProcessedPosition;

/// How many seqs below the latest one the duplicate window remembers.
pub const WINDOW: u64 = 64;

/// How a seq relates to what a vehicle already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Higher than any seen: the normal case.
    Next,
    /// Lower than the latest, inside the window and not seen: a late position.
    Late,
    /// Seen before.
    Duplicate,
    /// Further below the latest than the window reaches.
    TooOld,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VehicleState {
    pub latest: ProcessedPosition,
    /// Bit i set: seq `latest.seq - 1 - i` was processed.
    pub seen_below: u64,
    /// Changed since the last `vehicle-latest` write.
    pub dirty: bool,
}

impl VehicleState {
    pub fn new(latest: ProcessedPosition) -> Self {
        VehicleState { latest, seen_below: 0, dirty: true }
    }

    pub fn from_latest(record: VehicleLatest) -> Self {
        VehicleState { latest: record.position, seen_below: record.seen_below, dirty: false }
    }

    pub fn to_latest(&self) -> VehicleLatest {
        VehicleLatest { position: self.latest.clone(), seen_below: self.seen_below }
    }

    pub fn verdict(&self, seq: u64) -> SeqVerdict {
        let max = self.latest.seq;
        if seq > max {
            return SeqVerdict::Next;
        }
        if seq == max {
            return SeqVerdict::Duplicate;
        }
        let distance = max - seq;
        if distance > WINDOW {
            SeqVerdict::TooOld
        } else if self.seen_below & (1u64 << (distance - 1)) != 0 {
            SeqVerdict::Duplicate
        } else {
            SeqVerdict::Late
        }
    }

    /// Records a processed valid position. A higher seq becomes the latest; a lower one only
    /// marks its seq as seen.
    pub fn apply(&mut self, p: ProcessedPosition) {
        let max = self.latest.seq;
        if p.seq > max {
            let shift = p.seq - max;
            self.seen_below = if shift > WINDOW {
                0
            } else {
                // The old latest lands at bit shift-1; older bits move up with it.
                let moved = if shift == WINDOW { 0 } else { self.seen_below << shift };
                moved | (1u64 << (shift - 1))
            };
            self.latest = p;
        } else if p.seq < max && max - p.seq <= WINDOW {
            self.seen_below |= 1u64 << (max - p.seq - 1);
        }
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u64) -> ProcessedPosition {
        ProcessedPosition {
            obu_id: 1,
            seq,
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
        }
    }

    #[test]
    fn window_tracks_seen_seqs() {
        let mut s = VehicleState::new(p(100));
        assert_eq!(s.verdict(100), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(101), SeqVerdict::Next);
        assert_eq!(s.verdict(99), SeqVerdict::Late);
        s.apply(p(102)); // 101 skipped
        assert_eq!(s.verdict(100), SeqVerdict::Duplicate);
        assert_eq!(s.verdict(101), SeqVerdict::Late);
        s.apply(p(101));
        assert_eq!(s.verdict(101), SeqVerdict::Duplicate);
        assert_eq!(s.latest.seq, 102, "a late seq never moves the latest back");
        assert_eq!(s.verdict(102 - 64), SeqVerdict::Late);
        assert_eq!(s.verdict(102 - 65), SeqVerdict::TooOld);
        s.apply(p(102 + 64));
        assert_eq!(s.verdict(102), SeqVerdict::Duplicate, "old latest at the window's edge");
        assert_eq!(s.verdict(101), SeqVerdict::TooOld);
        s.apply(p(1000));
        assert_eq!(s.seen_below, 0, "everything older fell out of the window");
        let restored = VehicleState::from_latest(s.to_latest());
        assert_eq!(restored.verdict(1000), SeqVerdict::Duplicate);
    }
}
