//! PVC backup and restore against the real kube-apiserver and kube-controller-manager (PV
//! binding, Job controller, garbage collector) with the CSI snapshot CRDs installed, and the
//! real S3 server as the repository. The snapshot controller, provisioner and kubelet are
//! played by `cairn_tests::csi::FakeCsi` (see there): the ingest and writer pods run the
//! real binaries on the directories backing their volumes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_tests::csi::{FakeCsi, PodBehaviour, SnapshotBehaviour};
use cairn_tests::manifests::{install_crds, kubectl, token_kubeconfig};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{self, TreeSpec};
use cairn_tests::{env, kube_world, unique, workspace_bin};
use serde_json::Value;

fn s3_repo_url() -> String {
    format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("pvcrepo"))
}

fn small_tree(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        depth: 2,
        max_entries: 6,
        max_file: 256 << 10,
        sparse_size: 8 << 20,
        wide: 0,
        deep: 0,
    }
}

/// The orchestrator as a process, as the CronJob runs it.
fn orchestrator(
    repo: &TestRepo,
    kubeconfig: &str,
    namespaces: &[&str],
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(workspace_bin("cairn-pvc-ingest"));
    cmd.args(["run", "--json", "--kubeconfig", kubeconfig, "--poll", "300ms"])
        .arg("--namespace")
        .arg(namespaces.join(","))
        .args(extra)
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_WRITE_KEY", repo.write_key.to_text())
        .env("CAIRN_INGEST_IMAGE", "cairn-pvc-ingest:test")
        .env("CAIRN_CLUSTER", "test")
        .env("CAIRN_LOG_FORMAT", "human")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// `cairn-restore pvc` as a process, as a restore Job runs it.
fn restore_pvc(
    repo: &TestRepo,
    kc: &str,
    source: &str,
    target: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(workspace_bin("cairn-restore"));
    cmd.args([
        "--json",
        "pvc",
        "--kubeconfig",
        kc,
        "--poll",
        "300ms",
        "--source",
        source,
        "--target-name",
        target,
    ])
    .args(extra)
    .env("CAIRN_REPO", &repo.url)
    .env("CAIRN_IDENTITY", repo.identity_text())
    .env("CAIRN_WRITER_IMAGE", "cairn-restore:test")
    .kill_on_drop(true);
    cmd
}

async fn run_json(mut cmd: tokio::process::Command) -> (i32, Value) {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("run within 5 min")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {text}"));
    // One line per PVC in the test log: what each took.
    for r in v["pvcs"].as_array().into_iter().flatten() {
        eprintln!(
            "[pvc] {} ok={} {} ms, {} files, {} bytes ({} read, {} new)",
            r["pvc"],
            r["ok"],
            r["duration_ms"],
            r["files"],
            r["bytes"],
            r["files_read"],
            r["new_bytes"]
        );
    }
    (out.status.code().unwrap_or(-1), v)
}

fn pvc_result<'a>(summary: &'a Value, key: &str) -> &'a Value {
    summary["pvcs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pvc"] == key)
        .unwrap_or_else(|| panic!("no result for {key} in {summary:#}"))
}

