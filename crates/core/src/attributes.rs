//! A position's optional `attributes`: what the vehicle says besides where it is.
//!
//! A few keys are typed and documented (docs/wire-format.md), because the processor derives
//! fleet events from them (`ignition`, `alarm`) or because they have a unit (`odometer_m`,
//! `fuel_pct`, `battery_v`). Any other key is kept as sent and passed through to `positions`.
//! A typed key with the wrong JSON type or outside its range refuses the position, with the
//! same reason codes as any other field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};

/// Longest `alarm` string accepted.
pub const MAX_ALARM_LEN: usize = 64;

/// The attributes of one position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Ignition on (true) or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignition: Option<bool>,
    /// An alarm the device raises with this position: `sos`, `power_cut`, `tamper`,
    /// `low_battery`, `accident`, ... (free text, at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// Total distance the vehicle has driven, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odometer_m: Option<f64>,
    /// Fuel level, percent of the tank (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_pct: Option<f64>,
    /// Supply voltage, volts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_v: Option<f64>,
    /// Every other key, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Attributes {
    /// Reads and checks an `attributes` value. `null` is no attributes.
    pub fn parse(value: &Value) -> Result<Option<Attributes>, Rejection> {
        let map = match value {
            Value::Null => return Ok(None),
            Value::Object(map) => map,
            other => {
                return Err(Rejection::new(Reason::WrongType, format!("`attributes` must be an object, got {}", crate::wire::kind(other))));
            }
        };
        let mut attributes = Attributes::default();
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "ignition" => match value {
                    Value::Bool(b) => attributes.ignition = Some(*b),
                    other => return Err(wrong("ignition", "a boolean", other)),
                },
                "alarm" => match value {
                    Value::String(s) if s.trim().is_empty() => {
                        return Err(Rejection::new(Reason::OutOfRange, "`attributes.alarm` must not be empty"));
                    }
                    Value::String(s) if s.chars().count() > MAX_ALARM_LEN => {
                        return Err(Rejection::new(
                            Reason::OutOfRange,
                            format!("`attributes.alarm` is {} characters long; at most {MAX_ALARM_LEN} are allowed", s.chars().count()),
                        ));
                    }
                    Value::String(s) => attributes.alarm = Some(s.clone()),
                    other => return Err(wrong("alarm", "a string", other)),
                },
                "odometer_m" => attributes.odometer_m = Some(number(key, value, 0.0, f64::MAX)?),
                "fuel_pct" => attributes.fuel_pct = Some(number(key, value, 0.0, 100.0)?),
                "battery_v" => attributes.battery_v = Some(number(key, value, 0.0, 1_000.0)?),
                _ => {
                    attributes.other.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(Some(attributes))
    }
}

fn wrong(key: &str, expected: &str, v: &Value) -> Rejection {
    Rejection::new(Reason::WrongType, format!("`attributes.{key}` must be {expected}, got {}", crate::wire::kind(v)))
}

fn number(key: &str, v: &Value, min: f64, max: f64) -> Result<f64, Rejection> {
    let Value::Number(n) = v else { return Err(wrong(key, "a number", v)) };
    match n.as_f64() {
        Some(f) if (min..=max).contains(&f) => Ok(f),
        Some(f) if f.is_finite() && max == f64::MAX => {
            Err(Rejection::new(Reason::OutOfRange, format!("`attributes.{key}` must be at least {min}, got {f}")))
        }
        Some(f) if f.is_finite() => Err(Rejection::new(Reason::OutOfRange, format!("`attributes.{key}` must be within [{min}, {max}], got {f}"))),
        _ => Err(Rejection::new(Reason::NonFiniteNumber, format!("`attributes.{key}` is not a finite number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Attributes>, Rejection> {
        Attributes::parse(&serde_json::from_str(text).unwrap_or(Value::Bool(false)))
    }

    #[test]
    fn typed_keys_are_read_and_unknown_ones_kept() {
        let a = parse(r#"{"ignition":true,"alarm":"sos","odometer_m":12345.5,"fuel_pct":40,"battery_v":12.6,"door":"open","temp_c":4}"#)
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(a.ignition, Some(true));
        assert_eq!(a.alarm.as_deref(), Some("sos"));
        assert_eq!((a.odometer_m, a.fuel_pct, a.battery_v), (Some(12345.5), Some(40.0), Some(12.6)));
        assert_eq!(a.other.get("door"), Some(&Value::String("open".into())));
        assert_eq!(a.other.len(), 2);
        // And back: the same keys, no nulls.
        let text = serde_json::to_string(&a).unwrap_or_default();
        assert!(text.contains(r#""door":"open""#) && text.contains(r#""ignition":true"#), "{text}");
        assert_eq!(parse("null").ok(), Some(None));
    }

    #[test]
    fn wrong_types_and_ranges_are_refused_with_the_key_named() {
        let cases = [
            (r#"{"ignition":"on"}"#, Reason::WrongType, "`attributes.ignition` must be a boolean, got a string"),
            (r#"{"alarm":7}"#, Reason::WrongType, "`attributes.alarm` must be a string, got a number"),
            (r#"{"alarm":""}"#, Reason::OutOfRange, "`attributes.alarm` must not be empty"),
            (r#"{"fuel_pct":101}"#, Reason::OutOfRange, "`attributes.fuel_pct` must be within [0, 100], got 101"),
            (r#"{"odometer_m":-1}"#, Reason::OutOfRange, "`attributes.odometer_m` must be at least 0, got -1"),
            (r#"{"battery_v":true}"#, Reason::WrongType, "`attributes.battery_v` must be a number, got a boolean"),
            (r#"[1]"#, Reason::WrongType, "`attributes` must be an object, got an array"),
        ];
        for (text, reason, message) in cases {
            let r = parse(text).err().map(|r| (r.reason, r.message));
            assert_eq!(r, Some((reason, message.to_string())), "{text}");
        }
    }
}
