//! Parsing what a device sends: a JSON text frame holding one position object or an array of
//! them, in the current format or the seed's legacy `{"obuid", "lat", "lon"}` form.
//!
//! Parse, don't validate: the output is a [`WirePosition`] whose fields have their types, or a
//! [`Rejection`] naming the exact field and problem. Each element of an array frame is judged on
//! its own, and keeps its original bytes so a refused one can be written to the DLQ as sent.

use serde_json::{value::RawValue, Map, Value};

use crate::attributes::Attributes;
use crate::position::Position;
use crate::reason::{Reason, Rejection};

/// A structurally valid position as the device sent it. Legacy frames carry no `seq` or `ts`.
#[derive(Debug, Clone, PartialEq)]
pub struct WirePosition {
    pub obu_id: u64,
    pub seq: Option<u64>,
    /// Rises each time the device starts counting `seq` again (0 when it sends none).
    pub boot: u64,
    pub ts: Option<i64>,
    pub lat: f64,
    pub lon: f64,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub attributes: Option<Attributes>,
    /// The frame used the seed's `obuid` form.
    pub legacy: bool,
}

impl WirePosition {
    /// Completes the position, filling what a legacy device does not send.
    pub fn into_position(self, fill_seq: impl FnOnce() -> u64, fill_ts: impl FnOnce() -> i64) -> Position {
        Position {
            obu_id: self.obu_id,
            seq: self.seq.unwrap_or_else(fill_seq),
            boot: self.boot,
            ts: self.ts.unwrap_or_else(fill_ts),
            lat: self.lat,
            lon: self.lon,
            speed: self.speed,
            heading: self.heading,
            attributes: self.attributes,
        }
    }
}

/// One element of a frame: its original JSON text and what it parsed to.
#[derive(Debug)]
pub struct Element<'a> {
    /// The element's bytes exactly as sent (for the DLQ).
    pub raw: &'a str,
    pub parsed: Result<WirePosition, Rejection>,
    /// The obu_id and seq, where they could be read even though the element was refused.
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
}

/// Splits a text frame into elements. An `Err` refuses the whole frame (it is not JSON, is
/// empty, is the wrong shape, or holds more than `max_positions` elements).
pub fn parse_frame(text: &str, max_positions: usize) -> Result<Vec<Element<'_>>, Rejection> {
    let trimmed = text.trim_start();
    if trimmed.trim_end().is_empty() {
        return Err(Rejection::new(Reason::EmptyFrame, "the frame is empty; send a position object or an array of them"));
    }
    let raws: Vec<&RawValue> = match trimmed.as_bytes()[0] {
        b'[' => serde_json::from_str(text).map_err(|e| syntax_rejection(text, &e))?,
        b'{' => vec![serde_json::from_str::<&RawValue>(text).map_err(|e| syntax_rejection(text, &e))?],
        _ => {
            // Still tell a bad number apart from a scalar of the wrong shape.
            serde_json::from_str::<&RawValue>(text).map_err(|e| syntax_rejection(text, &e))?;
            return Err(Rejection::new(
                Reason::WrongShape,
                "expected a position object or an array of position objects",
            ));
        }
    };
    if raws.is_empty() {
        return Err(Rejection::new(Reason::EmptyFrame, "the array holds no positions"));
    }
    if raws.len() > max_positions {
        return Err(Rejection::new(
            Reason::TooManyPositions,
            format!("the frame holds {} positions; at most {max_positions} are allowed per frame", raws.len()),
        ));
    }
    Ok(raws.into_iter().map(|raw| parse_element(raw.get())).collect())
}

/// The shape of a well-formed current-format position, for the fast path.
#[derive(serde::Deserialize)]
struct Fast {
    obu_id: u64,
    seq: u64,
    #[serde(default)]
    boot: Option<u64>,
    ts: i64,
    lat: f64,
    lon: f64,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    heading: Option<f64>,
    // Checked by `Attributes::parse`; a wrong one takes the slow path to be explained.
    #[serde(default)]
    attributes: Option<Value>,
}

