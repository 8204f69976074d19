//! A stream of raw positions with faults, and the exact accounting of what the processor made
//! of it, as a `read_committed` consumer sees the outputs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fleetstream_core::now_ms;
use fleetstream_testkit::{Broker, Topics};

use crate::helpers::*;

/// What was produced: valid (obu, seq) in order per obu, invalid payloads, duplicate count.
#[derive(Default)]
pub struct Produced {
    valid: HashMap<u64, Vec<u64>>,
    invalid: HashSet<String>,
    duplicates: usize,
    total: usize,
}

/// Streams `per_vehicle` positions for `vehicles` vehicles at about `rate` records/s, with a
/// resend (duplicate) every 40th and an invalid one every 53rd record.
pub async fn stream_positions(broker: &Broker, topics: &Topics, vehicles: u64, per_vehicle: u64, rate: u64) -> Produced {
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let mut produced = Produced::default();
    let start = now_ms() - 600_000;
    let mut n = 0u64;
    let mut pending = Vec::new();
    let tick = Duration::from_micros(1_000_000 / rate.max(1));
    for seq in 1..=per_vehicle {
        for obu in 1..=vehicles {
            n += 1;
            let ts = start + seq as i64 * 1000;
            let lat = 52.4 + obu as f64 * 0.01 + seq as f64 * 0.0001;
            let (payload, kind) = if n.is_multiple_of(53) {
                (raw(obu, seq, ts, 95.0, 13.4), 'i')
            } else {
                (raw(obu, seq, ts, lat, 13.4), 'v')
            };
            let previous_was_valid = produced.valid.get(&obu).and_then(|v| v.last()) == Some(&(seq - 1));
            match kind {
                'i' => {
                    produced.invalid.insert(payload.clone());
                }
                _ => produced.valid.entry(obu).or_default().push(seq),
            }
            let key = obu.to_string();
            pending.push(fleetstream_testkit::produce_with(&producer, &topics.raw, Some(&key), payload.as_bytes(), &[]).await);
            produced.total += 1;
            if n.is_multiple_of(40) && kind == 'v' && seq > 1 {
                // The device resends the previous position after a reconnect.
                let prev = raw(obu, seq - 1, ts - 1000, lat - 0.0001, 13.4);
                if previous_was_valid {
                    pending.push(fleetstream_testkit::produce_with(&producer, &topics.raw, Some(&key), prev.as_bytes(), &[]).await);
                    produced.duplicates += 1;
                    produced.total += 1;
                }
            }
            tokio::time::sleep(tick).await;
        }
    }
    for r in &pending {
        assert!(r.is_ok(), "every raw record produced: {r:?}");
    }
    produced
}

/// Nothing missing, nothing twice, order kept.
pub fn assert_accounted(broker: &Broker, topics: &Topics, produced: &Produced) {
    let expected_valid: usize = produced.valid.values().map(Vec::len).sum();
    let positions = broker.read(&topics.positions, expected_valid, Duration::from_secs(3), Duration::from_secs(120)).expect("positions are readable");
    let by_obu = seqs_by_obu(&positions);
    for (obu, seqs) in &produced.valid {
        let got = by_obu.get(obu).cloned().unwrap_or_default(); // none at all: every seq is reported missing below
        let missing: Vec<_> = seqs.iter().filter(|s| !got.contains(s)).collect();
        assert!(missing.is_empty(), "obu {obu}: missing seqs {missing:?}");
        assert_eq!(&got, seqs, "obu {obu}: every seq exactly once, in order");
    }
    assert_eq!(positions.len(), expected_valid, "no duplicates in positions");
    let dead = broker.read(&topics.dlq, produced.invalid.len(), Duration::from_secs(2), Duration::from_secs(60)).expect("the DLQ is readable");
    let dead_payloads: Vec<String> = dead.iter().map(|r| r.text()).collect();
    for p in &produced.invalid {
        assert_eq!(dead_payloads.iter().filter(|d| *d == p).count(), 1, "{p} exactly once in the DLQ");
    }
    assert_eq!(dead.len(), produced.invalid.len());
    let latest = broker.read(&topics.latest, produced.valid.len(), Duration::from_secs(2), Duration::from_secs(60)).expect("vehicle-latest is readable");
    let latest = latest_by_key(&latest);
    for (obu, seqs) in &produced.valid {
        let want = seqs.iter().max().copied();
        assert_eq!(latest.get(&obu.to_string()).and_then(|v| v["seq"].as_u64()), want, "vehicle-latest of {obu}");
    }
}


/// Every fleet event once (as read_committed sees `events`), and each vehicle online exactly
/// once (the streams are shorter than the offline timeout).
pub fn assert_events_once(broker: &Broker, topics: &Topics, produced: &Produced) {
    let vehicles = produced.valid.len();
    let events = broker.read(&topics.events, vehicles, Duration::from_secs(2), Duration::from_secs(60)).expect("events are readable");
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut online: HashMap<u64, usize> = HashMap::new();
    for r in &events {
        let v = r.json();
        *ids.entry(v["event_id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        if v["type"] == "online" {
            *online.entry(v["obu_id"].as_u64().unwrap_or_default()).or_default() += 1;
        }
    }
    let twice: Vec<&String> = ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "events written twice: {twice:?}");
    for obu in produced.valid.keys() {
        assert_eq!(online.get(obu), Some(&1), "vehicle {obu} came online exactly once");
    }
}
