//! PVC backup and restore on the test world's real node (`cairn_tests::node`): the real
//! external-provisioner, snapshot-controller and csi-snapshotter over our hostpath CSI
//! driver, the real scheduler, kubelet and containerd running the ingest and writer pods
//! from cairn's images (built offline, never pulled), and the real S3 server as the
//! repository. The orchestrator and `cairn-restore pvc` run on the host, as a CI job would
//! run them against a cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_tests::manifests::{install_crds, kubectl, token_kubeconfig};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{self, TreeSpec};
use cairn_tests::{env, kube_world, node, unique, workspace_bin};
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

/// cairn's images as `images/build.sh oci` builds them and `tests/env/up` imports them.
const INGEST_IMAGE: &str = "cairn-pvc-ingest:dev";
const WRITER_IMAGE: &str = "cairn-restore:dev";

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
        .env("CAIRN_INGEST_IMAGE", INGEST_IMAGE)
        // Nothing is ever pulled in the test world: an image is imported or it is missing.
        .env("CAIRN_IMAGE_PULL_POLICY", "Never")
        // The node has 2 CPUs: small requests let the suite's parallel runs all fit.
        .env("CAIRN_INGEST_CPU", "50m")
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
    .env("CAIRN_WRITER_IMAGE", WRITER_IMAGE)
    .env("CAIRN_IMAGE_PULL_POLICY", "Never")
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
    let client = kube_world::admin().await;
    let mut dirs = BTreeMap::new();
    for (i, (ns, name)) in
        [(&ns_a, "data1"), (&ns_a, "data2"), (&ns_b, "data3")].into_iter().enumerate()
    {
        let dir = node::create_pvc(&client, ns, name, &[("app", "db")], &[], false).await;
        trees::generate(&dir, &small_tree(i as u64 + 11));
        dirs.insert(format!("{ns}/{name}"), dir);
    }
    node::create_pvc(
        &client,
        &ns_b,
        "scratch",
        &[],
        &[("backup.cairn.dev/enabled", "false")],
        false,
    )
    .await;
    let repo = repos::init(&s3_repo_url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let sa_kc = shipped_rbac_kubeconfig(&ns_a, tmp.path());

    // First run, with nothing but the shipped RBAC, pushing its metrics to Prometheus.
    let mut first = orchestrator(&repo, &sa_kc, &[&ns_a, &ns_b], &[]);
    first.env(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        format!("{}/api/v1/otlp/v1/metrics", env("CAIRN_TEST_PROMETHEUS")),
    );
    let (code, s) = run_json(first).await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["succeeded"], 3, "{s:#}");
    // One series per PVC, under its snapshots' source, with what its ingest stored.
    for key in dirs.keys() {
        let sel = format!("job=\"cairn-pvc-ingest\",cairn_source=\"pvc/{key}\"");
        let runs = cairn_tests::prometheus::wait_for(&format!("cairn_runs_total{{{sel}}}"));
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].0["cairn_outcome"], "success");
        let stored =
            cairn_tests::prometheus::one(&format!("cairn_backup_stored_bytes_total{{{sel}}}"));
        assert_eq!(stored, pvc_result(&s, key)["new_bytes"].as_f64().unwrap(), "{key}");
    }
    assert!(s["skipped"].to_string().contains("scratch"), "the opted-out PVC is skipped: {s:#}");
    let full = repo.open_full().await;
    for (key, dir) in &dirs {
        let r = pvc_result(&s, key);
        assert_eq!(r["ok"], true, "{r:#}");
        assert_eq!(r["volume_snapshot_class"], node::SNAPSHOT_CLASS);
        assert!(r["files_read"].as_u64().unwrap() > 0);
        let snap = full.find_snapshot(r["snapshot"].as_str().unwrap(), None).await.unwrap();
        assert_eq!(snap.snapshot.source, format!("pvc/{key}"));
        assert_eq!(snap.snapshot.cluster.as_deref(), Some("test"));
        let meta = &snap.snapshot.meta;
        assert_eq!(meta["pvc"]["storageClassName"], node::STORAGE_CLASS, "{meta:#}");
        assert_eq!(meta["pvc"]["labels"]["app"], "db");
        assert_eq!(meta["volumeSnapshot"]["class"], node::SNAPSHOT_CLASS);
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
    let restored = node::wait_bound(&client, &ns_a, "data1-restored").await;
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
    let restored_sub = node::wait_bound(&client, &ns_a, "data2-sub").await;
    trees::assert_same_tree(&src2.join(&sub), &restored_sub);
    assert_eq!(leftovers(&ns_a).await, Vec::<String>::new());

    delete_namespaces(&[&ns_a, &ns_b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_pvcs_are_reported_and_leave_nothing_behind() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcf");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    for name in ["good", "snaperr", "never", "pullfail", "nofit"] {
        let dir = node::create_pvc(&client, &ns, name, &[("case", name)], &[], false).await;
        std::fs::write(dir.join("f"), name).unwrap();
    }
    // Faults produced for real: the driver refuses one snapshot and never finishes another.
    node::fail_snapshots(&client, &ns, "snaperr", "driver: snapshot quota exceeded").await;
    node::snapshots_never_ready(&client, &ns, "never").await;
    let repo = repos::init(&s3_repo_url()).await;
    // Long enough for the good PVC's snapshot on a busy machine (8 s was not, in CI).
    let extra =
        ["--snapshot-timeout", "30s", "--parallel", "3", "-l", "case in (good,snaperr,never)"];
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &extra)).await;
    assert_eq!(code, 3, "some PVCs failed, one is saved: {s:#}");
    assert_eq!(s["succeeded"], 1);
    assert_eq!(s["failed"], 2);
    assert_eq!(pvc_result(&s, &format!("{ns}/good"))["ok"], true);
    let err = |s: &Value, name: &str| {
        pvc_result(s, &format!("{ns}/{name}"))["error"].as_str().unwrap_or_default().to_string()
    };
    assert!(err(&s, "snaperr").contains("snapshot quota exceeded"), "{}", err(&s, "snaperr"));
    assert!(err(&s, "never").contains("not ready within 30s"), "{}", err(&s, "never"));
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());

    // An image the node does not have (and may not pull), and an ingest pod no node can
    // fit: each fails its PVC with the kubelet's or the scheduler's reason, cleaned up.
    let missing = ["-l", "case=pullfail", "--ingest-image", "cairn-test/no-such-image:1"];
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &missing)).await;
    assert_ne!(code, 0, "{s:#}");
    assert!(err(&s, "pullfail").contains("ErrImageNeverPull"), "{}", err(&s, "pullfail"));
    let nofit = ["-l", "case=nofit", "--ingest-memory", "64Ti", "--pending-timeout", "10s"];
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &nofit)).await;
    assert_ne!(code, 0, "{s:#}");
    assert!(err(&s, "nofit").to_lowercase().contains("unschedulable"), "{}", err(&s, "nofit"));
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());

    // The failed PVCs have no snapshot; the good one has.
    let snaps = repo.open_full().await.snapshots().await.unwrap();
    let sources: Vec<&str> = snaps.iter().map(|e| e.snapshot.source.as_str()).collect();
    assert_eq!(sources, vec![format!("pvc/{ns}/good").as_str()]);
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
    let client = kube_world::admin().await;
    let dir = node::create_pvc(&client, &ns, "vol", &[], &[], false).await;
    trees::generate(&dir, &small_tree(21));
    // The kubelet cannot mount volumes in this namespace until the test says so (the driver
    // answers NodePublishVolume with Unavailable): the run is caught mid-Job.
    node::block_publish(&ns);
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
    node::unblock_publish(&ns);
    let (code, s) = run_json(orchestrator(&repo, &kc, &[&ns], &lease)).await;
    assert_eq!(code, 0, "{s:#}");
    let swept = s["swept"]["objects"].to_string();
    assert!(swept.contains("Job") && swept.contains("VolumeSnapshot"), "{s:#}");
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());

    // The data restores byte-exact into a new PVC.
    let out =
        restore_pvc(&repo, &kc, &format!("pvc/{ns}/vol"), "vol-copy", &[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let restored = node::wait_bound(&client, &ns, "vol-copy").await;
    trees::assert_same_tree(&dir, &restored);
    delete_namespaces(&[&ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_volumes_round_trip_and_live_mode_reads_the_live_volume() {
    use std::io::{Seek, SeekFrom, Write};
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcblk");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    let disk = node::create_pvc(&client, &ns, "disk", &[("kind", "block")], &[], true).await;
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
    let live = node::create_pvc(&client, &ns, "app", &[("kind", "live")], &[], false).await;
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
    let img = full.lookup(&snap.snapshot, "volume.img").await.expect("volume.img in the snapshot");
    // A volume image changes in place: cut into 4 KiB pages, its 16k extents in lists.
    assert_eq!(img.pages, Some(4096));
    assert!(!img.extent_lists.is_empty() || img.content.len() <= 1024, "{:?}", img.content.len());

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
    let copy = node::wait_bound(&client, &ns, "disk-copy").await;
    assert!(copy.is_file(), "a block PVC was created");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "the device restores byte for byte"
    );
    delete_namespaces(&[&ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pvcs_of_a_group_are_cut_together_with_one_volume_group_snapshot() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let ns = unique("pvcg");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    let group = [("backup.cairn.dev/group", "db")];
    let data = node::create_pvc(&client, &ns, "db-data", &group, &[], false).await;
    let wal = node::create_pvc(&client, &ns, "db-wal", &group, &[], false).await;
    let other = node::create_pvc(&client, &ns, "other", &[], &[], false).await;
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
    assert_eq!(m_data["volumeGroupSnapshot"]["class"], node::GROUP_SNAPSHOT_CLASS);
    assert_eq!(group_of(&m_other), None, "a PVC outside the group is cut on its own");
    // What the driver was asked: one group snapshot of both volumes, no snapshot of either
    // on its own.
    let (h_data, h_wal) = (
        node::volume_handle(&client, &ns, "db-data").await,
        node::volume_handle(&client, &ns, "db-wal").await,
    );
    let log = node::driver_log();
    let groups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rpc CreateVolumeGroupSnapshot") && l.contains(&h_data))
        .collect();
    assert!(!groups.is_empty() && groups.iter().all(|l| l.contains(&h_wal)), "{groups:#?}");
    let alone = log.lines().filter(|l| {
        l.contains("rpc CreateSnapshot ") && (l.contains(&h_data) || l.contains(&h_wal))
    });
    assert_eq!(alone.count(), 0, "a member was cut on its own");
    assert_eq!(leftovers(&ns).await, Vec::<String>::new());
    // The members' data restores like any PVC's.
    let out = restore_pvc(&repo, &kc, &format!("pvc/{ns}/db-wal"), "wal-copy", &[])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    trees::assert_same_tree(&wal, &node::wait_bound(&client, &ns, "wal-copy").await);
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
    let client = kube_world::admin().await;
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
        &["--target-namespace", &ns, "--storage-class", node::STORAGE_CLASS, "--size", "2Gi"],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let dir = node::wait_bound(&client, &ns, "etcd-restore").await;
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
    delete_namespaces(&[&ns]);
}

/// The worker pods' security contexts are enforced by runc on the real node, not assumed:
/// the restore writer, run with the ingest pod's context (root limited to
/// `DAC_READ_SEARCH`) on a volume owned by another user, cannot write a file into it; with
/// its own context (`CHOWN`, `DAC_OVERRIDE`, `FOWNER`, ...) the same Job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ingest_context_cannot_write_to_a_volume_and_the_writer_context_can() {
    use cairn_kube::podjob::{VOLUME_PATH, WorkerJob, WorkerSecurity, WorkerVolume};
    use k8s_openapi::api::batch::v1::Job;
    use kube::api::{Api, PostParams};
    let kc = env("KUBECONFIG");
    let ns = unique("pvcsec");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    let volume = node::create_pvc(&client, &ns, "owned", &[], &[], false).await;
    std::os::unix::fs::chown(&volume, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(&volume, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // A snapshot to write: one small file.
    let repo = repos::init(&s3_repo_url()).await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("note.txt"), "written by the restore writer").unwrap();
    let backup = std::process::Command::new(workspace_bin("cairn"))
        .args(["--repo", &repo.url, "--write-key", &repo.write_key.to_text(), "--json", "backup"])
        .arg(src.path())
        .args(["--source", "sec"])
        .output()
        .unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let snapshot: Value = serde_json::from_slice(&backup.stdout).unwrap();
    let id = snapshot["id"].as_str().unwrap().to_string();

    let run = |name: &str, security: WorkerSecurity| {
        let mut env_vars = vec![
            ("CAIRN_SNAPSHOT".to_string(), id.clone()),
            ("CAIRN_WRITER_TARGET".to_string(), VOLUME_PATH.to_string()),
            ("CAIRN_EXISTING".to_string(), "merge".to_string()),
            ("CAIRN_REPO".to_string(), repo.url.clone()),
            ("CAIRN_IDENTITY".to_string(), repo.identity_text()),
        ];
        env_vars.extend(cairn_tests::s3::store_env().into_iter().map(|(k, v)| (k.to_string(), v)));
        let mut job = WorkerJob {
            namespace: ns.clone(),
            name: name.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            image: WRITER_IMAGE.into(),
            image_pull_policy: Some("Never".into()),
            command: vec!["/usr/local/bin/cairn-restore".into(), "pvc-writer".into()],
            env: env_vars,
            env_secret: None,
            volume: Some(WorkerVolume { claim: "owned".into(), read_only: false, block: false }),
            security,
            resources: None,
            service_account: None,
            node: None,
            active_deadline: Duration::from_secs(300),
        }
        .build();
        job.spec.as_mut().unwrap().suspend = Some(false);
        job
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut outcomes = Vec::new();
    for (name, security) in
        [("as-ingest", WorkerSecurity::reader()), ("as-writer", WorkerSecurity::writer())]
    {
        jobs.create(&PostParams::default(), &run(name, security)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        let (exit, message) = loop {
            let pods = kubectl(
                &kc,
                &["get", "pods", "-n", &ns, "-l", &format!("job-name={name}"), "-o", "json"],
                None,
            );
            let pods: Value = serde_json::from_str(&pods).unwrap();
            let term = &pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"];
            if let Some(code) = term["exitCode"].as_i64() {
                break (code, term["message"].as_str().unwrap_or_default().to_string());
            }
            assert!(Instant::now() < deadline, "{name} did not end: {pods:#}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!("[pvc] {name}: exit {exit}: {message}");
        outcomes.push((exit, message, volume.join("note.txt").exists()));
    }
    assert_ne!(outcomes[0].0, 0, "the ingest context wrote into another user's volume");
    assert!(outcomes[0].1.to_lowercase().contains("permission denied"), "{}", outcomes[0].1);
    assert!(!outcomes[0].2, "nothing was written with the ingest context");
    assert_eq!(outcomes[1].0, 0, "the writer context restores: {}", outcomes[1].1);
    assert_eq!(
        std::fs::read_to_string(volume.join("note.txt")).unwrap(),
        "written by the restore writer"
    );
    delete_namespaces(&[&ns]);
}

/// `cairn restore` of a source's latest snapshot into `target` on the host.
fn restore_latest(repo: &TestRepo, source: &str, target: &Path) {
    let out = std::process::Command::new(workspace_bin("cairn"))
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text())
        .args(["restore", "latest", "--source", source, "--target"])
        .arg(target)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore {source}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `sqlite3 DB SQL` on the host.
fn sqlite(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The seconds of an RFC 3339 time (`2026-11-30T11:20:01.5Z` → `2026-11-30T11:20:01`):
/// VolumeSnapshots carry whole seconds.
fn second(t: &Value) -> String {
    t.as_str().unwrap_or_else(|| panic!("not a time: {t}"))[..19].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_quiesce_the_database_around_its_snapshot_and_a_failing_hook_fails_only_its_pvc() {
    let kc = env("KUBECONFIG");
    let ns = unique("hooks");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    let pre = r#"["/bin/sh", "-c", "touch /tmp/freeze; n=0; while [ ! -e /tmp/frozen ]; do n=$((n+1)); if [ $n -gt 300 ]; then echo 'the writer did not freeze' >&2; exit 1; fi; sleep 0.1; done; echo pre >> /data/hooks.log"]"#;
    let post = r#"["/bin/sh", "-c", "echo post >> /data/hooks.log; rm -f /tmp/freeze"]"#;
    let refuse =
        r#"["/bin/sh", "-c", "echo 'warming up' >&2; echo 'refusing to freeze' >&2; exit 3"]"#;
    let hang = r#"["/bin/sh", "-c", "sleep 600"]"#;
    let mark = r#"["/bin/sh", "-c", "date >> /data/post-ran"]"#;
    let idle = "touch /data/ready; while true; do sleep 3600; done";
    let mut dirs = BTreeMap::new();
    for name in ["db", "failing", "lenient", "hung"] {
        dirs.insert(name, node::create_pvc(&client, &ns, name, &[], &[], false).await);
    }
    node::workload_pod(
        &client,
        &ns,
        "db",
        Some("db"),
        &[("backup.cairn.dev/pre-hook", pre), ("backup.cairn.dev/post-hook", post)],
        &node::database_script(20_000),
    )
    .await;
    for (name, ann) in [
        ("failing", vec![("backup.cairn.dev/pre-hook", refuse)]),
        (
            "lenient",
            vec![
                ("backup.cairn.dev/pre-hook", refuse),
                ("backup.cairn.dev/hook-on-error", "continue"),
            ],
        ),
        (
            "hung",
            vec![("backup.cairn.dev/pre-hook", hang), ("backup.cairn.dev/hook-timeout", "3s")],
        ),
    ] {
        let mut ann = ann;
        ann.push(("backup.cairn.dev/post-hook", mark));
        node::workload_pod(&client, &ns, name, Some(name), &ann, idle).await;
    }
    for dir in dirs.values() {
        node::wait_file(&dir.join("ready"), Duration::from_secs(60)).await;
    }
    let repo = repos::init(&s3_repo_url()).await;
    let tmp = tempfile::tempdir().unwrap();
    // The shipped RBAC: pods/exec is in it.
    let sa_kc = shipped_rbac_kubeconfig(&ns, tmp.path());
    let started = Instant::now();
    let (code, s) = run_json(orchestrator(&repo, &sa_kc, &[&ns], &["--parallel", "4"])).await;
    eprintln!("[hooks] run took {:?}", started.elapsed());
    assert_eq!(code, 3, "two PVCs fail, two are saved: {s:#}");
    assert_eq!((s["succeeded"].as_u64(), s["failed"].as_u64()), (Some(2), Some(2)), "{s:#}");
    let full = repo.open_full().await;

    // The database: pre hook, cut, post hook, and the snapshot holds a flushed database.
    let db = pvc_result(&s, &format!("{ns}/db"));
    assert_eq!(db["ok"], true, "{db:#}");
    let snap = full.find_snapshot(db["snapshot"].as_str().unwrap(), None).await.unwrap();
    let meta = &snap.snapshot.meta;
    let hooks = &meta["hooks"];
    assert_eq!(hooks, &db["hooks"], "the snapshot records what the run reports");
    assert_eq!(hooks["applicationConsistent"], true, "{meta:#}");
    assert!(
        meta["consistency"].as_str().unwrap().starts_with("application-consistent"),
        "{meta:#}"
    );
    let runs = hooks["runs"].as_array().unwrap();
    let phases: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r["phase"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(phases, [("pre", "ok"), ("post", "ok")], "{hooks:#}");
    assert_eq!(runs[0]["pod"], format!("{ns}/db"));
    assert_eq!(runs[0]["container"], "app");
    let cut = second(&meta["volumeSnapshot"]["creationTime"]);
    assert!(second(&runs[0]["ended"]) <= cut, "pre hook ended before the cut: {meta:#}");
    assert!(cut <= second(&runs[1]["started"]), "post hook started after the cut: {meta:#}");
    // What the snapshot holds proves the order too: the pre hook's line, not the post hook's;
    // and the database it holds was checkpointed (an empty WAL) and is whole.
    let restored = tmp.path().join("db");
    restore_latest(&repo, &format!("pvc/{ns}/db"), &restored);
    assert_eq!(std::fs::read_to_string(restored.join("hooks.log")).unwrap(), "pre\n");
    assert_eq!(std::fs::read_to_string(dirs["db"].join("hooks.log")).unwrap(), "pre\npost\n");
    let wal = restored.join("app.db-wal");
    assert_eq!(
        wal.metadata().map(|m| m.len()).unwrap_or(0),
        0,
        "the WAL was flushed before the cut"
    );
    assert_eq!(sqlite(&restored.join("app.db"), "PRAGMA integrity_check"), "ok");
    let rows: u64 = sqlite(&restored.join("app.db"), "SELECT count(*) FROM t").parse().unwrap();
    assert!(rows >= 20_000, "{rows}");
    // The writer resumed after the post hook.
    let rows_at_cut = rows;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copy = tmp.path().join("live.db");
    // (A consistent copy of the live database through sqlite's own backup.)
    sqlite(&dirs["db"].join("app.db"), &format!(".backup {}", copy.display()));
    let live: u64 = sqlite(&copy, "SELECT count(*) FROM t").parse().unwrap();
    assert!(live > rows_at_cut, "writes resumed: {live} > {rows_at_cut}");

    // A pre hook that fails under `fail`: that PVC alone fails, nothing is cut, and its
    // post hook still ran.
    let failing = pvc_result(&s, &format!("{ns}/failing"));
    assert_eq!(failing["ok"], false);
    assert_eq!(failing["exit_code"], 1, "{failing:#}");
    let err = failing["error"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "pre hook in pod {ns}/failing container app exited 3: refusing to freeze"
        )) && err.contains("no snapshot cut"),
        "{err}"
    );
    assert!(
        dirs["failing"].join("post-ran").exists(),
        "the post hook ran after the failed pre hook"
    );
    let f_runs = failing["hooks"]["runs"].as_array().unwrap();
    assert_eq!(f_runs.len(), 2, "{failing:#}");
    assert_eq!(
        (f_runs[0]["outcome"].as_str(), f_runs[0]["exitCode"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(f_runs[1]["outcome"], "ok");
    assert!(full.find_snapshot("latest", Some(&format!("pvc/{ns}/failing"))).await.is_err());

    // Under `continue`: saved, and recorded as not application-consistent.
    let lenient = pvc_result(&s, &format!("{ns}/lenient"));
    assert_eq!(lenient["ok"], true, "{lenient:#}");
    let snap = full.find_snapshot(lenient["snapshot"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(snap.snapshot.meta["hooks"]["applicationConsistent"], false);
    assert!(snap.snapshot.meta["consistency"].as_str().unwrap().starts_with("crash-consistent"));
    assert!(dirs["lenient"].join("post-ran").exists());

    // A pre hook that hangs is cut off at its 3 s; the post hook runs; the PVC fails.
    let hung = pvc_result(&s, &format!("{ns}/hung"));
    assert_eq!(hung["ok"], false);
    assert!(hung["error"].as_str().unwrap().contains("timed out"), "{hung:#}");
    let h_runs = hung["hooks"]["runs"].as_array().unwrap();
    assert_eq!(h_runs[0]["outcome"], "timeout", "{hung:#}");
    assert_eq!(h_runs[1]["outcome"], "ok", "{hung:#}");
    assert!(dirs["hung"].join("post-ran").exists(), "the post hook ran after the timeout");
    assert!(hung["duration_ms"].as_u64().unwrap() < 60_000, "{hung:#}");
    assert!(full.find_snapshot("latest", Some(&format!("pvc/{ns}/hung"))).await.is_err());

    assert_eq!(leftovers(&ns).await, Vec::<String>::new(), "temporary objects left in {ns}");
    delete_namespaces(&[&ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_dump_dedups_between_runs_and_restores_by_piping_into_a_command() {
    let kc = env("KUBECONFIG");
    let ns = unique("dumps");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let client = kube_world::admin().await;
    let dir = node::create_pvc(&client, &ns, "pg", &[], &[], false).await;
    node::workload_pod(
        &client,
        &ns,
        "pg",
        Some("pg"),
        &[("backup.cairn.dev/dump-command", r#"["sqlite3", "/data/app.db", ".dump"]"#)],
        &node::database_script(300_000),
    )
    .await;
    let broken = r#"["/bin/sh", "-c", "echo 'BEGIN;'; echo 'disk on fire' >&2; exit 7"]"#;
    node::workload_pod(
        &client,
        &ns,
        "broken",
        None,
        &[("backup.cairn.dev/dump-command", broken)],
        "while true; do sleep 3600; done",
    )
    .await;
    node::wait_file(&dir.join("ready"), Duration::from_secs(120)).await;
    let repo = repos::init(&s3_repo_url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let sa_kc = shipped_rbac_kubeconfig(&ns, tmp.path());
    // No PVC matches the selector: only the dumps run.
    let only_dumps = ["-l", "cairn-test=none"];

    let (code, s) = run_json(orchestrator(&repo, &sa_kc, &[&ns], &only_dumps)).await;
    assert_eq!(code, 3, "one dump saved, one failed: {s:#}");
    let dumps = s["dumps"].as_array().unwrap();
    let pg_source = format!("dump/{ns}/pg");
    let first = dumps.iter().find(|d| d["source"] == pg_source.as_str()).unwrap();
    assert_eq!(first["ok"], true, "{first:#}");
    let bad = dumps.iter().find(|d| d["source"] == format!("dump/{ns}/broken")).unwrap();
    assert_eq!(
        (bad["ok"].as_bool(), bad["command_exit"].as_i64()),
        (Some(false), Some(7)),
        "{bad:#}"
    );
    assert!(bad["stderr_tail"].as_str().unwrap().contains("disk on fire"), "{bad:#}");
    assert!(bad["error"].as_str().unwrap().contains("exited 7: disk on fire"), "{bad:#}");
    let full = repo.open_full().await;
    assert!(
        full.find_snapshot("latest", Some(&format!("dump/{ns}/broken"))).await.is_err(),
        "a failed dump saves nothing"
    );
    let snap = full.find_snapshot(first["snapshot"].as_str().unwrap(), None).await.unwrap();
    let rec = &snap.snapshot.meta["dump"];
    assert_eq!((rec["pod"].as_str(), rec["exitCode"].as_i64()), (Some("pg"), Some(0)), "{rec:#}");
    assert_eq!(rec["bytes"], first["bytes"]);
    let bytes = first["bytes"].as_u64().unwrap();
    assert!(bytes > 30 << 20, "a dump of 300k rows: {bytes}");

    // A small change in the middle, some rows at the end (the writer's ticks): the second
    // dump stores few new bytes.
    kubectl(
        &kc,
        &[
            "exec",
            "-n",
            &ns,
            "pg",
            "--",
            "sqlite3",
            "-cmd",
            ".timeout 5000",
            "/data/app.db",
            "UPDATE t SET v = 'changed' WHERE id = 150000",
        ],
        None,
    );
    let (code, s2) = run_json(orchestrator(&repo, &sa_kc, &[&ns], &only_dumps)).await;
    assert_eq!(code, 3, "{s2:#}");
    let second =
        s2["dumps"].as_array().unwrap().iter().find(|d| d["source"] == pg_source.as_str()).unwrap();
    let (b2, new2) = (second["bytes"].as_u64().unwrap(), second["new_bytes"].as_u64().unwrap());
    eprintln!(
        "[dump] first {bytes} bytes ({} new), second {b2} bytes, {new2} new ({:.1}%)",
        first["new_bytes"],
        100.0 * new2 as f64 / b2 as f64
    );
    assert_ne!(second["snapshot"], first["snapshot"]);
    assert!(b2 > bytes, "the second dump has the new rows");
    assert!(new2 < b2 / 4, "a changed row and a few new ones store few new bytes: {new2} of {b2}");

    // Restore by piping into sqlite3 in the pod; compare with the dump loaded here.
    let restore = tokio::process::Command::new(workspace_bin("cairn-restore"))
        .args(["--json", "dump", "--kubeconfig", &kc, "--source", &pg_source, "--pod", "pg", "--"])
        .args(["sqlite3", "/data/restored.db"])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text())
        .output()
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&restore.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&restore.stderr)));
    assert_eq!(restore.status.code(), Some(0), "{r:#}");
    assert_eq!((r["bytes"].as_u64(), r["command_exit"].as_i64()), (Some(b2), Some(0)), "{r:#}");
    let local = tmp.path().join("dump");
    restore_latest(&repo, &pg_source, &local);
    let sql = std::fs::read(local.join("dump")).unwrap();
    assert_eq!(sql.len() as u64, b2);
    let local_db = tmp.path().join("local.db");
    let loaded = std::process::Command::new("sqlite3")
        .arg(&local_db)
        .stdin(std::fs::File::open(local.join("dump")).unwrap())
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let query =
        "SELECT count(*), sum(length(v)), max(id), (SELECT v FROM t WHERE id = 150000) FROM t";
    let want = sqlite(&local_db, query);
    assert!(want.ends_with("|changed"), "{want}");
    let got =
        kubectl(&kc, &["exec", "-n", &ns, "pg", "--", "sqlite3", "/data/restored.db", query], None);
    assert_eq!(got.trim(), want, "the piped restore holds what the dump held");
    // The restored database is a file in the live volume, next to the original.
    assert_eq!(sqlite(&dir.join("restored.db"), "PRAGMA integrity_check"), "ok");

    // A restore command that fails: one line with its status and stderr, exit 1; one that
    // exits without reading its input is caught by the stall timeout.
    for (script, want) in [
        ("cat >/dev/null; echo 'no space left' >&2; exit 5", "exited 5: no space left"),
        ("head -c 100 >/dev/null; exit 5", "has not read its input for 3s"),
    ] {
        let started = Instant::now();
        let failed = tokio::process::Command::new(workspace_bin("cairn-restore"))
            .args(["dump", "--kubeconfig", &kc, "--source", &pg_source, "--pod", "pg"])
            .args(["--stall-timeout", "3s", "--no-precheck", "--", "/bin/sh", "-c", script])
            .env("CAIRN_REPO", &repo.url)
            .env("CAIRN_IDENTITY", repo.identity_text())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{script}: {:?}", started.elapsed());
    }
    // Not a dump: a usage error.
    let not_dump = tokio::process::Command::new(workspace_bin("cairn-restore"))
        .args([
            "dump",
            "--kubeconfig",
            &kc,
            "--source",
            "pvc/nowhere/none",
            "--pod",
            "pg",
            "--",
            "cat",
        ])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text())
        .output()
        .await
        .unwrap();
    assert_eq!(not_dump.status.code(), Some(2), "{}", String::from_utf8_lossy(&not_dump.stderr));
    delete_namespaces(&[&ns]);
}

/// A disaster-recovery restore onto other StorageClasses: `--storage-class-map` (the same
/// flag and variable as the manifest restore) gives each PVC the class its recorded one maps
/// to; a class that does not exist is one line and exit 2, with nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pvc_restore_maps_its_recorded_storage_class() {
    use cairn_core::fs::{BackupOptions, backup_dir};
    use cairn_core::records::{PvcMeta, PvcMode, PvcRecord, SnapshotRecord};
    let kc = env("KUBECONFIG");
    let ns = unique("pvcmap");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let class = format!("cairn-mapped-{}", &ns[ns.len() - 8..]);
    let sc = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": class}, "provisioner": env("CAIRN_TEST_CSI_DRIVER"),
        "volumeBindingMode": "Immediate",
    });
    kubectl(&kc, &["apply", "-f", "-"], Some(&sc.to_string()));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    trees::generate(&src, &small_tree(71));
    let repo = repos::init(&s3_repo_url()).await;
    let record = PvcRecord {
        namespace: Some("prod".into()),
        name: Some("data".into()),
        storage_class_name: Some("fast-ssd".into()),
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        volume_mode: "Filesystem".into(),
        size: Some("1Gi".into()),
        ..Default::default()
    };
    let opts = BackupOptions {
        source: "pvc/prod/data".into(),
        meta: PvcMeta::new(record, PvcMode::Snapshot).to_meta(),
        ..Default::default()
    };
    backup_dir(repo.open_write().await, &src, opts).await.unwrap();

    let missing = restore_pvc(
        &repo,
        &kc,
        "pvc/prod/data",
        "data",
        &["--target-namespace", &ns, "--storage-class-map", "fast-ssd=no-such-class"],
    )
    .output()
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(missing.status.code(), Some(2), "{v:#}");
    assert!(
        v["error"].as_str().unwrap().contains("StorageClass \"no-such-class\" does not exist"),
        "{v:#}"
    );
    let none = kubectl(&kc, &["get", "pvc", "-n", &ns, "-o", "name"], None);
    assert_eq!(none.trim(), "", "nothing created");

    let map = format!("other=unused,fast-ssd={class}");
    let out = restore_pvc(
        &repo,
        &kc,
        "pvc/prod/data",
        "data",
        &["--target-namespace", &ns, "--storage-class-map", &map],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let got = kubectl(
        &kc,
        &["get", "pvc", "data", "-n", &ns, "-o", "jsonpath={.spec.storageClassName}"],
        None,
    );
    assert_eq!(got.trim(), class);
    let client = kube_world::admin().await;
    let dir = node::wait_bound(&client, &ns, "data").await;
    assert_eq!(
        trees::digest(&dir),
        trees::digest(&src),
        "restored byte-exact onto the mapped class"
    );
    delete_namespaces(&[&ns]);
    kubectl(&kc, &["delete", "storageclass", &class, "--wait=false"], None);
}