/// Parses one position object given as JSON text (an array element, or a `gpscoords` value).
pub fn parse_element(raw: &str) -> Element<'_> {
    // Almost every position is well formed: deserialize it straight into its fields, and only
    // take the slower generic path to explain exactly what is wrong with one that is not.
    if let Some((f, attributes)) = serde_json::from_str::<Fast>(raw).ok().and_then(|f| {
        let a = f.attributes.as_ref().map_or(Ok(None), Attributes::parse).ok()?;
        Some((f, a))
    }) {
        let parsed = WirePosition {
            obu_id: f.obu_id,
            seq: Some(f.seq),
            boot: f.boot.unwrap_or(0),
            ts: Some(f.ts),
            lat: f.lat,
            lon: f.lon,
            speed: f.speed,
            heading: f.heading,
            attributes,
            legacy: false,
        };
        return Element { raw, parsed: Ok(parsed), obu_id: Some(f.obu_id), seq: Some(f.seq) };
    }
    let value: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => {
            let rejection = if raw.trim().is_empty() {
                Rejection::new(Reason::EmptyFrame, "the record is empty")
            } else {
                syntax_rejection(raw, &e)
            };
            return Element { raw, parsed: Err(rejection), obu_id: None, seq: None };
        }
    };
    let Value::Object(map) = value else {
        return Element {
            raw,
            parsed: Err(Rejection::new(Reason::WrongShape, format!("expected a position object, got {}", kind(&value)))),
            obu_id: None,
            seq: None,
        };
    };
    let legacy = !map.contains_key("obu_id") && map.contains_key("obuid");
    let id_field = if legacy { "obuid" } else { "obu_id" };
    let obu_id = required(&map, id_field).and_then(|v| as_u64(id_field, v));
    let seq = optional(&map, "seq").map(|v| as_u64("seq", v)).transpose();
    let parsed = (|| {
        let obu_id = obu_id.clone()?;
        let seq = seq.clone()?;
        let ts = optional(&map, "ts").map(|v| as_i64("ts", v)).transpose()?;
        if !legacy {
            if seq.is_none() {
                return Err(missing("seq"));
            }
            if ts.is_none() {
                return Err(missing("ts"));
            }
        }
        let lat = required(&map, "lat").and_then(|v| as_f64("lat", v))?;
        let lon = required(&map, "lon").and_then(|v| as_f64("lon", v))?;
        let speed = optional(&map, "speed").map(|v| as_f64("speed", v)).transpose()?;
        let heading = optional(&map, "heading").map(|v| as_f64("heading", v)).transpose()?;
        let boot = optional(&map, "boot").map(|v| as_u64("boot", v)).transpose()?.unwrap_or(0);
        let attributes = optional(&map, "attributes").map(Attributes::parse).transpose()?.flatten();
        Ok(WirePosition { obu_id, seq, boot, ts, lat, lon, speed, heading, attributes, legacy })
    })();
    Element { raw, parsed, obu_id: obu_id.ok(), seq: seq.ok().flatten() }
}

fn missing(field: &str) -> Rejection {
    Rejection::new(Reason::MissingField, format!("missing required field `{field}`"))
}

/// A present, non-null field.
fn required<'m>(map: &'m Map<String, Value>, field: &str) -> Result<&'m Value, Rejection> {
    optional(map, field).ok_or_else(|| missing(field))
}

/// `null` counts as absent, so `"speed": null` means "no speed".
fn optional<'m>(map: &'m Map<String, Value>, field: &str) -> Option<&'m Value> {
    map.get(field).filter(|v| !v.is_null())
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &str, v: &Value) -> Rejection {
    Rejection::new(Reason::WrongType, format!("`{field}` must be {expected}, got {}", kind(v)))
}

fn as_u64(field: &str, v: &Value) -> Result<u64, Rejection> {
    let Value::Number(n) = v else { return Err(wrong_type(field, "an unsigned integer", v)) };
    n.as_u64().ok_or_else(|| {
        Rejection::new(Reason::OutOfRange, format!("`{field}` must be an integer from 0 to {}, got {n}", u64::MAX))
    })
}

fn as_i64(field: &str, v: &Value) -> Result<i64, Rejection> {
    let Value::Number(n) = v else { return Err(wrong_type(field, "an integer (Unix milliseconds)", v)) };
    n.as_i64().ok_or_else(|| {
        Rejection::new(Reason::OutOfRange, format!("`{field}` must be an integer (Unix milliseconds) that fits 64 bits, got {n}"))
    })
}

fn as_f64(field: &str, v: &Value) -> Result<f64, Rejection> {
    let Value::Number(n) = v else { return Err(wrong_type(field, "a number", v)) };
    // serde_json only yields finite numbers; keep the check so the invariant is local.
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(Rejection::new(Reason::NonFiniteNumber, format!("`{field}` is not a finite number"))),
    }
}

/// Classifies a JSON syntax error: a NaN/Infinity token or an overflowing number is
/// `non_finite_number`, anything else `malformed_json`.
fn syntax_rejection(text: &str, e: &serde_json::Error) -> Rejection {
    if e.to_string().contains("number out of range") || has_non_finite_token(text) {
        Rejection::new(
            Reason::NonFiniteNumber,
            "NaN, Infinity and numbers beyond the range of a double are not valid JSON numbers",
        )
    } else {
        Rejection::new(Reason::MalformedJson, format!("not valid JSON: {e}"))
    }
}

