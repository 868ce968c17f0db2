//! Object-level comparison of two sets of objects (two manifest snapshots, or a snapshot and
//! the live cluster): added, removed, and changed with the fields that changed, after the
//! noise is gone (see [`super::normalize::for_diff`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::layout::ObjectPath;
use super::normalize::{controller_of, for_diff, never_restored};
use super::semdiff::{FieldChange, diff_values};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectChange {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectDiff {
    pub path: String,
    /// `deployments.apps prod/web`
    pub object: String,
    pub change: ObjectChange,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CompareOptions {
    /// Compare status too.
    pub with_status: bool,
    /// Include objects the cluster manages itself (leases, endpoint slices, objects with a
    /// controller): left out by default, they change on their own.
    pub all: bool,
}

/// Is this object left out of comparisons by default?
pub fn is_noise(path: &ObjectPath, obj: &Value) -> bool {
    // Endpoints the endpoints controller maintains carry its trigger-time annotation.
    let controller_endpoints = path.group.is_empty()
        && path.resource == "endpoints"
        && obj
            .pointer("/metadata/annotations/endpoints.kubernetes.io~1last-change-trigger-time")
            .is_some();
    never_restored(path, obj).is_some() || controller_of(obj).is_some() || controller_endpoints
}

/// Differences from `a` (older) to `b` (newer), in path order.
pub fn compare(
    a: &BTreeMap<ObjectPath, Value>,
    b: &BTreeMap<ObjectPath, Value>,
    opts: CompareOptions,
) -> Vec<ObjectDiff> {
    let shown = |p: &ObjectPath, o: &Value| opts.all || !is_noise(p, o);
    let mut out = Vec::new();
    let mut paths: Vec<&ObjectPath> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let redact = p.group.is_empty() && p.resource == "secrets";
        let entry =
            |change, fields| ObjectDiff { path: p.path(), object: p.display(), change, fields };
        match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) => {
                if !shown(p, x) && !shown(p, y) {
                    continue;
                }
                let fields = diff_values(
                    &for_diff(x, opts.with_status),
                    &for_diff(y, opts.with_status),
                    redact,
                );
                if !fields.is_empty() {
                    out.push(entry(ObjectChange::Changed, fields));
                }
            }
            (Some(x), None) if shown(p, x) => out.push(entry(ObjectChange::Removed, Vec::new())),
            (None, Some(y)) if shown(p, y) => out.push(entry(ObjectChange::Added, Vec::new())),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edits_deletions_and_noise() {
        let dep = ObjectPath::new(Some("p"), "apps", "deployments", "web");
        let cm = ObjectPath::new(Some("p"), "", "configmaps", "gone");
        let rs = ObjectPath::new(Some("p"), "apps", "replicasets", "web-1");
        let owned = json!({"metadata":{"name":"web-1","ownerReferences":[{"controller":true,"uid":"u"}]},"spec":{"replicas":1}});
        let a = BTreeMap::from([
            (
                dep.clone(),
                json!({"metadata":{"name":"web","resourceVersion":"1"},"spec":{"replicas":2}}),
            ),
            (cm.clone(), json!({"metadata":{"name":"gone"}})),
            (rs.clone(), owned.clone()),
        ]);
        let mut owned2 = owned.clone();
        owned2["spec"]["replicas"] = json!(5);
        let b = BTreeMap::from([
            (
                dep.clone(),
                json!({"metadata":{"name":"web","resourceVersion":"9"},"spec":{"replicas":3}}),
            ),
            (rs.clone(), owned2),
        ]);
        let d = compare(&a, &b, CompareOptions::default());
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].object, "configmaps p/gone");
        assert_eq!(d[0].change, ObjectChange::Removed);
        assert_eq!(d[1].change, ObjectChange::Changed);
        assert_eq!(d[1].fields[0].line(), "~ spec.replicas: 2 → 3");
        let all = compare(&a, &b, CompareOptions { all: true, ..Default::default() });
        assert_eq!(all.len(), 3);
    }
}
