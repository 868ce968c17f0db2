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
use cairn_core::{Error, Result};

pub const GROUP: &str = "snapshot.storage.k8s.io";
/// A PVC (or its namespace) names the class to use with this annotation.
pub const CLASS_ANNOTATION: &str = "backup.cairn.dev/snapshot-class";
/// How a VolumeSnapshotClass says it is its driver's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

pub const GROUP_GROUP: &str = "groupsnapshot.storage.k8s.io";
/// PVCs sharing a value of this label (in one namespace) are snapshotted together, with one
/// VolumeGroupSnapshot, where the cluster serves them.
pub const GROUP_LABEL: &str = "backup.cairn.dev/group";
pub const GROUP_CLASS_ANNOTATION: &str = "backup.cairn.dev/group-snapshot-class";
pub const DEFAULT_GROUP_CLASS_ANNOTATION: &str =
    "groupsnapshot.storage.kubernetes.io/is-default-class";

pub fn group_resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP_GROUP, version, kind), plural)
}

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
    choose(client, &class_resource(), DEFAULT_CLASS_ANNOTATION, CLASS_ANNOTATION, driver, requested)
        .await
}

/// The VolumeGroupSnapshotClass for a group of volumes of `driver` (same rules).
pub async fn choose_group_class(
    client: &kube::Client,
    version: &str,
    driver: &str,
    requested: Option<&str>,
) -> Result<String> {
    let ar = group_resource(version, "VolumeGroupSnapshotClass", "volumegroupsnapshotclasses");
    choose(client, &ar, DEFAULT_GROUP_CLASS_ANNOTATION, GROUP_CLASS_ANNOTATION, driver, requested)
        .await
}

