//! CSI volume snapshots (`snapshot.storage.k8s.io/v1`): choosing a VolumeSnapshotClass,
//! creating a VolumeSnapshot of a PVC, waiting until it is ready (surfacing the driver's
//! error), and deleting it. k8s-openapi has no types for these CRDs: they are handled as
//! dynamic objects.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::{classify, status_code};
use crate::{Error, Result};

pub const GROUP: &str = "snapshot.storage.k8s.io";
/// A PVC (or its namespace) names the class to use with this annotation.
pub const CLASS_ANNOTATION: &str = "backup.cairn.dev/snapshot-class";
/// How a VolumeSnapshotClass says it is its driver's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

pub fn snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

pub fn class_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    )
}

pub fn snapshots_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &snapshot_resource())
}

/// The class for a PVC of `driver`: the one the PVC names (it must exist and be for the
/// driver), else the driver's default class. The error names what is missing.
pub async fn choose_class(
    client: &kube::Client,
    driver: &str,
    requested: Option<&str>,
) -> Result<String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &class_resource());
    let classes = api
        .list(&ListParams::default())
        .await
        .map_err(|e| classify("listing VolumeSnapshotClasses", e))?;
    let driver_of = |c: &DynamicObject| c.data["driver"].as_str().unwrap_or_default().to_string();
    if let Some(name) = requested {
        let class =
            classes.items.iter().find(|c| c.metadata.name.as_deref() == Some(name)).ok_or_else(
                || Error::Invalid(format!("VolumeSnapshotClass {name:?} does not exist")),
            )?;
        if driver_of(class) != driver {
            return Err(Error::Invalid(format!(
                "VolumeSnapshotClass {name:?} is for driver {:?}, the volume's is {driver:?}",
                driver_of(class)
            )));
        }
        return Ok(name.to_string());
    }
    let defaults: Vec<String> = classes
        .items
        .iter()
        .filter(|c| driver_of(c) == driver)
        .filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        })
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Invalid(format!(
            "no default VolumeSnapshotClass for driver {driver:?}: annotate one with \
             {DEFAULT_CLASS_ANNOTATION}=true, name one on the PVC with {CLASS_ANNOTATION}, \
             or use --mode live"
        ))),
        many => Err(Error::Invalid(format!(
            "several default VolumeSnapshotClasses for driver {driver:?} ({}): name one on the \
             PVC with {CLASS_ANNOTATION}",
            many.join(", ")
        ))),
    }
}

/// Create a VolumeSnapshot of PVC `pvc`.
pub async fn create(
    client: &kube::Client,
    ns: &str,
    name: &str,
    pvc: &str,
    class: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<()> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshot",
        "metadata": { "name": name, "namespace": ns, "labels": labels, "annotations": annotations },
        "spec": {
            "volumeSnapshotClassName": class,
            "source": { "persistentVolumeClaimName": pvc },
        },
    }))
    .map_err(|e| Error::Invalid(format!("VolumeSnapshot object: {e}")))?;
    snapshots_api(client, ns)
        .create(&PostParams::default(), &obj)
        .await
        .map_err(|e| classify(&format!("creating VolumeSnapshot {ns}/{name}"), e))?;
    Ok(())
}

/// A snapshot the driver has cut.
#[derive(Debug, Clone)]
pub struct Ready {
    /// `status.restoreSize`: the smallest PVC that can hold it.
    pub restore_size: Option<String>,
    pub content: Option<String>,
    pub waited: Duration,
}

/// Wait until the snapshot is `readyToUse`. `status.error` fails at once with the driver's
/// message (the snapshot controller retries a failed cut itself only in some versions; a
/// reported error is what the operator needs to see); no readiness within `timeout` fails.
pub async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Ready> {
    let api = snapshots_api(client, ns);
    let started = Instant::now();
    loop {
        let snap = api
            .get(name)
            .await
            .map_err(|e| classify(&format!("reading VolumeSnapshot {ns}/{name}"), e))?;
        let status = snap.data.get("status").cloned().unwrap_or(Value::Null);
        if status["readyToUse"] == Value::Bool(true) {
            return Ok(Ready {
                restore_size: status["restoreSize"].as_str().map(String::from),
                content: status["boundVolumeSnapshotContentName"].as_str().map(String::from),
                waited: started.elapsed(),
            });
        }
        if let Some(msg) = status["error"]["message"].as_str() {
            return Err(Error::Retryable(format!("VolumeSnapshot {ns}/{name} failed: {msg}")));
        }
        if started.elapsed() > timeout {
            return Err(Error::Retryable(format!(
                "VolumeSnapshot {ns}/{name} not ready within {} (is the snapshot controller \
                 running, and the CSI driver able to snapshot?)",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Delete a VolumeSnapshot; gone already is fine.
pub async fn delete(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    match snapshots_api(client, ns).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(classify(&format!("deleting VolumeSnapshot {ns}/{name}"), e)),
    }
}

/// Whether the cluster serves VolumeSnapshots at all (the CRDs are installed).
pub async fn served(client: &kube::Client) -> Result<bool> {
    let req = http::Request::get(format!("/apis/{GROUP}/v1"))
        .body(Vec::new())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    match client.request::<Value>(req).await {
        Ok(_) => Ok(true),
        Err(e) if status_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(classify("asking whether VolumeSnapshots are served", e)),
    }
}
