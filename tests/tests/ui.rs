//! `cairn ui` in a real browser: a repository made by the real jobs of the test world (two
//! manifest exports of the kube-apiserver with a Deployment scaled in between and a Node with
//! status, an etcd snapshot over mTLS, a PVC ingest), served by two `cairn ui` processes (with
//! the identity, and with the write key only), driven by tests/ui/e2e.cjs in Debian's headless
//! Chromium through playwright-core. Screenshots and downloads: target/ui-artifacts/.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn_tests::manifests::{delete_namespace, kubectl};
use cairn_tests::repos;
use cairn_tests::{env, unique, workspace_bin};

/// A `cairn ui` process, killed when dropped.
struct Ui {
    child: Child,
    url: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ui(repo: &str, credential: (&str, &str)) -> Ui {
    let mut child = Command::new(workspace_bin("cairn"))
        .args(["--repo", repo, credential.0, credential.1, "ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cairn ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("cairn ui output");
    // "cairn ui: serving http://127.0.0.1:PORT/ (...)"
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Ui { child, url }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export(repo: &str, wk: &str, ns: &str) -> String {
    let out = run(Command::new(workspace_bin("cairn-manifest-export")).args([
        "--repo",
        repo,
        "--write-key",
        wk,
        "-n",
        ns,
        "--cluster-resources",
        "always",
        "--cluster",
        "ui-test",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("export summary");
    v["snapshot"].as_str().expect("snapshot id").to_string()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-artifacts");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn browse_timeline_deployment_over_time_diff_and_download() {
    let kc = env("KUBECONFIG");
    let ns = unique("ui");
    let node = unique("ui-node");
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let test_repo = repos::init(&url).await;
    let wk = test_repo.write_key.to_text();
    let identity = test_repo.identity_text();

    // The cluster at the first time: a Deployment of 2 and a Node with capacity.
    kubectl(&kc, &["create", "namespace", &ns], None);
    kubectl(
        &kc,
        &[
            "create",
            "deployment",
            "shop",
            "--image=registry.example/shop:1.4",
            "--replicas=2",
            "-n",
            &ns,
        ],
        None,
    );
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    node-role.kubernetes.io/worker: \"\"\n"
        )),
    );
    let status = r#"{"status":{"capacity":{"cpu":"4","memory":"16Gi","pods":"110"},"allocatable":{"cpu":"3800m","memory":"15Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"2026-11-28T10:00:00Z","lastTransitionTime":"2026-11-28T10:00:00Z"}],"nodeInfo":{"kubeletVersion":"v1.34.4","machineID":"m","systemUUID":"s","bootID":"b","kernelVersion":"6","osImage":"Debian","containerRuntimeVersion":"containerd://2","kubeProxyVersion":"","operatingSystem":"linux","architecture":"amd64"}}}"#;
    kubectl(
        &kc,
        &["patch", "node", &node, "--subresource=status", "--type=merge", "-p", status],
        None,
    );
    let snap1 = export(&url, &wk, &ns);

    // ...and later: scaled to 5.
    kubectl(&kc, &["scale", "deployment", "shop", "--replicas=5", "-n", &ns], None);
    let snap2 = export(&url, &wk, &ns);

    // An etcd snapshot over mTLS.
    run(Command::new(workspace_bin("cairn-etcd-snapshot")).args([
        "--repo",
        &url,
        "--write-key",
        &wk,
        "--endpoints",
        &env("CAIRN_TEST_ETCD_ENDPOINTS"),
        "--cacert",
        &env("CAIRN_TEST_ETCD_CACERT"),
        "--cert",
        &env("CAIRN_TEST_ETCD_CERT"),
        "--key",
        &env("CAIRN_TEST_ETCD_KEY"),
        "--cluster",
        "ui-test",
    ]));

    // A PVC's volume, as the ingest pod reads it.
    let volume = tmp.path().join("volume");
    std::fs::create_dir_all(volume.join("reports/2026")).unwrap();
    let content: Vec<u8> =
        (0..300_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    std::fs::write(volume.join("reports/summary.csv"), &content).unwrap();
    std::fs::write(volume.join("reports/2026/q4.txt"), b"fourth quarter\n").unwrap();
    std::fs::write(volume.join("README"), b"volume root\n").unwrap();
    let pvc = format!("{ns}/data");
    run(Command::new(workspace_bin("cairn-pvc-ingest"))
        .args(["ingest", "--path"])
        .arg(&volume)
        .args(["--pvc", &pvc, "--cluster", "ui-test", "--termination-log"])
        .arg(tmp.path().join("termination-log"))
        .env("CAIRN_REPO", &url)
        .env("CAIRN_WRITE_KEY", &wk));

    let full = start_ui(&url, ("--identity", &identity));
    let locked = start_ui(&url, ("--write-key", &wk));
    let playwright =
        run(Command::new("bash").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/setup.sh")));
    let out = artifacts();
    let status = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/e2e.cjs"))
        .env("CAIRN_PLAYWRIGHT", playwright.trim())
        .env("CAIRN_UI_URL", &full.url)
        .env("CAIRN_UI_URL_LOCKED", &locked.url)
        .env("CAIRN_UI_ARTIFACTS", &out)
        .env("CAIRN_UI_NS", &ns)
        .env("CAIRN_UI_DEPLOYMENT", "shop")
        .env("CAIRN_UI_NODE", &node)
        .env("CAIRN_UI_SNAP1", &snap1)
        .env("CAIRN_UI_SNAP2", &snap2)
        .env("CAIRN_UI_PVC_SOURCE", format!("pvc/{pvc}"))
        .env("CAIRN_UI_PVC_DIR", "reports")
        .env("CAIRN_UI_PVC_FILE", "summary.csv")
        .status()
        .expect("run node tests/ui/e2e.cjs");
    kubectl(&kc, &["delete", "node", &node, "--wait=false"], None);
    delete_namespace(&kc, &ns);
    assert!(status.success(), "the browser test failed; screenshots in {}", out.display());

    // What the browser downloaded is what the volume held.
    assert_eq!(std::fs::read(out.join("download-file")).unwrap(), content);
    let listing = run(Command::new("tar").arg("-tvf").arg(out.join("download-folder.tar")));
    assert!(listing.contains("summary.csv") && listing.contains("2026/q4.txt"), "{listing}");
    let extracted = tmp.path().join("extracted");
    std::fs::create_dir_all(&extracted).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(out.join("download-folder.tar"))
        .arg("-C")
        .arg(&extracted));
    assert_eq!(std::fs::read(extracted.join("summary.csv")).unwrap(), content);
    assert_eq!(std::fs::read(extracted.join("2026/q4.txt")).unwrap(), b"fourth quarter\n");
    for shot in ["01-timeline", "03-deployment-second", "05-diff", "07-files", "08-metadata-only"] {
        assert!(out.join(format!("{shot}.png")).exists(), "screenshot {shot} missing");
    }
}