async fn choose(
    client: &kube::Client,
    resource: &ApiResource,
    default_annotation: &str,
    class_annotation: &str,
    driver: &str,
    requested: Option<&str>,
) -> Result<String> {
    let kind = &resource.kind;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let classes = api
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(&format!("listing {kind}es"), e))?;
    let driver_of = |c: &DynamicObject| c.data["driver"].as_str().unwrap_or_default().to_string();
    if let Some(name) = requested {
        let class = classes
            .items
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| Error::Invalid(format!("{kind} {name:?} does not exist")))?;
        if driver_of(class) != driver {
            return Err(Error::Invalid(format!(
                "{kind} {name:?} is for driver {:?}, the volume's is {driver:?}",
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
                .and_then(|a| a.get(default_annotation))
                .is_some_and(|v| v == "true")
        })
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Invalid(format!(
            "no default {kind} for driver {driver:?}: annotate one with \
             {default_annotation}=true, name one on the PVC with {class_annotation}, \
             or use --mode live"
        ))),
        many => Err(Error::Invalid(format!(
            "several default {kind}es for driver {driver:?} ({}): name one on the PVC with \
             {class_annotation}",
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
    /// `status.creationTime`: the point in time the snapshot holds.
    pub creation_time: Option<String>,
    pub waited: Duration,
}

/// Wait until the snapshot is cut: `status.creationTime` set (the point in time is fixed,
/// though the driver may still be uploading) or `readyToUse`. What backup hooks wait for
/// before they let the application go on.
pub async fn wait_cut(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Ready> {
    wait_for(client, ns, name, timeout, poll, true).await
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
    wait_for(client, ns, name, timeout, poll, false).await
}

async fn wait_for(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
    cut_is_enough: bool,
) -> Result<Ready> {
    let api = snapshots_api(client, ns);
    let started = Instant::now();
    loop {
        let snap = api
            .get(name)
            .await
            .map_err(|e| classify(&format!("reading VolumeSnapshot {ns}/{name}"), e))?;
        let status = snap.data.get("status").cloned().unwrap_or(Value::Null);
        let cut = cut_is_enough && status["creationTime"].is_string();
        if cut || status["readyToUse"] == Value::Bool(true) {
            return Ok(Ready {
                restore_size: status["restoreSize"].as_str().map(String::from),
                content: status["boundVolumeSnapshotContentName"].as_str().map(String::from),
                creation_time: status["creationTime"].as_str().map(String::from),
                waited: started.elapsed(),
            });
        }
        if let Some(msg) = status["error"]["message"].as_str() {
            return Err(Error::Retryable(format!("VolumeSnapshot {ns}/{name} failed: {msg}")));
        }
        if started.elapsed() > timeout {
            return Err(Error::Retryable(format!(
                "VolumeSnapshot {ns}/{name} not {} within {} (is the snapshot controller \
                 running, and the CSI driver able to snapshot?)",
                if cut_is_enough { "cut" } else { "ready" },
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

/// The version of `groupsnapshot.storage.k8s.io` the server prefers, if it serves the group.
pub async fn group_version(client: &kube::Client) -> Result<Option<String>> {
    let req = http::Request::get(format!("/apis/{GROUP_GROUP}"))
        .body(Vec::new())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    match client.request::<Value>(req).await {
        Ok(v) => Ok(v["preferredVersion"]["version"].as_str().map(String::from)),
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(classify("asking whether VolumeGroupSnapshots are served", e)),
    }
}

/// Create a VolumeGroupSnapshot of the PVCs of `ns` labelled `GROUP_LABEL=group`.
#[allow(clippy::too_many_arguments)]
pub async fn create_group(
    client: &kube::Client,
    version: &str,
    ns: &str,
    name: &str,
    group: &str,
    class: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<()> {
    let ar = group_resource(version, "VolumeGroupSnapshot", "volumegroupsnapshots");
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP_GROUP}/{version}"),
        "kind": "VolumeGroupSnapshot",
        "metadata": { "name": name, "namespace": ns, "labels": labels, "annotations": annotations },
        "spec": {
            "volumeGroupSnapshotClassName": class,
            "source": { "selector": { "matchLabels": { GROUP_LABEL: group } } },
        },
    }))
    .map_err(|e| Error::Invalid(format!("VolumeGroupSnapshot object: {e}")))?;
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
        .map_err(|e| classify(&format!("creating VolumeGroupSnapshot {ns}/{name}"), e))?;
    Ok(())
}

/// Wait until a VolumeGroupSnapshot is ready; then map each member volume (CSI volume
/// handle) to the VolumeSnapshot the snapshot controller made for it: volume handle →
/// snapshot handle (the group content's status) → VolumeSnapshotContent → VolumeSnapshot.
pub async fn wait_group_members(
    client: &kube::Client,
    version: &str,
    ns: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<BTreeMap<String, String>> {
    let groups = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &group_resource(version, "VolumeGroupSnapshot", "volumegroupsnapshots"),
    );
    let contents = Api::<DynamicObject>::all_with(
        client.clone(),
        &group_resource(version, "VolumeGroupSnapshotContent", "volumegroupsnapshotcontents"),
    );
    let started = Instant::now();
    let content_name = loop {
        let g = groups
            .get(name)
            .await
            .map_err(|e| classify(&format!("reading VolumeGroupSnapshot {ns}/{name}"), e))?;
        let status = g.data.get("status").cloned().unwrap_or(Value::Null);
        if status["readyToUse"] == Value::Bool(true)
            && let Some(c) = status["boundVolumeGroupSnapshotContentName"].as_str()
        {
            break c.to_string();
        }
        if let Some(msg) = status["error"]["message"].as_str() {
            return Err(Error::Retryable(format!("VolumeGroupSnapshot {ns}/{name} failed: {msg}")));
        }
        if started.elapsed() > timeout {
            return Err(Error::Retryable(format!(
                "VolumeGroupSnapshot {ns}/{name} not ready within {}",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(poll).await;
    };
    // The controller creates and binds the member VolumeSnapshots around the time the group
    // turns ready, not before: poll until every volume of the group content has its member.
    loop {
        let members = group_member_map(client, ns, name, &contents, &content_name).await?;
        if members.complete() {
            return Ok(members.by_volume);
        }
        if started.elapsed() > timeout {
            return Err(Error::Retryable(format!(
                "VolumeGroupSnapshot {ns}/{name}: {} of {} member snapshots bound within {}",
                members.by_volume.len(),
                members.volumes,
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The members found so far: volume handle → VolumeSnapshot, of how many volumes.
struct GroupMembers {
    by_volume: BTreeMap<String, String>,
    volumes: usize,
}

impl GroupMembers {
    fn complete(&self) -> bool {
        self.volumes > 0 && self.by_volume.len() == self.volumes
    }
}

async fn group_member_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
    contents: &Api<DynamicObject>,
    content_name: &str,
) -> Result<GroupMembers> {
    let content = contents
        .get(content_name)
        .await
        .map_err(|e| classify(&format!("reading VolumeGroupSnapshotContent {content_name}"), e))?;
    // v1beta2 and v1: volumeSnapshotInfoList; v1beta1: volumeSnapshotHandlePairList.
    let status = content.data.get("status").cloned().unwrap_or(Value::Null);
    let pairs = status["volumeSnapshotInfoList"]
        .as_array()
        .or_else(|| status["volumeSnapshotHandlePairList"].as_array())
        .cloned()
        .unwrap_or_default();
    let by_snapshot_handle: BTreeMap<String, String> = pairs
        .iter()
        .filter_map(|p| {
            Some((
                p["snapshotHandle"].as_str()?.to_string(),
                p["volumeHandle"].as_str()?.to_string(),
            ))
        })
        .collect();
    let snapshots = snapshots_api(client, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(&format!("listing VolumeSnapshots of {ns}"), e))?;
    let snapshot_contents: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshotContent"),
            "volumesnapshotcontents",
        ),
    );
    let mut by_volume = BTreeMap::new();
    for snap in snapshots.items {
        if snap.data["status"]["volumeGroupSnapshotName"].as_str() != Some(name) {
            continue;
        }
        let snap_name = snap.metadata.name.clone().unwrap_or_default();
        let Some(content) = snap.data["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .or_else(|| snap.data["spec"]["source"]["volumeSnapshotContentName"].as_str())
        else {
            continue;
        };
        let c = snapshot_contents
            .get(content)
            .await
            .map_err(|e| classify(&format!("reading VolumeSnapshotContent {content}"), e))?;
        let handle = c.data["status"]["snapshotHandle"]
            .as_str()
            .or_else(|| c.data["spec"]["source"]["snapshotHandle"].as_str());
        if let Some(volume) = handle.and_then(|h| by_snapshot_handle.get(h)) {
            by_volume.insert(volume.clone(), snap_name);
        }
    }
    Ok(GroupMembers { by_volume, volumes: by_snapshot_handle.len() })
}

/// Delete a VolumeGroupSnapshot (its member VolumeSnapshots go with it); gone is fine.
pub async fn delete_group(
    client: &kube::Client,
    version: &str,
    ns: &str,
    name: &str,
) -> Result<()> {
    let api = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &group_resource(version, "VolumeGroupSnapshot", "volumegroupsnapshots"),
    );
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(classify(&format!("deleting VolumeGroupSnapshot {ns}/{name}"), e)),
    }
}
