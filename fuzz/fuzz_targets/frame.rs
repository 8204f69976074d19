//! A device's text frame, as the receiver reads it (`connection.rs`: `wire::parse_frame`, then
//! each element's `into_position` and `to_json` for `gpscoords`), and its answer frames.
//!
//! Checks, besides "never panics":
//! - a frame refused whole has a frame-level reason, and its error frame reads back as sent;
//! - the element count limit only ever turns a frame into `too_many_positions`;
//! - an element's verdict depends on its JSON value, not its spelling (the fast path and the
//!   explaining path agree), and refusals carry a structural reason;
//! - an accepted element survives the trip through Kafka: what the receiver writes to
//!   `gpscoords` parses (as the processor parses it) back to the same position.
#![no_main]

use fleetstream_core::frames::{ErrorFrame, ServerFrame};
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::wire::{parse_element, parse_frame};
use libfuzzer_sys::fuzz_target;

/// The receiver's default `--max-positions-per-frame`.
const MAX_POSITIONS: usize = 500;
/// A low limit, to compare against the default one.
const FEW: usize = 3;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the protocol: axum hands the receiver a `&str`.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let frame = parse_frame(text, MAX_POSITIONS);
    check_limit(text, &frame);
    let elements = match frame {
        Err(rejection) => {
            assert!(
                matches!(
                    rejection.reason,
                    Reason::EmptyFrame
                        | Reason::MalformedJson
                        | Reason::NonFiniteNumber
                        | Reason::WrongShape
                        | Reason::TooManyPositions
                ),
                "frame refused with {rejection:?}"
            );
            check_error_frame(rejection);
            return;
        }
        Ok(elements) => elements,
    };
    assert!(!elements.is_empty() && elements.len() <= MAX_POSITIONS);
    for element in elements {
        // Whitespace, key order, a key given twice: whichever path parsed the
        // element, the same value must get the same verdict and message.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(element.raw) {
            let canonical = value.to_string();
            assert_eq!(parse_element(&canonical).parsed, element.parsed, "{:?} vs {canonical}", element.raw);
        }
        match element.parsed {
            Err(rejection) => {
                assert!(
                    matches!(
                        rejection.reason,
                        Reason::EmptyFrame
                            | Reason::MalformedJson
                            | Reason::NonFiniteNumber
                            | Reason::WrongShape
                            | Reason::MissingField
                            | Reason::WrongType
                            | Reason::OutOfRange
                    ),
                    "element refused with {rejection:?}"
                );
                check_error_frame(rejection);
            }
            Ok(wire) => {
                assert_eq!(element.obu_id, Some(wire.obu_id));
                assert_eq!(element.seq, wire.seq);
                assert!(wire.legacy || (wire.seq.is_some() && wire.ts.is_some()), "{wire:?}");
                assert!(wire.lat.is_finite() && wire.lon.is_finite(), "{wire:?}");
                assert!(wire.speed.is_none_or(f64::is_finite) && wire.heading.is_none_or(f64::is_finite));
                // What the receiver writes to gpscoords, and what the processor reads from it.
                let legacy = wire.legacy;
                let position = wire.into_position(
                    || if legacy { 4_711 } else { unreachable!("a current-format position has a seq") },
                    || if legacy { 1_763_800_000_000 } else { unreachable!("a current-format position has a ts") },
                );
                let json = position.to_json();
                let json = std::str::from_utf8(&json).expect("serde_json writes UTF-8");
                let back = parse_element(json).parsed.unwrap_or_else(|r| panic!("{json} refused: {r}"));
                assert!(!back.legacy, "{json}");
                let back = back.into_position(|| unreachable!("seq written"), || unreachable!("ts written"));
                assert_eq!(back, position, "gpscoords round trip of {json}");
                let ack = ServerFrame::Ack { obu_id: position.obu_id, seq: position.seq };
                assert_eq!(serde_json::from_str::<ServerFrame>(&ack.to_json()).ok(), Some(ack));
            }
        }
    }
});

/// The same frame under a lower limit: refused as too large exactly when it holds more elements.
fn check_limit(text: &str, frame: &Result<Vec<fleetstream_core::wire::Element<'_>>, Rejection>) {
    let few = parse_frame(text, FEW);
    match (frame, few) {
        (Ok(all), Ok(some)) => assert!(all.len() <= FEW && some.len() == all.len()),
        (Ok(all), Err(r)) => assert!(all.len() > FEW && r.reason == Reason::TooManyPositions, "{r:?}"),
        (Err(a), Err(b)) => assert!(a == &b || b.reason == Reason::TooManyPositions, "{a:?} vs {b:?}"),
        (Err(a), Ok(_)) => panic!("refused under the higher limit only: {a:?}"),
    }
}

/// A refusal as the device sees it: a non-retryable error frame with a message, that reads back.
fn check_error_frame(rejection: Rejection) {
    assert!(!rejection.message.is_empty(), "{rejection:?} has no message");
    assert!(!rejection.reason.retryable(), "{rejection:?}");
    let mut error = ErrorFrame::new(rejection);
    error.frame = Some(1);
    let frame = ServerFrame::Error(error);
    let json = frame.to_json();
    assert_eq!(serde_json::from_str::<ServerFrame>(&json).ok(), Some(frame), "{json}");
}
