//! The parts of a cluster the test world lacks for PVC tests, played by the test itself,
//! honestly and visibly, against the real kube-apiserver and kube-controller-manager:
//!
//! * a **snapshot controller** that cuts VolumeSnapshots (copies the source volume's
//!   directory) and marks them ready, or reports an error, or never answers;
//! * a **provisioner** that backs each PVC of its StorageClass with a directory (a file for
//!   block volumes), filling clones from their VolumeSnapshot, and creates the PV; the real
//!   PV controller binds it;
//! * a **kubelet** that runs each pod's real command, the workspace's binary for the image's
//!   entry point, in a private mount namespace where the pod's volumes are bind-mounted at
//!   their mount paths (read-only where the pod says so), as the pod's user with only the
//!   capabilities the pod adds (`setpriv`), with the pod's environment (values, Secrets,
//!   ConfigMaps), its Secret and ConfigMap volumes and its service-account token (with the
//!   API server's address, as in-cluster clients expect);
//!   it writes the pod's status (Running, then Succeeded/Failed with exit code and the
//!   termination message) and kills the process when the pod is deleted.
//!
//! Each test makes its own driver, StorageClass and VolumeSnapshotClass and names the
//! namespaces it watches, so tests run in parallel. Everything it does is logged in
//! [`FakeCsi::events`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use parking_lot::Mutex;
use serde_json::{Value, json};

use cairn_kube::volsnap;

/// What the snapshot controller does with a VolumeSnapshot of a PVC.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotBehaviour {
    Ready,
    Error(String),
    Never,
}

/// What the kubelet does with a pod (keyed by the PVC it works for).
#[derive(Debug, Clone, PartialEq)]
pub enum PodBehaviour {
    Run,
    /// Run, but only after this long (to catch the orchestrator mid-Job).
    RunAfter(Duration),
    ImagePullFails,
}

pub struct FakeCsi {
    pub client: kube::Client,
    pub driver: String,
    pub storage_class: String,
    pub snapshot_class: String,
    pub group_snapshot_class: String,
    pub root: tempfile::TempDir,
    namespaces: Vec<String>,
    snapshot_behaviour: Mutex<HashMap<String, SnapshotBehaviour>>,
    pod_behaviour: Mutex<HashMap<String, PodBehaviour>>,
    pub events: Mutex<Vec<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Pods the kubelet has taken on (by uid).
    started: Mutex<HashSet<String>>,
    /// Cluster-scoped contents the group snapshot controller made (removed by `stop`).
    contents: Mutex<Vec<(bool, String)>>,
}