/// Temporary objects cairn made in `ns` that still exist (the garbage collector gets a
/// moment to take what a deleted Job owned).
async fn leftovers(ns: &str) -> Vec<String> {
    let kc = env("KUBECONFIG");
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let out = kubectl(
            &kc,
            &[
                "get",
                "jobs,pods,pvc,secrets,volumesnapshots,volumegroupsnapshots",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/managed-by=cairn",
                "-o",
                "name",
            ],
            None,
        );
        let left: Vec<String> = out.lines().map(String::from).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A ServiceAccount in `ns` bound to the PVC ingest ClusterRoles shipped in
/// `k8s-manifests/base`, and a kubeconfig holding its token.
fn shipped_rbac_kubeconfig(ns: &str, dir: &Path) -> String {
    let kc = env("KUBECONFIG");
    let suffix = &ns[ns.len() - 8..];
    let rbac = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests/base/rbac-pvc-ingest.yaml"),
    )
    .unwrap()
    .replace(
        "name: cairn-pvc-ingest-cluster-reads",
        &format!("name: cairn-pvc-ingest-cluster-reads-{suffix}"),
    )
    .replace("name: cairn-pvc-ingest\n", &format!("name: cairn-pvc-ingest-{suffix}\n"))
    .replace("namespace: cairn\n", &format!("namespace: {ns}\n"));
    let sa = format!("cairn-pvc-ingest-{suffix}");
    kubectl(&kc, &["create", "serviceaccount", &sa, "-n", ns], None);
    kubectl(&kc, &["apply", "-f", "-"], Some(&rbac));
    let who = format!("system:serviceaccount:{ns}:{sa}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(cairn_tests::bin("kubectl"))
            .args([
                "--kubeconfig",
                &kc,
                "auth",
                "can-i",
                "--as",
                &who,
                "create",
                "volumesnapshots.snapshot.storage.k8s.io",
                "-A",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "yes" {
            break;
        }
        assert!(Instant::now() < deadline, "the shipped ClusterRoleBinding never took effect");
        std::thread::sleep(Duration::from_millis(300));
    }
    token_kubeconfig(ns, &sa, dir)
}

fn delete_namespaces(namespaces: &[&str]) {
    let mut args = vec!["delete", "namespace", "--wait=false", "--ignore-not-found"];
    args.extend(namespaces);
    kubectl(&env("KUBECONFIG"), &args, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pvcs_back_up_incrementally_with_shipped_rbac_and_restore_byte_exact() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let (ns_a, ns_b) = (unique("pvca"), unique("pvcb"));
    for ns in [&ns_a, &ns_b] {
        kubectl(&kc, &["create", "namespace", ns], None);
    }
    let csi = FakeCsi::start(kube_world::admin().await, &[ns_a.clone(), ns_b.clone()]).await;
    let mut dirs = BTreeMap::new();
    for (i, (ns, name)) in
        [(&ns_a, "data1"), (&ns_a, "data2"), (&ns_b, "data3")].into_iter().enumerate()
    {
        let dir = csi.create_pvc(ns, name, &[("app", "db")], &[], false).await;
        trees::generate(&dir, &small_tree(i as u64 + 11));
        dirs.insert(format!("{ns}/{name}"), dir);
    }
    csi.create_pvc(&ns_b, "scratch", &[], &[("backup.cairn.dev/enabled", "false")], false).await;
    let repo = repos::init(&s3_repo_url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let sa_kc = shipped_rbac_kubeconfig(&ns_a, tmp.path());

    // First run, with nothing but the shipped RBAC.
    let (code, s) = run_json(orchestrator(&repo, &sa_kc, &[&ns_a, &ns_b], &[])).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["succeeded"], 3, "{s:#}");
    assert!(s["skipped"].to_string().contains("scratch"), "the opted-out PVC is skipped: {s:#}");
    let full = repo.open_full().await;
    for (key, dir) in &dirs {
        let r = pvc_result(&s, key);
        assert_eq!(r["ok"], true, "{r:#}");
        assert_eq!(r["volume_snapshot_class"], csi.snapshot_class.as_str());
        assert!(r["files_read"].as_u64().unwrap() > 0);
        let snap = full.find_snapshot(r["snapshot"].as_str().unwrap(), None).await.unwrap();
        assert_eq!(snap.snapshot.source, format!("pvc/{key}"));
        assert_eq!(snap.snapshot.cluster.as_deref(), Some("test"));
        let meta = &snap.snapshot.meta;
        assert_eq!(meta["pvc"]["storageClassName"], csi.storage_class.as_str(), "{meta:#}");
        assert_eq!(meta["pvc"]["labels"]["app"], "db");
        assert_eq!(meta["volumeSnapshot"]["class"], csi.snapshot_class.as_str());
        assert_eq!(
            snap.snapshot.summary.files as usize,
            trees::digest(dir).values().filter(|v| v.starts_with("file")).count()
        );
    }
    for ns in [&ns_a, &ns_b] {
        assert_eq!(leftovers(ns).await, Vec::<String>::new(), "temporary objects left in {ns}");
    }

    // Second run after changing one volume: only that volume's changed files are read.
    let changed = trees::mutate(&dirs[&format!("{ns_a}/data1")], 5);
    assert!(changed > 0);
    let (code, s2) = run_json(orchestrator(&repo, &sa_kc, &[&ns_a, &ns_b], &[])).await;
    assert_eq!(code, 0, "{s2:#}");
    let r1 = pvc_result(&s2, &format!("{ns_a}/data1"));
    assert!(
        r1["files_read"].as_u64().unwrap() > 0
            && r1["files_read"].as_u64().unwrap() < r1["files"].as_u64().unwrap(),
        "{r1:#}"
    );
    for key in [format!("{ns_a}/data2"), format!("{ns_b}/data3")] {
        let r = pvc_result(&s2, &key);
        assert_eq!(r["files_read"], 0, "an unchanged volume is not read again: {r:#}");
        assert!(r["new_bytes"].as_u64().unwrap() < 64 << 10, "{r:#}");
    }

    // Restore the changed volume's latest snapshot into a new PVC, byte-exact.
    let out = restore_pvc(&repo, &kc, &format!("pvc/{ns_a}/data1"), "data1-restored", &[])
        .output()
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["created_pvc"], true);
    let restored = csi.wait_bound(&ns_a, "data1-restored").await;
    trees::assert_same_tree(&dirs[&format!("{ns_a}/data1")], &restored);
    assert_eq!(leftovers(&ns_a).await, Vec::<String>::new());

    // Into the same PVC again: refused unless asked to overwrite.
    let source2 = format!("pvc/{ns_a}/data2");
    let again = |existing: &'static str| {
        restore_pvc(
            &repo,
            &kc,
            &source2,
            "data1-restored",
            &["--target-namespace", &ns_a, "--existing", existing],
        )
    };
    let refused = again("fail").output().await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stdout));
    let over = again("overwrite").output().await.unwrap();
    assert_eq!(over.status.code(), Some(0), "{}", String::from_utf8_lossy(&over.stdout));
    trees::assert_same_tree(&dirs[&format!("{ns_a}/data2")], &restored);

    // A subtree (`--path`) into a new PVC: its contents land at the volume's root
    // (regression: the restore failed with "blob … is in no index" before any pod ran).
    let src2 = &dirs[&format!("{ns_a}/data2")];
    let sub = std::fs::read_dir(src2)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .min()
        .expect("the generated tree has a directory");
    let out = restore_pvc(
        &repo,
        &kc,
        &source2,
        "data2-sub",
        &["--target-namespace", &ns_a, "--path", &sub, "--size", "1Gi"],
    )
    .output()
    .await
    .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{r:#} {}", String::from_utf8_lossy(&out.stderr));
    let restored_sub = csi.wait_bound(&ns_a, "data2-sub").await;
    trees::assert_same_tree(&src2.join(&sub), &restored_sub);
    assert_eq!(leftovers(&ns_a).await, Vec::<String>::new());

    csi.stop().await;
    delete_namespaces(&[&ns_a, &ns_b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_pvcs_are_reported_and_leave_nothing_behind() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcf");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let csi = FakeCsi::start(kube_world::admin().await, std::slice::from_ref(&ns)).await;
    for name in ["good", "snaperr", "never", "pullfail"] {
        let dir = csi.create_pvc(&ns, name, &[], &[], false).await;
        std::fs::write(dir.join("f"), name).unwrap();
    }
    csi.set_snapshot_behaviour(
        &ns,
        "snaperr",
        SnapshotBehaviour::Error("driver: snapshot quota exceeded".into()),
    );
    csi.set_snapshot_behaviour(&ns, "never", SnapshotBehaviour::Never);
    csi.set_pod_behaviour(&ns, "pullfail", PodBehaviour::ImagePullFails);
    let repo = repos::init(&s3_repo_url()).await;
    let extra = ["--snapshot-timeout", "4s", "--parallel", "4"];
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &extra)).await;
    assert_eq!(code, 3, "some PVCs failed, one is saved: {s:#}");
    assert_eq!(s["succeeded"], 1);
    assert_eq!(s["failed"], 3);
    assert_eq!(pvc_result(&s, &format!("{ns}/good"))["ok"], true);
    let err = |name: &str| {
        pvc_result(&s, &format!("{ns}/{name}"))["error"].as_str().unwrap_or_default().to_string()
    };
    assert!(err("snaperr").contains("snapshot quota exceeded"), "{}", err("snaperr"));
    assert!(err("never").contains("not ready within 4s"), "{}", err("never"));
    assert!(err("pullfail").contains("ErrImagePull"), "{}", err("pullfail"));
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());
    // The failed PVCs have no snapshot; the good one has.
    let snaps = repo.open_full().await.snapshots().await.unwrap();
    let sources: Vec<&str> = snaps.iter().map(|e| e.snapshot.source.as_str()).collect();
    assert_eq!(sources, vec![format!("pvc/{ns}/good").as_str()]);
    csi.stop().await;
    delete_namespaces(&[&ns]);
}

