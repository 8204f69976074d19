//! What happens to one input record: parse it, then judge it against its vehicle's state.

use rdkafka::message::{Message as _, OwnedMessage};

use fleetstream_core::publish::headers;
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::events::Event;
use fleetstream_core::geofence::{Fence, FenceIndex};
use fleetstream_core::{wire, Position, ProcessedPosition};

use crate::fleet::EventRules;
use crate::restore::PartitionState;
use crate::rules::{Rules, Verdict};
use crate::state::VehicleState;

/// What records are judged by: the validation rules, the event rules and the fences.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judge<'a> {
    pub rules: &'a Rules,
    pub events: &'a EventRules,
    pub fences: &'a FenceIndex,
    /// Where point-in-polygon lookups are timed (none while restoring).
    pub lookups: Option<&'a prometheus::Histogram>,
}

impl Judge<'_> {
    /// The fences holding a position, timed when there are any.
    fn inside(&self, p: &ProcessedPosition) -> Vec<&Fence> {
        if self.fences.is_empty() {
            return Vec::new();
        }
        let started = std::time::Instant::now();
        let inside = self.fences.containing(p.lat, p.lon);
        if let Some(h) = self.lookups {
            h.observe(started.elapsed().as_secs_f64());
        }
        inside
    }

    fn events(&self, v: &mut VehicleState, previous: bool, p: &ProcessedPosition, now: i64) -> Vec<Event> {
        let inside = self.inside(p);
        let previous_ts = previous.then_some(v.latest.ts);
        self.events.on_position(self.fences, &inside, &mut v.fleet, previous_ts, p, now)
    }
}

/// The fate of one input record.
#[derive(Debug)]
pub(crate) enum Decision {
    /// To `positions` (and the vehicle's latest state), with the fleet events it triggered.
    Valid(Box<ProcessedPosition>, Vec<Event>),
    /// To the DLQ.
    Invalid(Rejection),
    /// Already processed: dropped and counted.
    Duplicate,
    /// Its output was written before a crash or a failed attempt: skipped.
    Replay,
}

/// Decides one record, updating the vehicle's state if it is valid.
pub(crate) fn decide(judge: Judge<'_>, state: &mut PartitionState, m: &OwnedMessage, now: i64) -> Decision {
    if state.written.contains(&m.offset()) || state.dead_lettered.contains(&m.offset()) {
        return Decision::Replay;
    }
    let position = match parse_record(m) {
        Ok(p) => p,
        Err(r) => return Decision::Invalid(r),
    };
    let received_at = headers::int(m.headers(), headers::RECEIVED_AT).or_else(|| m.timestamp().to_millis());
    match judge.rules.judge(&position, state.vehicles.get(&position.obu_id), received_at, now) {
        Verdict::Valid(p) => {
            let events = advance(judge, &mut state.vehicles, &p, now);
            Decision::Valid(Box::new(p), events)
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

/// Applies a valid position to its vehicle's state: the seq window always, the event rules
/// only for a position in order (a late one moves no state and makes no event).
pub(crate) fn advance(judge: Judge<'_>, vehicles: &mut std::collections::HashMap<u64, VehicleState>, p: &ProcessedPosition, now: i64) -> Vec<Event> {
    match vehicles.get_mut(&p.obu_id) {
        Some(v) => {
            // A late position makes no event; nor does one the state already holds (a restore
            // replaying a tail that vehicle-latest had caught up with).
            let events = if p.out_of_order || p.order() <= v.latest.order() { Vec::new() } else { judge.events(v, true, p, now) };
            v.apply(p.clone());
            events
        }
        None => {
            let mut v = VehicleState::new(p.clone());
            let events = judge.events(&mut v, false, p, now);
            vehicles.insert(p.obu_id, v);
            events
        }
    }
}
