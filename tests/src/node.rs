//! The test world's real node (`tests/env/node.sh`): PVCs provisioned by the real
//! external-provisioner on our hostpath CSI driver (`tests/node/cmd/csi-hostpath`), whose
//! volumes the tests fill and read on the host, where the driver keeps them, and the
//! driver's fault switches (a snapshot that fails, one that is never ready).
//!
//! Everything above the CSI API is the real thing: the provisioner, the snapshot-controller,
//! the csi-snapshotter, the PV controller, the scheduler, the kubelet and containerd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::env;

/// The node's default StorageClass, VolumeSnapshotClass and VolumeGroupSnapshotClass.
pub const STORAGE_CLASS: &str = "cairn-hostpath";
pub const SNAPSHOT_CLASS: &str = "cairn-hostpath";
pub const GROUP_SNAPSHOT_CLASS: &str = "cairn-hostpath";
/// Size of the Block PVCs tests create (the driver backs them with a sparse file).
pub const BLOCK_SIZE: u64 = 64 << 20;

/// Where the driver keeps its volumes, snapshots and fault switches.
pub fn csi_state() -> PathBuf {
    PathBuf::from(env("CAIRN_TEST_CSI_STATE"))
}

/// Create a PVC on the node's StorageClass and wait until the provisioner has bound it; the
/// host path of its volume (a directory, or the image file of a Block volume).
pub async fn create_pvc(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    block: bool,
) -> PathBuf {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    let pvc = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {
            "storageClassName": STORAGE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": if block { "Block" } else { "Filesystem" },
            "resources": {"requests": {"storage": if block { "64Mi" } else { "1Gi" }}},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &pvc).await.unwrap();
    wait_bound(client, ns, name).await
}

/// Wait until a PVC is bound (by the real provisioner and PV controller); the host path of
/// its volume.
pub async fn wait_bound(client: &kube::Client, ns: &str, name: &str) -> PathBuf {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pvc = api.get(name).await.unwrap();
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            let block = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
            let handle = handle_of_pv(client, &pvc.spec.unwrap().volume_name.unwrap()).await;
            return volume_path(&handle, block);
        }
        assert!(Instant::now() < deadline, "PVC {ns}/{name} not bound within 120 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The CSI volume handle of a bound PVC.
pub async fn volume_handle(client: &kube::Client, ns: &str, name: &str) -> String {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).get(name).await.unwrap();
    handle_of_pv(client, &pvc.spec.unwrap().volume_name.expect("a bound PVC")).await
}

async fn handle_of_pv(client: &kube::Client, pv: &str) -> String {
    let pv = Api::<PersistentVolume>::all(client.clone()).get(pv).await.unwrap();
    let csi = pv.spec.and_then(|s| s.csi).expect("a CSI volume");
    assert_eq!(csi.driver, env("CAIRN_TEST_CSI_DRIVER"), "a volume of the node's driver");
    csi.volume_handle
}

/// The driver's layout: `volumes/<handle>` (Filesystem) or `volumes/<handle>.img` (Block).
pub fn volume_path(handle: &str, block: bool) -> PathBuf {
    let dir = csi_state().join("volumes");
    if block { dir.join(format!("{handle}.img")) } else { dir.join(handle) }
}

/// The driver fails every snapshot of this PVC's volume with `message`.
pub async fn fail_snapshots(client: &kube::Client, ns: &str, pvc: &str, message: &str) {
    switch(client, ns, pvc, "fail-snapshot", message).await;
}

/// The driver cuts snapshots of this PVC's volume but never reports them ready.
pub async fn snapshots_never_ready(client: &kube::Client, ns: &str, pvc: &str) {
    switch(client, ns, pvc, "snapshot-never-ready", "").await;
}

async fn switch(client: &kube::Client, ns: &str, pvc: &str, name: &str, contents: &str) {
    let dir = csi_state().join("control").join(volume_handle(client, ns, pvc).await);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), contents).unwrap();
}

/// The driver refuses to publish (mount) volumes for pods of namespace `ns` (Unavailable,
/// which the kubelet retries), so their pods stay in ContainerCreating.
pub fn block_publish(ns: &str) {
    let dir = csi_state().join("control/publish-blocked");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(ns), "").unwrap();
}

pub fn unblock_publish(ns: &str) {
    let _ = std::fs::remove_file(csi_state().join("control/publish-blocked").join(ns));
}

/// What the driver logged (one line per CSI call), to count what it was asked to do.
pub fn driver_log() -> String {
    let path = Path::new(&env("CAIRN_TESTENV_STATE")).join("logs/csi-hostpath.log");
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A pod of the test workload image (`tests/env/node.sh`: Debian's sqlite3 and a static
/// busybox as /bin/sh) running `script`, with `claim` mounted at /data when given; waits
/// until it runs.
pub async fn workload_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    claim: Option<&str>,
    annotations: &[(&str, &str)],
    script: &str,
) {
    use k8s_openapi::api::core::v1::Pod;
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    let (volumes, mounts) = match claim {
        Some(c) => (
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": c}}]),
            json!([{"name": "data", "mountPath": "/data"}]),
        ),
        None => (json!([]), json!([])),
    };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}, "annotations": annotations},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 0},
            "volumes": volumes,
            "containers": [{
                "name": "app",
                "image": env("CAIRN_TEST_WORKLOAD_IMAGE"),
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": mounts,
                "resources": {"requests": {"cpu": "10m"}},
            }],
        },
    }))
    .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = api.get(name).await.unwrap();
        let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phase == "Running" {
            return;
        }
        assert!(
            Instant::now() < deadline && phase != "Failed",
            "pod {ns}/{name} not running within 120 s: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The workload's database: sqlite3 holds `/data/app.db` open for the pod's life (WAL mode,
/// statements through a FIFO), first filled with `rows` rows of 120 hex characters, then a
/// row every 200 ms. While `/tmp/freeze` exists it writes nothing: on seeing it, it
/// checkpoints the WAL into the database (TRUNCATE) and touches `/tmp/frozen` once sqlite3
/// has done so. `/data/ready` appears once the first rows are in.
pub fn database_script(rows: u64) -> String {
    format!(
        r#"set -e
mkfifo /tmp/sql
sqlite3 /data/app.db < /tmp/sql > /tmp/sqlite.out 2>&1 &
exec 3>/tmp/sql
echo "PRAGMA journal_mode=WAL;" >&3
echo "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);" >&3
echo "INSERT INTO t(v) SELECT hex(randomblob(60)) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<{rows}) SELECT i FROM c);" >&3
echo ".shell touch /data/ready" >&3
set +e
state=running
while true; do
  if [ -e /tmp/freeze ]; then
    if [ $state = running ]; then
      echo "PRAGMA wal_checkpoint(TRUNCATE);" >&3
      echo ".shell touch /tmp/frozen" >&3
      state=frozen
    fi
  else
    if [ $state = frozen ]; then rm -f /tmp/frozen; state=running; fi
    echo "INSERT INTO t(v) VALUES('tick ' || strftime('%s','now'));" >&3
  fi
  sleep 0.2
done
"#
    )
}

/// Wait until `path` (on the host, in a volume) exists.
pub async fn wait_file(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {within:?}", path.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