impl FakeCsi {
    /// Start the fake components for `namespaces` with a fresh driver, StorageClass and a
    /// default VolumeSnapshotClass.
    pub async fn start(client: kube::Client, namespaces: &[String]) -> Arc<FakeCsi> {
        let id = crate::unique("csi");
        let driver = format!("{id}.csi.cairn.test");
        let storage_class = format!("{id}-sc");
        let snapshot_class = format!("{id}-vsc");
        let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
        let sc = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": driver, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        }))
        .unwrap();
        classes.create(&PostParams::default(), &sc).await.unwrap();
        let vsc: Api<DynamicObject> = Api::all_with(client.clone(), &volsnap::class_resource());
        let obj = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": snapshot_class,
                "annotations": {volsnap::DEFAULT_CLASS_ANNOTATION: "true"}},
            "driver": driver, "deletionPolicy": "Delete",
        }))
        .unwrap();
        vsc.create(&PostParams::default(), &obj).await.unwrap();
        let group_snapshot_class = format!("{id}-vgsc");
        let gsc: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &volsnap::group_resource(
                GROUP_VERSION,
                "VolumeGroupSnapshotClass",
                "volumegroupsnapshotclasses",
            ),
        );
        let obj = serde_json::from_value(json!({
            "apiVersion": format!("groupsnapshot.storage.k8s.io/{GROUP_VERSION}"),
            "kind": "VolumeGroupSnapshotClass",
            "metadata": {"name": group_snapshot_class,
                "annotations": {volsnap::DEFAULT_GROUP_CLASS_ANNOTATION: "true"}},
            "driver": driver, "deletionPolicy": "Delete",
        }))
        .unwrap();
        gsc.create(&PostParams::default(), &obj).await.unwrap();
        // Pods run in a private mount namespace with a tmpfs over each of POD_ROOTS: the
        // mount points must exist on the host (they stay empty there).
        for root in POD_ROOTS {
            std::fs::create_dir_all(root).unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        for d in ["volumes", "snapshots", "pods"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let csi = Arc::new(FakeCsi {
            client,
            driver,
            storage_class,
            snapshot_class,
            group_snapshot_class,
            root,
            namespaces: namespaces.to_vec(),
            snapshot_behaviour: Mutex::new(HashMap::new()),
            pod_behaviour: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            started: Mutex::new(HashSet::new()),
            contents: Mutex::new(Vec::new()),
        });
        let c = csi.clone();
        let task = tokio::spawn(async move {
            loop {
                c.group_snapshot_controller().await;
                c.snapshot_controller().await;
                c.provisioner().await;
                c.kubelet().await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        csi.tasks.lock().push(task);
        csi
    }

    pub fn set_snapshot_behaviour(&self, ns: &str, pvc: &str, b: SnapshotBehaviour) {
        self.snapshot_behaviour.lock().insert(format!("{ns}/{pvc}"), b);
    }

    pub fn set_pod_behaviour(&self, ns: &str, pvc: &str, b: PodBehaviour) {
        self.pod_behaviour.lock().insert(format!("{ns}/{pvc}"), b);
    }

    fn event(&self, e: String) {
        eprintln!("[fake-csi] {e}");
        self.events.lock().push(e);
    }

    /// Create a PVC of this StorageClass and wait until the PV controller bound it. Returns
    /// the directory (or, for block volumes, the file) backing it.
    pub async fn create_pvc(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        block: bool,
    ) -> PathBuf {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let pvc = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
            "spec": {
                "storageClassName": self.storage_class,
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }))
        .unwrap();
        api.create(&PostParams::default(), &pvc).await.unwrap();
        self.wait_bound(ns, name).await
    }

    /// Wait until a PVC is bound; the path backing it.
    pub async fn wait_bound(&self, ns: &str, name: &str) -> PathBuf {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pvc = api.get(name).await.unwrap();
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if bound {
                let pv = pvc.spec.unwrap().volume_name.unwrap();
                return self.backing_of_pv(&pv).await.expect("a PV of the fake driver");
            }
            assert!(Instant::now() < deadline, "PVC {ns}/{name} not bound within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn backing_of_pv(&self, pv: &str) -> Option<PathBuf> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = api.get_opt(pv).await.ok()??;
        let csi = pv.spec?.csi?;
        (csi.driver == self.driver).then(|| PathBuf::from(csi.volume_handle))
    }

    async fn backing_of_claim(&self, ns: &str, claim: &str) -> Option<PathBuf> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvc = api.get_opt(claim).await.ok()??;
        self.backing_of_pv(&pvc.spec?.volume_name?).await
    }

    async fn snapshot_controller(&self) {
        for ns in &self.namespaces {
            let api = volsnap::snapshots_api(&self.client, ns);
            let Ok(list) = api.list(&ListParams::default()).await else { continue };
            for snap in list.items {
                let status = snap.data.get("status").cloned().unwrap_or(Value::Null);
                if status["readyToUse"] == true || status.get("error").is_some() {
                    continue;
                }
                let name = snap.metadata.name.clone().unwrap_or_default();
                let uid = snap.metadata.uid.clone().unwrap_or_default();
                let pvc = snap.data["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let behaviour = self
                    .snapshot_behaviour
                    .lock()
                    .get(&format!("{ns}/{pvc}"))
                    .cloned()
                    .unwrap_or(SnapshotBehaviour::Ready);
                let now = cairn_core::repo::now_rfc3339();
                let new_status = match behaviour {
                    SnapshotBehaviour::Never => continue,
                    SnapshotBehaviour::Error(msg) => {
                        self.event(format!("snapshot {ns}/{name}: reporting error {msg:?}"));
                        json!({"readyToUse": false, "error": {"message": msg, "time": now}})
                    }
                    SnapshotBehaviour::Ready => {
                        let Some(src) = self.backing_of_claim(ns, &pvc).await else { continue };
                        let dst = self.root.path().join("snapshots").join(&uid);
                        copy_tree(&src, &dst);
                        self.event(format!(
                            "snapshot {ns}/{name}: cut {} into {}",
                            src.display(),
                            dst.display()
                        ));
                        json!({"readyToUse": true, "restoreSize": "1Gi", "creationTime": now,
                               "boundVolumeSnapshotContentName": format!("snapcontent-{uid}")})
                    }
                };
                let patch = json!({"status": new_status});
                if let Err(e) =
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await
                {
                    self.event(format!("snapshot {ns}/{name}: status patch failed: {e}"));
                }
            }
        }
    }

    /// Cuts a VolumeGroupSnapshot the way the CSI snapshot controller does: one
    /// VolumeSnapshot per selected PVC, owned by the group, pre-bound to a
    /// VolumeSnapshotContent, and a VolumeGroupSnapshotContent listing (volume handle,
    /// snapshot handle) pairs. All members are copied in one pass of this loop.
    async fn group_snapshot_controller(&self) {
        let gar =
            volsnap::group_resource(GROUP_VERSION, "VolumeGroupSnapshot", "volumegroupsnapshots");
        let gcar = volsnap::group_resource(
            GROUP_VERSION,
            "VolumeGroupSnapshotContent",
            "volumegroupsnapshotcontents",
        );
        let car = kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(volsnap::GROUP, "v1", "VolumeSnapshotContent"),
            "volumesnapshotcontents",
        );
        let contents: Api<DynamicObject> = Api::all_with(self.client.clone(), &car);
        let group_contents: Api<DynamicObject> = Api::all_with(self.client.clone(), &gcar);
        for ns in &self.namespaces {
            let groups: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &gar);
            let Ok(list) = groups.list(&ListParams::default()).await else { continue };
            for g in list.items {
                if g.data["status"]["readyToUse"] == true {
                    continue;
                }
                let gname = g.metadata.name.clone().unwrap_or_default();
                let guid = g.metadata.uid.clone().unwrap_or_default();
                let selector: Vec<String> = g.data["spec"]["source"]["selector"]["matchLabels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
                let Ok(pvcs) =
                    claims.list(&ListParams::default().labels(&selector.join(","))).await
                else {
                    continue;
                };
                let snaps = volsnap::snapshots_api(&self.client, ns);
                let mut pairs = Vec::new();
                for pvc in pvcs.items {
                    let pname = pvc.metadata.name.clone().unwrap_or_default();
                    let Some(src) = self.backing_of_claim(ns, &pname).await else { continue };
                    let puid = pvc.metadata.uid.clone().unwrap_or_default();
                    let member = format!("snapshot-{}-{}", &guid[..8], &puid[..8]);
                    let content = format!("snapcontent-{}-{}", &guid[..8], &puid[..8]);
                    let handle = format!("snap-{guid}-{puid}");
                    let c = serde_json::from_value(json!({
                        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                        "metadata": {"name": content},
                        "spec": {"deletionPolicy": "Delete", "driver": self.driver,
                                 "source": {"snapshotHandle": handle},
                                 "volumeSnapshotRef": {"namespace": ns, "name": member}},
                    }))
                    .unwrap();
                    let _ = contents.create(&PostParams::default(), &c).await;
                    self.contents.lock().push((false, content.clone()));
                    let _ = contents
                        .patch_status(
                            &content,
                            &PatchParams::default(),
                            &Patch::Merge(
                                &json!({"status": {"snapshotHandle": handle, "readyToUse": true}}),
                            ),
                        )
                        .await;
                    let m = serde_json::from_value(json!({
                        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                        "metadata": {"name": member, "namespace": ns, "ownerReferences": [{
                            "apiVersion": format!("groupsnapshot.storage.k8s.io/{GROUP_VERSION}"),
                            "kind": "VolumeGroupSnapshot", "name": gname, "uid": guid}]},
                        "spec": {"source": {"volumeSnapshotContentName": content}},
                    }))
                    .unwrap();
                    let created = match snaps.create(&PostParams::default(), &m).await {
                        Ok(o) => o,
                        Err(_) => match snaps.get(&member).await {
                            Ok(o) => o,
                            Err(_) => continue,
                        },
                    };
                    let dst = self
                        .root
                        .path()
                        .join("snapshots")
                        .join(created.metadata.uid.unwrap_or_default());
                    copy_tree(&src, &dst);
                    let status = json!({"status": {"readyToUse": true, "restoreSize": "1Gi",
                        "boundVolumeSnapshotContentName": content, "volumeGroupSnapshotName": gname,
                        "creationTime": cairn_core::repo::now_rfc3339()}});
                    let _ = snaps
                        .patch_status(&member, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                    pairs.push(json!({"volumeHandle": src.to_str().unwrap(), "snapshotHandle": handle, "readyToUse": true}));
                }
                let content = format!("groupsnapcontent-{guid}");
                let gc = serde_json::from_value(json!({
                    "apiVersion": format!("groupsnapshot.storage.k8s.io/{GROUP_VERSION}"),
                    "kind": "VolumeGroupSnapshotContent",
                    "metadata": {"name": content},
                    "spec": {"deletionPolicy": "Delete", "driver": self.driver,
                             "source": {"volumeHandles": pairs.iter().map(|p| p["volumeHandle"].clone()).collect::<Vec<_>>()},
                             "volumeGroupSnapshotRef": {"namespace": ns, "name": gname}},
                }))
                .unwrap();
                self.contents.lock().push((true, content.clone()));
                if let Err(e) = group_contents.create(&PostParams::default(), &gc).await {
                    self.event(format!("group snapshot {ns}/{gname}: content failed: {e}"));
                    continue;
                }
                let _ = group_contents
                    .patch_status(&content, &PatchParams::default(), &Patch::Merge(&json!({"status": {"readyToUse": true, "volumeSnapshotInfoList": pairs}})))
                    .await;
                let status = json!({"status": {"readyToUse": true, "boundVolumeGroupSnapshotContentName": content,
                    "creationTime": cairn_core::repo::now_rfc3339()}});
                match groups
                    .patch_status(&gname, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                {
                    Ok(_) => self.event(format!(
                        "group snapshot {ns}/{gname}: cut {} volumes together ({})",
                        pairs.len(),
                        selector.join(",")
                    )),
                    Err(e) => {
                        self.event(format!("group snapshot {ns}/{gname}: status patch failed: {e}"))
                    }
                }
            }
        }
    }

    async fn provisioner(&self) {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for ns in &self.namespaces {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
            let Ok(list) = api.list(&ListParams::default()).await else { continue };
            for pvc in list.items {
                let spec = pvc.spec.clone().unwrap_or_default();
                if spec.storage_class_name.as_deref() != Some(&self.storage_class)
                    || spec.volume_name.is_some()
                    || pvc.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let uid = pvc.metadata.uid.clone().unwrap_or_default();
                let pv_name = format!("pv-{uid}");
                if pvs.get_opt(&pv_name).await.ok().flatten().is_some() {
                    continue;
                }
                let name = pvc.metadata.name.clone().unwrap_or_default();
                let block = spec.volume_mode.as_deref() == Some("Block");
                let backing = self.root.path().join("volumes").join(&uid);
                match &spec.data_source {
                    Some(ds) if ds.kind == "VolumeSnapshot" => {
                        let snaps = volsnap::snapshots_api(&self.client, ns);
                        let Ok(Some(snap)) = snaps.get_opt(&ds.name).await else { continue };
                        if snap.data["status"]["readyToUse"] != true {
                            continue;
                        }
                        let src = self
                            .root
                            .path()
                            .join("snapshots")
                            .join(snap.metadata.uid.unwrap_or_default());
                        copy_tree(&src, &backing);
                        self.event(format!(
                            "provisioner: {ns}/{name} cloned from snapshot {}",
                            ds.name
                        ));
                    }
                    _ if block => {
                        let f = std::fs::File::create(&backing).unwrap();
                        f.set_len(64 << 20).unwrap();
                    }
                    _ => std::fs::create_dir_all(&backing).unwrap(),
                }
                let storage = spec
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage"))
                    .map_or("1Gi".to_string(), |q| q.0.clone());
                let pv = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv_name},
                    "spec": {
                        "capacity": {"storage": storage},
                        "accessModes": spec.access_modes,
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": self.storage_class,
                        "volumeMode": if block { "Block" } else { "Filesystem" },
                        "csi": {"driver": self.driver, "volumeHandle": backing.to_str().unwrap()},
                        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                     "namespace": ns, "name": name, "uid": uid},
                    },
                }))
                .unwrap();
                match pvs.create(&PostParams::default(), &pv).await {
                    Ok(_) => self.event(format!("provisioner: PV {pv_name} for {ns}/{name}")),
                    Err(e) => self.event(format!("provisioner: PV for {ns}/{name} failed: {e}")),
                }
            }
        }
        // Released volumes of this driver go (reclaim policy Delete).
        let Ok(list) = pvs.list(&ListParams::default()).await else { return };
        for pv in list.items {
            let ours = pv
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .is_some_and(|c| c.driver == self.driver);
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            if ours && released {
                let name = pv.metadata.name.clone().unwrap_or_default();
                if let Some(path) =
                    pv.spec.and_then(|s| s.csi).map(|c| PathBuf::from(c.volume_handle))
                {
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
                let _ = pvs.delete(&name, &DeleteParams::default()).await;
                self.event(format!("provisioner: deleted released PV {name}"));
            }
        }
    }

    async fn kubelet(self: &Arc<Self>) {
        for ns in &self.namespaces {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let Ok(list) = pods.list(&ListParams::default()).await else { continue };
            for pod in list.items {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if phase != "Pending"
                    || pod.metadata.deletion_timestamp.is_some()
                    || self.started.lock().contains(&uid)
                {
                    continue;
                }
                self.started.lock().insert(uid);
                let me = self.clone();
                let ns = ns.clone();
                let task = tokio::spawn(async move { me.run_pod(&ns, pod).await });
                self.tasks.lock().push(task);
            }
        }
    }

    async fn run_pod(self: Arc<Self>, ns: &str, pod: Pod) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let c = spec.containers[0].clone();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let Some(mut resolver) = self.resolver(ns, &pods, &pod).await else { return };
        for from in c.env_from.iter().flatten() {
            let data = match (&from.secret_ref, &from.config_map_ref) {
                (Some(sr), _) => resolver.secret(&sr.name).await,
                (_, Some(cr)) => resolver.config_map(&cr.name).await,
                _ => None,
            };
            let Some(data) = data else {
                self.set_waiting(
                    &pods,
                    &name,
                    "CreateContainerConfigError",
                    "env source not found",
                )
                .await;
                self.started.lock().remove(pod.metadata.uid.as_deref().unwrap_or_default());
                return;
            };
            env.extend(data);
        }
        for e in c.env.iter().flatten() {
            let value = match e.value_from.as_ref() {
                Some(vf) => match (&vf.secret_key_ref, &vf.config_map_key_ref) {
                    (Some(k), _) => {
                        resolver.secret(&k.name).await.and_then(|d| d.get(&k.key).cloned())
                    }
                    (_, Some(k)) => {
                        resolver.config_map(&k.name).await.and_then(|d| d.get(&k.key).cloned())
                    }
                    _ => None,
                },
                None => e.value.clone(),
            };
            env.insert(e.name.clone(), value.unwrap_or_default());
        }
        let key = env.get("CAIRN_PVC").cloned().unwrap_or_else(|| {
            let claim =
                spec.volumes.iter().flatten().find_map(|v| v.persistent_volume_claim.clone());
            format!("{ns}/{}", claim.map(|c| c.claim_name).unwrap_or_default())
        });
        let behaviour = self.pod_behaviour.lock().get(&key).cloned().unwrap_or(PodBehaviour::Run);
        match behaviour {
            PodBehaviour::ImagePullFails => {
                self.event(format!("kubelet: {ns}/{name}: image pull fails"));
                let msg = format!(
                    "failed to pull image {:?}: pull access denied",
                    c.image.unwrap_or_default()
                );
                self.set_waiting(&pods, &name, "ErrImagePull", &msg).await;
                return;
            }
            PodBehaviour::RunAfter(d) => {
                self.event(format!("kubelet: {ns}/{name}: starting in {d:?}"));
                tokio::time::sleep(d).await;
            }
            PodBehaviour::Run => {}
        }
        // Volumes: a claim is the directory backing its PV; a Secret or ConfigMap is written
        // to files; the service account token is projected as the kubelet does.
        let dir = self.root.path().join("pods").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        let mut binds: Vec<(PathBuf, String, bool)> = Vec::new();
        let mounts = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only.unwrap_or(false)))
            .chain(
                c.volume_devices
                    .iter()
                    .flatten()
                    .map(|d| (d.name.clone(), d.device_path.clone(), false)),
            );
        for (vname, path, ro) in mounts {
            let vol =
                spec.volumes.iter().flatten().find(|v| v.name == vname).expect("volume of a mount");
            let source = if let Some(claim) = &vol.persistent_volume_claim {
                let mut backing = None;
                for _ in 0..120 {
                    backing = self.backing_of_claim(ns, &claim.claim_name).await;
                    if backing.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let Some(backing) = backing else {
                    self.set_waiting(&pods, &name, "ContainerCreating", "volume not bound").await;
                    return;
                };
                binds.push((backing, path, ro || claim.read_only.unwrap_or(false)));
                continue;
            } else if let Some(sv) = &vol.secret {
                resolver
                    .secret(sv.secret_name.as_deref().unwrap_or_default())
                    .await
                    .map(|d| (d, sv.default_mode))
            } else if let Some(cv) = &vol.config_map {
                resolver.config_map(&cv.name).await.map(|d| (d, cv.default_mode))
            } else if vol.projected.as_ref().is_some_and(|p| {
                p.sources.iter().flatten().any(|s| s.service_account_token.is_some())
            }) {
                // What the ServiceAccount admission plugin adds (kube-api-access-*).
                let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
                let ca = Path::new(&crate::env("CAIRN_TESTENV_STATE")).join("pki/kube-ca.crt");
                let data = BTreeMap::from([
                    ("token".to_string(), kubectl_token(ns, &sa)),
                    ("ca.crt".to_string(), std::fs::read_to_string(ca).unwrap()),
                    ("namespace".to_string(), ns.to_string()),
                ]);
                let server = url::Url::parse(&kube_server()).unwrap();
                env.insert("KUBERNETES_SERVICE_HOST".into(), server.host_str().unwrap().into());
                env.insert("KUBERNETES_SERVICE_PORT".into(), server.port().unwrap().to_string());
                Some((data, Some(0o644)))
            } else {
                panic!("the fake kubelet plays PVC, Secret and ConfigMap volumes only: {vname}")
            };
            let Some((data, mode)) = source else {
                self.set_waiting(
                    &pods,
                    &name,
                    "ContainerCreating",
                    &format!("volume {vname} source not found"),
                )
                .await;
                return;
            };
            let vdir = dir.join("volumes").join(&vname);
            write_files(&vdir, &data, mode.unwrap_or(0o644), fs_group);
            binds.push((vdir, path, true));
        }
        for (_, path, _) in &binds {
            assert!(
                POD_ROOTS.iter().any(|r| path.starts_with(&format!("{r}/"))),
                "the fake kubelet mounts only under {POD_ROOTS:?}: {path}"
            );
        }
        // The termination message file, where the pod can have one (the default path under
        // /dev is not played: such a pod reports nothing but its exit code).
        let term_path = c.termination_message_path.clone().unwrap_or("/dev/termination-log".into());
        let host_term = dir.join("termination-log");
        std::fs::write(&host_term, b"").unwrap();
        let bind_term = POD_ROOTS.iter().any(|r| term_path.starts_with(&format!("{r}/")));
        let log_path = dir.join("log");
        let mut script = String::from("set -e\n");
        for root in POD_ROOTS {
            script.push_str(&format!("mount -t tmpfs tmpfs '{root}'\n"));
        }
        for (src, dst, ro) in &binds {
            if src.is_dir() {
                script.push_str(&format!("mkdir -p '{dst}'\n"));
            } else {
                script.push_str(&format!("touch '{dst}'\n"));
            }
            script.push_str(&format!("mount --bind '{}' '{dst}'\n", src.display()));
            if *ro {
                script.push_str(&format!("mount -o remount,bind,ro '{dst}'\n"));
            }
        }
        if bind_term {
            script.push_str(&format!(
                "touch '{term_path}'\nmount --bind '{}' '{term_path}'\n",
                host_term.display()
            ));
        }
        // The pod's user and exactly the capabilities it adds.
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.unwrap_or(0);
        let gid = sc.run_as_group.unwrap_or(uid);
        let caps: Vec<String> = sc
            .capabilities
            .and_then(|c| c.add)
            .unwrap_or_default()
            .iter()
            .map(|c| format!("+{}", c.to_ascii_lowercase()))
            .collect();
        let bounding =
            if caps.is_empty() { "-all".to_string() } else { format!("-all,{}", caps.join(",")) };
        let groups = match fs_group {
            Some(g) => format!("--groups {g}"),
            None => "--clear-groups".into(),
        };
        // The image's entry point is the binary named like the image (`cairn-restore:tag`
        // runs `cairn-restore`), as in images/; a command overrides it.
        let image = c.image.clone().unwrap_or_default();
        let entry = image
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut command = c.command.clone().unwrap_or_default();
        if command.is_empty() {
            command.push(entry);
        }
        let exe =
            crate::workspace_bin(Path::new(&command[0]).file_name().unwrap().to_str().unwrap());
        let mut argv = vec![format!("'{}'", exe.display())];
        argv.extend(
            command[1..]
                .iter()
                .chain(c.args.iter().flatten())
                .map(|a| format!("'{}'", a.replace('\'', "'\\''"))),
        );
        script.push_str(&format!(
            "exec setpriv --reuid {uid} --regid {gid} {groups} --inh-caps -all --bounding-set {bounding} -- {}\n",
            argv.join(" ")
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", &script]);
        cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin").env("HOME", "/tmp");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let started_at = cairn_core::repo::now_rfc3339();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.set_waiting(&pods, &name, "CreateContainerError", &e.to_string()).await;
                return;
            }
        };
        self.event(format!(
            "kubelet: {ns}/{name}: running {} as uid {uid} caps [{}]",
            command.join(" "),
            caps.join(",")
        ));
        let running = json!({"status": {"phase": "Running", "startTime": started_at,
            "containerStatuses": [{"name": c.name, "ready": true, "restartCount": 0, "image": c.image, "imageID": "",
                "state": {"running": {"startedAt": started_at}}}]}});
        let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running)).await;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            let gone = match pods.get_opt(&name).await {
                Ok(Some(p)) => p.metadata.deletion_timestamp.is_some(),
                Ok(None) => true,
                Err(_) => false,
            };
            if gone {
                let _ = child.kill();
                let _ = child.wait();
                self.event(format!("kubelet: {ns}/{name}: pod deleted, process killed"));
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(status) = status else { return };
        let code = status.code().unwrap_or(137);
        let mut message = std::fs::read_to_string(&host_term).unwrap_or_default();
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if message.trim().is_empty() && code != 0 {
            let tail: String =
                log_text.chars().rev().take(2048).collect::<Vec<_>>().into_iter().rev().collect();
            message = tail;
        }
        self.event(format!("kubelet: {ns}/{name}: exited {code}"));
        if code != 0 {
            eprintln!("[fake-csi] log of {ns}/{name}:\n{log_text}");
        }
        let finished = cairn_core::repo::now_rfc3339();
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let done = json!({"status": {"phase": phase,
            "containerStatuses": [{"name": c.name, "ready": false, "restartCount": 0, "image": c.image, "imageID": "",
                "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                    "message": message, "startedAt": started_at, "finishedAt": finished}}}]}});
        if let Err(e) =
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&done)).await
        {
            self.event(format!("kubelet: {ns}/{name}: status patch failed: {e}"));
        }
    }

    async fn set_waiting(&self, pods: &Api<Pod>, name: &str, reason: &str, message: &str) {
        let patch = json!({"status": {"phase": "Pending",
            "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}}}]}});
        let _ = pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
    }

    /// Stop the loops and remove the cluster-scoped objects this fake made.
    pub async fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let classes: Api<k8s_openapi::api::storage::v1::StorageClass> =
            Api::all(self.client.clone());
        let _ = classes.delete(&self.storage_class, &DeleteParams::default()).await;
        let vsc: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &volsnap::class_resource());
        let _ = vsc.delete(&self.snapshot_class, &DeleteParams::default()).await;
    }
}

/// The group snapshot API version the fixture CRDs serve (and the API server prefers).
pub const GROUP_VERSION: &str = "v1";

/// Where pods may mount things: the fake kubelet lays a tmpfs over each in the pod's private
/// mount namespace (they are empty directories on the host).
pub const POD_ROOTS: [&str; 3] = ["/cairn", "/var/run/cairn", "/var/run/secrets/kubernetes.io"];

/// Looks up (and caches) the Secrets and ConfigMaps a pod refers to.
struct Resolver {
    client: kube::Client,
    ns: String,
    cache: HashMap<(bool, String), Option<BTreeMap<String, String>>>,
}

impl Resolver {
    async fn secret(&mut self, name: &str) -> Option<BTreeMap<String, String>> {
        let key = (true, name.to_string());
        if !self.cache.contains_key(&key) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
            let v = api.get_opt(name).await.ok().flatten().map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            self.cache.insert(key.clone(), v);
        }
        self.cache[&key].clone()
    }

    async fn config_map(&mut self, name: &str) -> Option<BTreeMap<String, String>> {
        let key = (false, name.to_string());
        if !self.cache.contains_key(&key) {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(self.client.clone(), &self.ns);
            let v = api.get_opt(name).await.ok().flatten().map(|c| c.data.unwrap_or_default());
            self.cache.insert(key.clone(), v);
        }
        self.cache[&key].clone()
    }
}

impl FakeCsi {
    async fn resolver(&self, ns: &str, _pods: &Api<Pod>, _pod: &Pod) -> Option<Resolver> {
        Some(Resolver { client: self.client.clone(), ns: ns.to_string(), cache: HashMap::new() })
    }
}

/// Files of a Secret or ConfigMap volume, with its mode, group-owned by fsGroup.
fn write_files(dir: &Path, data: &BTreeMap<String, String>, mode: i32, fs_group: Option<i64>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in data {
        let p = dir.join(k);
        std::fs::write(&p, v).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode as u32)).unwrap();
        if let Some(g) = fs_group {
            std::os::unix::fs::chown(&p, None, Some(g as u32)).unwrap();
        }
    }
}

/// The API server's URL, from the admin kubeconfig.
fn kube_server() -> String {
    let text = std::fs::read_to_string(crate::env("KUBECONFIG")).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("server:")).unwrap();
    line.trim_start().trim_start_matches("server:").trim().to_string()
}

/// A token of a ServiceAccount (the kubelet's projected token).
fn kubectl_token(ns: &str, sa: &str) -> String {
    crate::manifests::kubectl(
        &crate::env("KUBECONFIG"),
        &["create", "token", sa, "-n", ns, "--duration=1h"],
        None,
    )
    .trim()
    .to_string()
}

/// Copy a directory (or a block volume's file) keeping everything cairn records: modes,
/// owners, times, xattrs, hard links, holes. This is the "snapshot".
pub fn copy_tree(src: &Path, dst: &Path) {
    let status = if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(format!("{}/.", src.display()))
            .arg(dst)
            .status()
    } else {
        Command::new("cp").args(["-a", "--sparse=always"]).arg(src).arg(dst).status()
    };
    assert!(status.unwrap().success(), "cp -a {} {}", src.display(), dst.display());
}
