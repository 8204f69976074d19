//! What happens to one input record: parse it, then judge it against its vehicle's state.

use rdkafka::message::{Message as _, OwnedMessage};

use fleetstream_core::publish::headers;
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::{wire, Position, ProcessedPosition};

use crate::restore::PartitionState;
use crate::rules::{Rules, Verdict};
use crate::state::VehicleState;

/// The fate of one input record.
#[derive(Debug)]
pub(crate) enum Decision {
    /// To `positions` (and the vehicle's latest state).
    Valid(ProcessedPosition),
    /// To the DLQ.
    Invalid(Rejection),
    /// Already processed: dropped and counted.
    Duplicate,
    /// Its output was written before a crash or a failed attempt: skipped.
    Replay,
}

/// Decides one record, updating the vehicle's state if it is valid.
pub(crate) fn decide(rules: &Rules, state: &mut PartitionState, m: &OwnedMessage, now: i64) -> Decision {
    if state.written.contains(&m.offset()) || state.dead_lettered.contains(&m.offset()) {
        return Decision::Replay;
    }
    let position = match parse_record(m) {
        Ok(p) => p,
        Err(r) => return Decision::Invalid(r),
    };
    let received_at = headers::int(m.headers(), headers::RECEIVED_AT).or_else(|| m.timestamp().to_millis());
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