/// Whether `NaN` or `Infinity` appears as a bare token (outside any string).
fn has_non_finite_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'N' if bytes[i..].starts_with(b"NaN") => return true,
            b'I' if bytes[i..].starts_with(b"Infinity") => return true,
            _ => {}
        }
    }
    false
}

/// A position in the seed's legacy form, `{"obuid", "lat", "lon"}`: no seq or ts (the receiver
/// fills them in). What legacy devices send; the parser above reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LegacyPosition {
    pub obuid: u64,
    pub lat: f64,
    pub lon: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<WirePosition, Rejection> {
        let mut elements = parse_frame(text, 100)?;
        assert_eq!(elements.len(), 1);
        elements.remove(0).parsed
    }

    fn reason(text: &str) -> Reason {
        match one(text) {
            Ok(p) => panic!("{text} parsed to {p:?}"),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn parses_the_current_format() {
        let p = one(r#"{"obu_id":7,"seq":3,"ts":1700000000000,"lat":52.52,"lon":13.405,"speed":42.5,"heading":90}"#);
        assert_eq!(
            p,
            Ok(WirePosition {
                boot: 0,
                obu_id: 7,
                seq: Some(3),
                ts: Some(1_700_000_000_000),
                lat: 52.52,
                lon: 13.405,
                speed: Some(42.5),
                heading: Some(90.0),
                attributes: None,
                legacy: false
            })
        );
    }

    #[test]
    fn attributes_are_parsed_and_checked() {
        let p = one(r#"{"obu_id":7,"seq":3,"ts":1,"lat":1,"lon":1,"attributes":{"ignition":false,"alarm":"sos","x":1}}"#);
        let a = p.ok().and_then(|p| p.attributes).unwrap_or_default();
        assert_eq!((a.ignition, a.alarm.as_deref(), a.other.len()), (Some(false), Some("sos"), 1));
        let bad = one(r#"{"obu_id":7,"seq":3,"ts":1,"lat":1,"lon":1,"attributes":{"ignition":1}}"#);
        assert_eq!(bad.err().map(|r| r.message), Some("`attributes.ignition` must be a boolean, got a number".to_string()));
    }

    #[test]
    fn the_legacy_form_serialises_as_the_parser_reads_it() {
        let text = serde_json::to_string(&LegacyPosition { obuid: 12, lat: 40.4, lon: -3.7 }).unwrap_or_default();
        let p = one(&text).unwrap_or_else(|r| panic!("{r}"));
        assert!(p.legacy && p.obu_id == 12 && p.lat == 40.4 && p.lon == -3.7, "{text}");
    }

    #[test]
    fn a_boot_is_read_on_both_paths_and_a_wrong_one_refused() {
        let fast = one(r#"{"obu_id":7,"boot":1763900000,"seq":1,"ts":1,"lat":1,"lon":1}"#).map(|w| w.boot);
        assert_eq!(fast, Ok(1_763_900_000));
        // The slow path (an unknown attribute type sends it there) reads it too.
        let slow = one(r#"{"obu_id":7,"boot":3,"seq":1,"ts":1,"lat":1,"lon":1,"attributes":{"x":[1]}}"#).map(|w| w.boot);
        assert_eq!(slow, Ok(3));
        assert_eq!(one(r#"{"obu_id":7,"seq":1,"ts":1,"lat":1,"lon":1}"#).map(|w| w.boot), Ok(0), "absent: 0");
        let wrong = one(r#"{"obu_id":7,"boot":"two","seq":1,"ts":1,"lat":1,"lon":1}"#).map(|w| w.boot);
        assert_eq!(wrong.map_err(|r| r.reason), Err(Reason::WrongType));
        let negative = one(r#"{"obu_id":7,"boot":-1,"seq":1,"ts":1,"lat":1,"lon":1}"#).map(|w| w.boot);
        assert!(negative.is_err());
        let p = one(r#"{"obu_id":7,"boot":3,"seq":1,"ts":1,"lat":1,"lon":1}"#).map(|w| w.into_position(|| 0, || 0));
        let json = p.map(|p| String::from_utf8(p.to_json()).unwrap_or_default());
        assert_eq!(json.as_deref(), Ok(r#"{"obu_id":7,"seq":1,"boot":3,"ts":1,"lat":1.0,"lon":1.0}"#));
    }

    #[test]
    fn parses_the_legacy_format_and_fills_seq_and_ts() {
        let p = one(r#"{"obuid":12,"lat":40.4,"lon":-3.7}"#).unwrap_or_else(|r| panic!("{r}"));
        assert!(p.legacy);
        assert_eq!((p.seq, p.ts), (None, None));
        let pos = p.into_position(|| 99, || 1234);
        assert_eq!((pos.obu_id, pos.seq, pos.ts), (12, 99, 1234));
    }

    #[test]
    fn arrays_are_judged_element_by_element() {
        let frame = r#"[{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1}, {"obu_id":1,"seq":2,"lat":1,"lon":1}, 5]"#;
        let elements = parse_frame(frame, 10).unwrap_or_default();
        assert_eq!(elements.len(), 3);
        assert!(elements[0].parsed.is_ok());
        assert_eq!(elements[0].raw, r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1}"#);
        let second = elements[1].parsed.clone().err().map(|r| (r.reason, r.message));
        assert_eq!(second, Some((Reason::MissingField, "missing required field `ts`".to_string())));
        assert_eq!((elements[1].obu_id, elements[1].seq), (Some(1), Some(2)));
        assert_eq!(elements[2].parsed.clone().err().map(|r| r.reason), Some(Reason::WrongShape));
    }

    #[test]
    fn refuses_each_structural_fault_with_its_reason() {
        let cases = [
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":1}"#, Reason::MissingField),
            (r#"{"seq":1,"ts":1,"lat":1,"lon":1}"#, Reason::MissingField),
            (r#"{"obu_id":"7","seq":1,"ts":1,"lat":1,"lon":1}"#, Reason::WrongType),
            (r#"{"obu_id":7,"seq":1,"ts":1,"lat":"north","lon":1}"#, Reason::WrongType),
            (r#"{"obu_id":-7,"seq":1,"ts":1,"lat":1,"lon":1}"#, Reason::OutOfRange),
            (r#"{"obu_id":1.5,"seq":1,"ts":1,"lat":1,"lon":1}"#, Reason::OutOfRange),
            (r#"{"obu_id":1,"seq":18446744073709551616,"ts":1,"lat":1,"lon":1}"#, Reason::OutOfRange),
            (r#"{"obu_id":1,"seq":1,"ts":1e30,"lat":1,"lon":1}"#, Reason::OutOfRange),
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":NaN,"lon":1}"#, Reason::NonFiniteNumber),
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":-Infinity}"#, Reason::NonFiniteNumber),
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":1e999,"lon":1}"#, Reason::NonFiniteNumber),
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1"#, Reason::MalformedJson),
            (r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1,"note":"NaN"]"#, Reason::MalformedJson),
        ];
        for (text, expected) in cases {
            let got = match parse_frame(text, 10) {
                Err(r) => r.reason,
                Ok(mut e) => e.remove(0).parsed.err().map(|r| r.reason).unwrap_or(Reason::ShuttingDown),
            };
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn refuses_frames_as_a_whole() {
        let whole = |t: &str, max| parse_frame(t, max).err().map(|r| r.reason);
        assert_eq!(whole("", 10), Some(Reason::EmptyFrame));
        assert_eq!(whole("   \n", 10), Some(Reason::EmptyFrame));
        assert_eq!(whole("[]", 10), Some(Reason::EmptyFrame));
        assert_eq!(whole("hello", 10), Some(Reason::MalformedJson));
        assert_eq!(whole("42", 10), Some(Reason::WrongShape));
        assert_eq!(whole("\"pos\"", 10), Some(Reason::WrongShape));
        assert_eq!(whole("NaN", 10), Some(Reason::NonFiniteNumber));
        let three = r#"[{"obu_id":1},{"obu_id":2},{"obu_id":3}]"#;
        assert_eq!(whole(three, 2), Some(Reason::TooManyPositions));
        assert_eq!(reason(r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1,"speed":"fast"}"#), Reason::WrongType);
    }

    /// Found by fuzz/ (target `frame`): a position written as JSON (by the receiver to
    /// gpscoords, by a device that computed its doubles) must read back as the same position,
    /// every double included.
    #[test]
    fn positions_read_back_as_written() {
        let found = r#"{"obu_id": 17, "seq": 1844711, "ts": 176380000,"seq":1844674430000, "lat": 52.520008, "lon": 13.404954, "speed": 118446744073709551615}"#;
        let from_device = one(found).map(|w| w.into_position(|| 0, || 0)).unwrap_or_else(|r| panic!("{r}"));
        let computed = Position { lat: 21.877423353265442, lon: -116.83361554809613, speed: Some(97.68117019787599), ..from_device.clone() };
        for sent in [from_device, computed] {
            let json = String::from_utf8(sent.to_json()).unwrap_or_default();
            let read = parse_element(&json).parsed.map(|w| w.into_position(|| 0, || 0));
            assert_eq!(read, Ok(sent), "{json}");
        }
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let p = one(r#"{"obu_id":1,"seq":1,"ts":1,"lat":1,"lon":1,"speed":null}"#);
        assert_eq!(p.map(|p| p.speed), Ok(None));
    }
}