/// Wait until an ingest Job of this run exists in `ns`.
async fn wait_for_job(ns: &str) {
    let kc = env("KUBECONFIG");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            &kc,
            &["get", "jobs", "-n", ns, "-l", "app.kubernetes.io/managed-by=cairn", "-o", "name"],
            None,
        );
        if !out.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "no ingest Job appeared in {ns}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_or_killed_orchestrator_leaks_nothing_and_the_rerun_restores_exactly() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvck");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let csi = FakeCsi::start(kube_world::admin().await, std::slice::from_ref(&ns)).await;
    let dir = csi.create_pvc(&ns, "vol", &[], &[], false).await;
    trees::generate(&dir, &small_tree(21));
    csi.set_pod_behaviour(&ns, "vol", PodBehaviour::RunAfter(Duration::from_secs(600)));
    let repo = repos::init(&s3_repo_url()).await;
    let lease = ["--lock-lease", "3s", "--lock-wait", "30s"];

    // SIGTERM mid-Job: the orchestrator deletes what it made before it exits.
    let mut child = orchestrator(&repo, &kc, &[&ns], &lease).spawn().unwrap();
    wait_for_job(&ns).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(120), child.wait()).await.unwrap().unwrap();
    assert_ne!(status.code(), Some(0));
    assert_eq!(leftovers(&ns).await, Vec::<String>::new(), "a cancelled run cleans up");

    // SIGKILL mid-Job: its objects stay behind, labelled...
    let mut child = orchestrator(&repo, &kc, &[&ns], &lease).spawn().unwrap();
    wait_for_job(&ns).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let left = kubectl(
        &kc,
        &[
            "get",
            "jobs,pvc,volumesnapshots",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/managed-by=cairn",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        left.contains("job") && left.contains("volumesnapshot"),
        "a killed run leaves its objects: {left}"
    );

    // ...and the next run (waiting out the dead run's lock) sweeps them and succeeds.
    csi.set_pod_behaviour(&ns, "vol", PodBehaviour::Run);
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &lease)).await;
    assert_eq!(code, 0, "{s:#}");
    let swept = s["swept"]["objects"].to_string();
    assert!(swept.contains("Job") && swept.contains("VolumeSnapshot"), "{s:#}");
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());

    // The data restores byte-exact into a new PVC.
    let out =
        restore_pvc(&repo, &kc, &format!("pvc/{ns}/vol"), "vol-copy", &[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let restored = csi.wait_bound(&ns, "vol-copy").await;
    trees::assert_same_tree(&dir, &restored);
    csi.stop().await;
    delete_namespaces(&[&ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_volumes_round_trip_and_live_mode_reads_the_live_volume() {
    use std::io::{Seek, SeekFrom, Write};
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcblk");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let csi = FakeCsi::start(kube_world::admin().await, std::slice::from_ref(&ns)).await;
    let disk = csi.create_pvc(&ns, "disk", &[("kind", "block")], &[], true).await;
    {
        // A raw device with data in two places and holes elsewhere.
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        let data: Vec<u8> =
            (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&data[..1 << 20]).unwrap();
    }
    let live = csi.create_pvc(&ns, "app", &[("kind", "live")], &[], false).await;
    trees::generate(&live, &small_tree(31));
    let repo = repos::init(&s3_repo_url()).await;

    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &["-l", "kind=block"])).await;
    assert_eq!(code, 0, "{s:#}");
    let r = pvc_result(&s, &format!("{ns}/disk"));
    assert_eq!(r["files"], 1, "a block volume is one file: {r:#}");
    assert_eq!(r["bytes"], 64 << 20);
    let full = repo.open_full().await;
    let snap = full.find_snapshot(r["snapshot"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(snap.snapshot.meta["pvc"]["volumeMode"], "Block");
    full.load_index().await.unwrap();
    full.lookup(&snap.snapshot, "volume.img").await.expect("volume.img in the snapshot");

    let (code, s) =
        run_json(orchestrator(&repo, &kc, &[&ns], &["-l", "kind=live", "--mode", "live"])).await;
    assert_eq!(code, 0, "{s:#}");
    let r = pvc_result(&s, &format!("{ns}/app"));
    let snap = full.find_snapshot(r["snapshot"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(snap.snapshot.meta["mode"], "live");
    assert!(snap.snapshot.meta["consistency"].as_str().unwrap().starts_with("none"));
    assert!(
        kubectl(&kc, &["get", "volumesnapshots", "-n", &ns, "-o", "name"], None).trim().is_empty(),
        "live mode cuts no snapshot"
    );
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());

    // The block snapshot restores into a new block PVC, byte for byte.
    let out = restore_pvc(&repo, &kc, &format!("pvc/{ns}/disk"), "disk-copy", &[])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let copy = csi.wait_bound(&ns, "disk-copy").await;
    assert!(copy.is_file(), "a block PVC was created");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "the device restores byte for byte"
    );
    csi.stop().await;
    delete_namespaces(&[&ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pvcs_of_a_group_are_cut_together_with_one_volume_group_snapshot() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcg");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let csi = FakeCsi::start(kube_world::admin().await, std::slice::from_ref(&ns)).await;
    let group = [("backup.cairn.dev/group", "db")];
    let data = csi.create_pvc(&ns, "db-data", &group, &[], false).await;
    let wal = csi.create_pvc(&ns, "db-wal", &group, &[], false).await;
    let other = csi.create_pvc(&ns, "other", &[], &[], false).await;
    for (dir, seed) in [(&data, 41), (&wal, 42), (&other, 43)] {
        trees::generate(dir, &small_tree(seed));
    }
    let repo = repos::init(&s3_repo_url()).await;
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &[])).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["succeeded"], 3, "{s:#}");
    let full = repo.open_full().await;
    let meta_of = |name: &str| {
        let id = pvc_result(&s, &format!("{ns}/{name}"))["snapshot"].as_str().unwrap().to_string();
        let full = full.clone();
        async move { full.find_snapshot(&id, None).await.unwrap().snapshot.meta }
    };
    let (m_data, m_wal, m_other) =
        (meta_of("db-data").await, meta_of("db-wal").await, meta_of("other").await);
    let group_of = |m: &Value| m["volumeGroupSnapshot"]["name"].as_str().map(String::from);
    assert!(group_of(&m_data).is_some(), "{m_data:#}");
    assert_eq!(group_of(&m_data), group_of(&m_wal), "both members come from one group snapshot");
    assert_eq!(m_data["volumeGroupSnapshot"]["class"], csi.group_snapshot_class.as_str());
    assert_eq!(group_of(&m_other), None, "a PVC outside the group is cut on its own");
    let cut = csi.events.lock().iter().filter(|e| e.contains("cut 2 volumes together")).count();
    assert_eq!(cut, 1, "one group snapshot for the two members");
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());
    // The members' data restores like any PVC's.
    let out = restore_pvc(&repo, &kc, &format!("pvc/{ns}/db-wal"), "wal-copy", &[])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    trees::assert_same_tree(&wal, &csi.wait_bound(&ns, "wal-copy").await);
    csi.stop().await;
    delete_namespaces(&[&ns]);
}

/// Restore anywhere (#9): an etcd snapshot written into a new PVC through the writer Job
/// lands as `snapshot.db`, which `etcdutl snapshot restore` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_snapshot_restores_into_a_pvc_that_etcdutl_accepts() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcetcd");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let csi = FakeCsi::start(kube_world::admin().await, std::slice::from_ref(&ns)).await;
    let repo = repos::init(&s3_repo_url()).await;
    let snap = std::process::Command::new(workspace_bin("cairn-etcd-snapshot"))
        .args(["--json", "--endpoints", &env("CAIRN_TEST_KUBE_ETCD_ENDPOINTS")])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_WRITE_KEY", repo.write_key.to_text())
        .output()
        .unwrap();
    assert!(snap.status.success(), "{}", String::from_utf8_lossy(&snap.stderr));
    // Storage class and size are the caller's: an etcd snapshot records no PVC.
    let out = restore_pvc(
        &repo,
        &kc,
        "etcd",
        "etcd-restore",
        &["--target-namespace", &ns, "--storage-class", &csi.storage_class, "--size", "2Gi"],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let dir = csi.wait_bound(&ns, "etcd-restore").await;
    let db = dir.join("snapshot.db");
    assert!(db.is_file(), "snapshot.db in the volume");
    let data_dir = tempfile::tempdir().unwrap();
    let restored = std::process::Command::new(cairn_tests::bin("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&db)
        .arg("--data-dir")
        .arg(data_dir.path().join("member"))
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "etcdutl refused the restored file: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    csi.stop().await;
    delete_namespaces(&[&ns]);
}
