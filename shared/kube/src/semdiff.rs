//! Semantic diff of two versions of an object: which fields were added, removed or changed,
//! after [`super::normalize::for_diff`] has removed the noise. Values of Secrets are never
//! shown, only the names of the fields that differ.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldChangeKind {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// `spec.template.spec.containers[0].image`
    pub field: String,
    pub change: FieldChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

const MAX_SHOWN: usize = 80;

fn show(v: &Value, redact: bool) -> Option<String> {
    if redact {
        return None;
    }
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(if s.chars().count() > MAX_SHOWN {
        format!("{}…", s.chars().take(MAX_SHOWN).collect::<String>())
    } else {
        s
    })
}

/// Field-level differences from `a` to `b`. `redact` hides values (Secrets).
pub fn diff_values(a: &Value, b: &Value, redact: bool) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(a, b, String::new(), redact, &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    let simple =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), simple) {
        (true, true) => key.to_string(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key:?}]"),
    }
}

fn walk(a: &Value, b: &Value, at: String, redact: bool, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = join(&at, k);
                match y.get(k) {
                    Some(vb) => walk(va, vb, p, redact, out),
                    None => out.push(FieldChange {
                        field: p,
                        change: FieldChangeKind::Removed,
                        old: show(va, redact),
                        new: None,
                    }),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(FieldChange {
                        field: join(&at, k),
                        change: FieldChangeKind::Added,
                        old: None,
                        new: show(vb, redact),
                    });
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{at}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => walk(va, vb, p, redact, out),
                    (Some(va), None) => out.push(FieldChange {
                        field: p,
                        change: FieldChangeKind::Removed,
                        old: show(va, redact),
                        new: None,
                    }),
                    (None, Some(vb)) => out.push(FieldChange {
                        field: p,
                        change: FieldChangeKind::Added,
                        old: None,
                        new: show(vb, redact),
                    }),
                    (None, None) => {}
                }
            }
        }
        _ if a == b => {}
        _ => out.push(FieldChange {
            field: at,
            change: FieldChangeKind::Changed,
            old: show(a, redact),
            new: show(b, redact),
        }),
    }
}

impl FieldChange {
    /// `  ~ spec.replicas: 2 → 3`
    pub fn line(&self) -> String {
        match (&self.change, &self.old, &self.new) {
            (FieldChangeKind::Changed, Some(o), Some(n)) => format!("~ {}: {o} → {n}", self.field),
            (FieldChangeKind::Changed, _, _) => format!("~ {} (value hidden)", self.field),
            (FieldChangeKind::Added, _, Some(n)) => format!("+ {}: {n}", self.field),
            (FieldChangeKind::Added, _, None) => format!("+ {}", self.field),
            (FieldChangeKind::Removed, Some(o), _) => format!("- {}: {o}", self.field),
            (FieldChangeKind::Removed, None, _) => format!("- {}", self.field),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths_and_kinds() {
        let a = json!({"spec":{"replicas":2,"template":{"spec":{"containers":[{"image":"nginx:1"}]}}},
                       "metadata":{"labels":{"app.kubernetes.io/name":"x","gone":"1"}}});
        let b = json!({"spec":{"replicas":3,"template":{"spec":{"containers":[{"image":"nginx:2"},{"image":"side"}]}}},
                       "metadata":{"labels":{"app.kubernetes.io/name":"x","new":"2"}}});
        let lines: Vec<String> = diff_values(&a, &b, false).iter().map(FieldChange::line).collect();
        assert_eq!(
            lines,
            vec![
                "- metadata.labels.gone: 1",
                "+ metadata.labels.new: 2",
                "~ spec.replicas: 2 → 3",
                "~ spec.template.spec.containers[0].image: nginx:1 → nginx:2",
                "+ spec.template.spec.containers[1]: {\"image\":\"side\"}",
            ]
        );
        assert!(diff_values(&a, &a, false).is_empty());
    }

    #[test]
    fn secrets_are_redacted() {
        let a = json!({"data":{"password":"c2VjcmV0"}});
        let b = json!({"data":{"password":"b3RoZXI="}});
        let d = diff_values(&a, &b, true);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line(), "~ data.password (value hidden)");
        assert!(!format!("{d:?}").contains("c2VjcmV0"));
    }
}
