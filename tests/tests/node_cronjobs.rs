//! cairn's images on the test world's real node (#11): the `local-test` overlay applied as a
//! user applies it, every CronJob triggered with `kubectl create job --from=cronjob/...`,
//! each Job run by the real kubelet from the images `images/build.sh oci` built; then what
//! the Jobs wrote is listed, checked and restored from the host. And the Jobs'
//! `podFailurePolicy`: a pod that exits 5 (lock held) is retried, one that exits 2 fails the
//! Job at once.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_core::repo::lock::{Lock, LockKind, LockOptions};
use cairn_tests::manifests::{create_secret, kubectl, render};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{self, TreeSpec};
use cairn_tests::{env, kube_world, node, s3, unique, workspace_bin};
use serde_json::{Value, json};

fn overlay() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests/overlays/local-test")
}

/// The overlay applied into a fresh namespace (cluster-scoped names suffixed), pointed at a
/// fresh repository, with the Secrets an operator creates: the write key and the etcd
/// client certificate.
struct Installed {
    ns: String,
    suffix: String,
    repo: TestRepo,
}

async fn install(prefix: &str) -> Installed {
    let kc = env("KUBECONFIG");
    let ns = unique(prefix);
    let suffix = format!("-{}", &ns[ns.len() - 8..]);
    kubectl(&kc, &["create", "namespace", &ns], None);
    kubectl(&kc, &["apply", "-f", "-"], Some(&render(&overlay(), &ns, &suffix)));
    let url = format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("noderepo"));
    let repo = repos::init(&url).await;
    let patch = json!({"data": {"CAIRN_REPO": url, "CAIRN_CLUSTER": "node-test"}}).to_string();
    kubectl(
        &kc,
        &["patch", "configmap", &format!("cairn-repo{suffix}"), "-n", &ns, "-p", &patch],
        None,
    );
    create_secret(&ns, "cairn-write-key", &[("write-key", repo.write_key.to_text())]);
    let pem = |var: &str| std::fs::read_to_string(env(var)).unwrap();
    let etcd_client = [
        ("ca.crt", pem("CAIRN_TEST_ETCD_CACERT")),
        ("tls.crt", pem("CAIRN_TEST_ETCD_CERT")),
        ("tls.key", pem("CAIRN_TEST_ETCD_KEY")),
    ];
    create_secret(&ns, "cairn-etcd-client", &etcd_client);
    // The overlay's ConfigMap has the endpoint and region; the Secret the credentials.
    let credentials = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].map(|v| (v, env(v)));
    create_secret(&ns, "cairn-s3-credentials", &credentials);
    Installed { ns, suffix, repo }
}

impl Installed {
    /// A Job made from one of the overlay's CronJobs, as `kubectl create job --from` makes
    /// it, with `edit` applied to its JSON first.
    fn job_from(&self, cronjob: &str, job: &str, edit: impl FnOnce(&mut Value)) {
        let kc = env("KUBECONFIG");
        let from = format!("cronjob/{cronjob}{}", self.suffix);
        let text = kubectl(
            &kc,
            &[
                "create",
                "job",
                job,
                "--from",
                &from,
                "-n",
                &self.ns,
                "--dry-run=client",
                "-o",
                "json",
            ],
            None,
        );
        let mut obj: Value = serde_json::from_str(&text).unwrap();
        edit(&mut obj);
        kubectl(&kc, &["create", "-f", "-"], Some(&obj.to_string()));
    }

