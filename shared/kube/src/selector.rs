//! Label selectors as `kubectl -l` takes them: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x)`, `a` (exists), `!a` (does not exist), joined by commas.

use serde_json::Value;

use cairn_core::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    source: String,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector> {
        let bad = |why: &str| Error::Invalid(format!("label selector {s:?}: {why}"));
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key_of(key.trim()).ok_or_else(|| bad("bad key"))?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(key_of(k.trim()).ok_or_else(|| bad("bad key"))?, v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(key_of(k.trim()).ok_or_else(|| bad("bad key"))?, v.trim().into())
            } else if let Some((k, set)) = split_set(part, " notin ") {
                Requirement::NotIn(key_of(k).ok_or_else(|| bad("bad key"))?, set?)
            } else if let Some((k, set)) = split_set(part, " in ") {
                Requirement::In(key_of(k).ok_or_else(|| bad("bad key"))?, set?)
            } else {
                Requirement::Exists(key_of(part).ok_or_else(|| bad("bad key"))?)
            };
            requirements.push(req);
        }
        Ok(Selector { requirements, source: s.to_string() })
    }

    /// The selector as given, for the API server's `labelSelector` parameter.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does an object (its `metadata.labels`) match?
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn key_of(k: &str) -> Option<String> {
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| k.to_string())
}

fn split_set<'a>(part: &'a str, op: &str) -> Option<(&'a str, Result<Vec<String>>)> {
    let (k, rest) = part.split_once(op)?;
    let rest = rest.trim();
    let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')'));
    let set = match inner {
        Some(i) => {
            Ok(i.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        }
        None => {
            Err(Error::Invalid(format!("label selector: {part:?}: expected a set in parentheses")))
        }
    };
    Some((k.trim(), set))
}

/// Split on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_operator() {
        let o = json!({"metadata":{"labels":{"app":"web","tier":"frontend"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=frontend", true),
            ("app in (db,web),tier notin (backend)", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&o), want, "{sel}");
        }
        assert!(!Selector::parse("app").unwrap().matches(&json!({"metadata":{}})));
        assert!(Selector::parse("app in web").is_err());
        assert!(Selector::parse("a b=c").is_err());
    }
}
