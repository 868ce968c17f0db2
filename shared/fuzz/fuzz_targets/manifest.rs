//! The manifest side of a snapshot on arbitrary input: a stored YAML file (`from_yaml`), its
//! path (`ObjectPath::parse`), and the normalisations restore and diff apply. Nothing panics;
//! a parsed object re-serialises to YAML that parses back to itself; a parsed path prints back
//! to a path that parses to the same.
#![no_main]

use cairn_kube::layout::ObjectPath;
use cairn_kube::normalize::{SanitizeOptions, for_diff, never_restored, sanitize};
use cairn_kube::{from_yaml, to_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(p) = ObjectPath::parse(text)
    {
        assert_eq!(ObjectPath::parse(&p.path()), Some(p.clone()), "path {text:?}");
    }
    let Ok(obj) = from_yaml(data, "fuzz") else { return };
    if let Ok(text) = to_yaml(&obj) {
        let back = from_yaml(text.as_bytes(), "fuzz").expect("our YAML must parse");
        assert!(json_eq(&back, &obj), "YAML round trip changed {obj:?} into {back:?}");
    }
    let path = ObjectPath::new(Some("ns"), "", "services", "x");
    let _ = never_restored(&path, &obj);
    let _ = for_diff(&obj, false);
    let mut o = obj;
    sanitize(&mut o, &path, SanitizeOptions::default(), false);
});

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