    /// Wait until Job `job` has the condition `Complete` or `Failed`; which one, with the
    /// pods' logs printed when it failed.
    async fn wait_job(&self, job: &str, timeout: Duration) -> (String, Value) {
        let kc = env("KUBECONFIG");
        let deadline = Instant::now() + timeout;
        loop {
            let text = kubectl(&kc, &["get", "job", job, "-n", &self.ns, "-o", "json"], None);
            let obj: Value = serde_json::from_str(&text).unwrap();
            let ended = obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            });
            if let Some(c) = ended {
                let kind = c["type"].as_str().unwrap().to_string();
                if kind != "Complete" {
                    eprintln!("Job {job} failed: {c:#}\n{}", self.logs(job));
                }
                return (kind, obj);
            }
            assert!(
                Instant::now() < deadline,
                "Job {job} did not end within {timeout:?}:\n{}",
                self.logs(job)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn logs(&self, job: &str) -> String {
        let out = std::process::Command::new(cairn_tests::bin("kubectl"))
            .args([
                "--kubeconfig",
                &env("KUBECONFIG"),
                "logs",
                "-n",
                &self.ns,
                "--all-containers",
                "--prefix",
            ])
            .arg(format!("--selector=job-name={job}"))
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    async fn run_to_completion(&self, cronjob: &str, edit: impl FnOnce(&mut Value)) {
        let job = format!("{}-now", cronjob.trim_start_matches("cairn-"));
        self.job_from(cronjob, &job, edit);
        let (end, obj) = self.wait_job(&job, Duration::from_secs(300)).await;
        assert_eq!(end, "Complete", "{cronjob}: {obj:#}");
    }

    fn delete(&self) {
        let kc = env("KUBECONFIG");
        kubectl(&kc, &["delete", "namespace", &self.ns, "--wait=false"], None);
        let selector = "app.kubernetes.io/part-of=cairn";
        // The suffixed cluster-scoped objects (ClusterRoles and their bindings).
        for kind in ["clusterrolebindings", "clusterroles"] {
            let names = kubectl(&kc, &["get", kind, "-l", selector, "-o", "name"], None);
            for name in names.lines().filter(|n| n.ends_with(&self.suffix)) {
                kubectl(&kc, &["delete", name, "--ignore-not-found"], None);
            }
        }
    }
}

/// Set environment variable `name` of the Job's `cairn` container.
fn set_env(job: &mut Value, name: &str, value: &str) {
    let container = &mut job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "cairn");
    let env = container["env"].as_array_mut().unwrap();
    env.retain(|e| e["name"] != name);
    env.push(json!({"name": name, "value": value}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cronjob_of_the_local_test_overlay_runs_on_the_node() {
    let world = install("cron").await;
    let client = kube_world::admin().await;
    // A PVC for the ingest CronJob, with a file only its owner may read.
    let data_ns = unique("crondata");
    kubectl(&env("KUBECONFIG"), &["create", "namespace", &data_ns], None);
    let volume = node::create_pvc(&client, &data_ns, "data", &[], &[], false).await;
    trees::generate(
        &volume,
        &TreeSpec {
            seed: 7,
            depth: 2,
            max_entries: 5,
            max_file: 64 << 10,
            sparse_size: 1 << 20,
            wide: 0,
            deep: 0,
        },
    );
    let secret = volume.join("private.key");
    std::fs::write(&secret, "only uid 4321 may read this").unwrap();
    std::os::unix::fs::chown(&secret, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    world.run_to_completion("cairn-etcd-snapshot", |_| {}).await;
    world.run_to_completion("cairn-manifest-export", |_| {}).await;
    world
        .run_to_completion("cairn-pvc-ingest", |job| {
            set_env(job, "CAIRN_NAMESPACES", &data_ns);
            set_env(job, "CAIRN_IMAGE_PULL_POLICY", "Never");
            set_env(job, "CAIRN_INGEST_CPU", "50m");
        })
        .await;
    world.run_to_completion("cairn-maintain", |_| {}).await;

    // From the host, with the identity: the snapshots the Jobs wrote...
    let full = world.repo.open_full().await;
    let snaps = full.snapshots().await.unwrap();
    let sources: Vec<&str> = snaps.iter().map(|e| e.snapshot.source.as_str()).collect();
    eprintln!("[node] snapshots written by the CronJobs: {sources:?}");
    for want in ["etcd", "manifests"] {
        assert!(sources.iter().any(|s| s.starts_with(want)), "{want} in {sources:?}");
    }
    let pvc_source = format!("pvc/{data_ns}/data");
    assert!(sources.contains(&pvc_source.as_str()), "{sources:?}");
    assert!(snaps.iter().all(|e| e.snapshot.cluster.as_deref() == Some("node-test")));

    // ...pass a full check...
    let check = std::process::Command::new(workspace_bin("cairn"))
        .args([
            "--repo",
            &world.repo.url,
            "--identity",
            &world.repo.identity_text(),
            "check",
            "--read-data",
        ])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // ...and restore: the volume byte for byte (the 0600 file of another user included: the
    // ingest pod's root, limited to DAC_READ_SEARCH by runc, could read it)...
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("pvc");
    let restore = std::process::Command::new(workspace_bin("cairn"))
        .args(["--repo", &world.repo.url, "--identity", &world.repo.identity_text(), "restore"])
        .args(["--source", &pvc_source, "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    trees::assert_same_tree(&volume, &target);

    // ...and the etcd snapshot into a file etcdutl accepts.
    let db = out.path().join("etcd.db");
    let etcd = std::process::Command::new(workspace_bin("cairn-restore"))
        .args(["etcd", "--snapshot", "latest", "--source", "etcd", "--output"])
        .arg(&db)
        .env("CAIRN_REPO", &world.repo.url)
        .env("CAIRN_IDENTITY", world.repo.identity_text())
        .output()
        .unwrap();
    assert!(etcd.status.success(), "{}", String::from_utf8_lossy(&etcd.stderr));
    let status = std::process::Command::new(cairn_tests::bin("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    kubectl(&env("KUBECONFIG"), &["delete", "namespace", &data_ns, "--wait=false"], None);
    world.delete();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_failure_policy_retries_a_held_lock_and_fails_bad_input_at_once() {
    let world = install("cronpfp").await;

    // Exit 2 (bad input): the Job fails at its first pod, backoffLimit notwithstanding.
    world.job_from("cairn-etcd-snapshot", "usage", |job| set_env(job, "CAIRN_LOCK_WAIT", "soon"));
    let (end, obj) = world.wait_job("usage", Duration::from_secs(180)).await;
    assert_eq!(end, "Failed", "{obj:#}");
    let failed = obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap();
    assert_eq!(failed["reason"], "PodFailurePolicy", "{obj:#}");
    assert_eq!(obj["status"]["failed"], 1, "one pod, no retry: {obj:#}");

    // Exit 5 (lock held by another run): the pod is ignored and replaced until the lock is
    // free, then the Job completes.
    // The etcd job's lock (`etcd@<cluster>`), held from the host for 20 s and then released.
    let repo = world.repo.open_write().await;
    let options = LockOptions {
        lease: Duration::from_secs(30),
        purpose: "test: held".into(),
        ..Default::default()
    };
    let held =
        Lock::acquire(&repo, LockKind::Source("etcd@node-test".into()), &options).await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        held.release().await.unwrap();
    });
    world.job_from("cairn-etcd-snapshot", "locked", |job| set_env(job, "CAIRN_LOCK_WAIT", "0s"));
    let (end, obj) = world.wait_job("locked", Duration::from_secs(300)).await;
    release.await.unwrap();
    assert_eq!(end, "Complete", "{obj:#}");
    let pods = kubectl(
        &env("KUBECONFIG"),
        &["get", "pods", "-n", &world.ns, "-l", "job-name=locked", "-o", "json"],
        None,
    );
    let pods: Value = serde_json::from_str(&pods).unwrap();
    let exit_codes: Vec<i64> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64()
        })
        .collect();
    assert!(exit_codes.contains(&5), "a pod exited 5 while the lock was held: {exit_codes:?}");
    assert!(exit_codes.contains(&0), "a later pod succeeded: {exit_codes:?}");
    world.delete();
}

/// The read-only UI as shipped (`k8s-manifests/ui`): a Deployment of the `cairn` image that
/// listens on the pod's loopback only, reached the way its README says, through
/// `kubectl port-forward` (API server → kubelet → containerd's stream server → the pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ui_deployment_serves_the_repository_through_port_forward() {
    let kc = env("KUBECONFIG");
    let url = format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("uirepo"));
    let repo = repos::init(&url).await;
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("hello.txt"), "hello from the node").unwrap();
    let backup = std::process::Command::new(workspace_bin("cairn"))
        .args(["--repo", &url, "--write-key", &repo.write_key.to_text(), "backup"])
        .arg(source.path())
        .args(["--source", "ui-demo"])
        .output()
        .unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));

    let ns = unique("nodeui");
    let suffix = format!("-{}", &ns[ns.len() - 8..]);
    kubectl(&kc, &["create", "namespace", &ns], None);
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests/ui");
    let rendered = render(&ui, &ns, &suffix)
        .replace("ghcr.io/cairn-backup/cairn:0.1.0", "cairn:dev")
        .replace("s3://CHANGE-ME-bucket/cairn", &url);
    create_secret(&ns, "cairn-identity", &[("identity", repo.identity_text())]);
    create_secret(&ns, "cairn-store-credentials", &s3::store_env());
    kubectl(&kc, &["apply", "-f", "-"], Some(&rendered));
    let deploy = format!("deployment/cairn-ui{suffix}");
    kubectl(&kc, &["rollout", "status", &deploy, "-n", &ns, "--timeout=180s"], None);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut forward = tokio::process::Command::new(cairn_tests::bin("kubectl"))
        .args(["--kubeconfig", &kc, "port-forward", "-n", &ns, &deploy, &format!("{port}:7070")])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let snapshots: Value = loop {
        let got = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", &format!("http://localhost:{port}/api/snapshots")])
            .output()
            .unwrap();
        if got.status.success() {
            break serde_json::from_slice(&got.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "the UI never answered through port-forward");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(snapshots.to_string().contains("ui-demo"), "{snapshots:#}");
    forward.start_kill().unwrap();
    kubectl(&kc, &["delete", "namespace", &ns, "--wait=false"], None);
}
