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
    // Endpoints the endpoints controller maintains carry its managed-by label (1.33+) and,
    // once a pod changed them, its trigger-time annotation; a Service whose pods have not
    // started yet has only the label.
    let controller_endpoints = path.group.is_empty()
        && path.resource == "endpoints"
        && (obj.pointer("/metadata/labels/endpoints.kubernetes.io~1managed-by").is_some()
            || obj
                .pointer("/metadata/annotations/endpoints.kubernetes.io~1last-change-trigger-time")
                .is_some());
    never_restored(path, obj).is_some() || controller_of(obj).is_some() || controller_endpoints
}

/// Differences from `a` (older) to `b` (newer), in path order.
pub fn compare(
    a: &BTreeMap<ObjectPath, Value>,
    b: &BTreeMap<ObjectPath, Value>,
    opts: CompareOptions,
) -> Vec<ObjectDiff> {
    let mut paths: Vec<&ObjectPath> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths.into_iter().filter_map(|p| compare_one(p, a.get(p), b.get(p), opts)).collect()
}

/// One object's difference, if any (and if it is not noise).
pub fn compare_one(
    p: &ObjectPath,
    a: Option<&Value>,
    b: Option<&Value>,
    opts: CompareOptions,
) -> Option<ObjectDiff> {
    let shown = |o: &Value| opts.all || !is_noise(p, o);
    let entry = |change, fields| ObjectDiff { path: p.path(), object: p.display(), change, fields };
    match (a, b) {
        (Some(x), Some(y)) if shown(x) || shown(y) => {
            let redact = p.group.is_empty() && p.resource == "secrets";
            let fields =
                diff_values(&for_diff(x, opts.with_status), &for_diff(y, opts.with_status), redact);
            (!fields.is_empty()).then(|| entry(ObjectChange::Changed, fields))
        }
        (Some(x), None) if shown(x) => Some(entry(ObjectChange::Removed, Vec::new())),
        (None, Some(y)) if shown(y) => Some(entry(ObjectChange::Added, Vec::new())),
        _ => None,
    }
}

/// Compare a manifest snapshot with the live cluster without holding either side whole:
/// the snapshot side is kept as tree nodes (a few hundred bytes per object), each live object
/// is compared as it arrives, reading its stored counterpart then, and what the cluster no
/// longer has is read at the end. Memory: the nodes, the in-flight pages, the differences.
pub async fn compare_with_live(
    repo: &cairn_core::repo::Repository,
    snapshot: &cairn_core::repo::Snapshot,
    keep: &(dyn Fn(&ObjectPath) -> bool + Sync),
    client: &kube::Client,
    filters: &super::collect::Filters,
    collect_opts: &super::collect::CollectOptions,
    opts: CompareOptions,
) -> crate::Result<(Vec<ObjectDiff>, super::collect::Collected)> {
    use super::collect::{Exported, collect};
    use super::stored::{object_files, read_objects};
    use futures::{StreamExt, TryStreamExt};

    let stored: std::collections::HashMap<ObjectPath, cairn_core::repo::Node> =
        object_files(repo, snapshot, keep).await?.into_iter().collect();
    let stored = parking_lot::Mutex::new(stored);
    let discovery = super::discover(client, collect_opts.concurrency).await?;
    let ns = filters.namespace_filter()?;
    let resources = filters.select(&discovery.resources, &ns);
    let (tx, rx) = tokio::sync::mpsc::channel::<Exported>(256);
    let produce = async move { collect(client, filters, &resources, collect_opts, &tx).await };
    let live = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|x| (x, rx)) });
    let consume = live
        .filter_map(|e| async move {
            match e {
                Exported::Object(p, v) if keep(&p) => Some((p, v)),
                _ => None,
            }
        })
        .map(|(p, now)| {
            let node = stored.lock().remove(&p);
            async move {
                let before = match node {
                    Some(n) => {
                        read_objects(repo, vec![(p.clone(), n)], 1).await?.pop().map(|(_, v)| v)
                    }
                    None => None,
                };
                crate::Result::Ok(compare_one(&p, before.as_ref(), Some(&now), opts))
            }
        })
        .buffer_unordered(16)
        .try_filter_map(|d| async move { Ok(d) })
        .try_collect::<Vec<ObjectDiff>>();
    let (collected, diffs) = tokio::join!(produce, consume);
    let (collected, mut diffs) = (collected?, diffs?);
    // What the cluster no longer has.
    let gone: Vec<(ObjectPath, cairn_core::repo::Node)> = stored.into_inner().into_iter().collect();
    for chunk in gone.chunks(256) {
        for (p, before) in read_objects(repo, chunk.to_vec(), 16).await? {
            diffs.extend(compare_one(&p, Some(&before), None, opts));
        }
    }
    // The order `compare` gives: by object path (namespace, group, resource, name).
    diffs.sort_by_cached_key(|d| ObjectPath::parse(&d.path));
    let mut collected = collected;
    for (gv, e) in discovery.failures {
        collected.skipped.push(format!("API group {gv}: {e}"));
    }
    Ok((diffs, collected))
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

    /// A Service whose pods have not started has Endpoints with the controller's label but
    /// no trigger-time annotation yet; pods starting between two exports changed them and
    /// `diff` showed it (CI, 2026-11-30).
    #[test]
    fn controller_endpoints_are_noise_before_any_pod_started() {
        let p = ObjectPath::new(Some("p"), "", "endpoints", "web");
        let labelled = json!({"metadata":{"name":"web",
            "labels":{"endpoints.kubernetes.io/managed-by":"endpoint-controller"}},
            "subsets":[{"notReadyAddresses":[{"ip":"10.0.0.1"}]}]});
        assert!(is_noise(&p, &labelled));
        let mut later = labelled.clone();
        later["subsets"][0]["notReadyAddresses"] = json!([{"ip":"10.0.0.1"},{"ip":"10.0.0.2"}]);
        let a = BTreeMap::from([(p.clone(), labelled)]);
        let b = BTreeMap::from([(p.clone(), later)]);
        assert!(compare(&a, &b, CompareOptions::default()).is_empty());
        // Endpoints someone wrote by hand (no selector, no label) are compared.
        let manual = json!({"metadata":{"name":"web"},"subsets":[]});
        assert!(!is_noise(&p, &manual));
    }
}
