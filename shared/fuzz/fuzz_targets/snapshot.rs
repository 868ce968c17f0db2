//! `Snapshot::decode` on arbitrary bytes: never panics. A decoded snapshot must serialize
//! (`Snapshot::seal` does `serde_json::to_vec(..).expect(..)`) and decode back to itself.
//! Floats inside `meta` are compared with a 1-ulp-ish tolerance: serde_json's default float
//! parser is not correctly rounded (its `float_roundtrip` feature is off), which is not a
//! cairn bug.
#![no_main]

use cairn_core::repo::Snapshot;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = Snapshot::decode(data) else { return };
    let enc = serde_json::to_vec(&snap).expect("a decoded snapshot must serialize");
    let back = Snapshot::decode(&enc).expect("re-encoded snapshot must decode");
    assert!(json_eq(&back.meta, &snap.meta), "meta changed: {:?} vs {:?}", back.meta, snap.meta);
    let mut a = back;
    let mut b = snap;
    a.meta = Value::Null;
    b.meta = Value::Null;
    assert_eq!(a, b, "decode(encode(x)) != x");
});

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
