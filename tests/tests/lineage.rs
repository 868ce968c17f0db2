//! Which snapshot a backup builds on, and how operators see it. A bucket shared by clusters
//! holds the same source names for different data: a parent must come from the same
//! (source, cluster), or files whose name, size and mtime match are reused with the other
//! cluster's bytes.

use std::process::Command;

use cairn_tests::{repos, workspace_bin};
use serde_json::Value;

fn cairn(url: &str, wk: &str) -> Command {
    let mut c = Command::new(workspace_bin("cairn"));
    c.env("CAIRN_REPO", url).env("CAIRN_WRITE_KEY", wk).env_remove("CAIRN_IDENTITY");
    c
}

fn run(mut c: Command) -> (i32, String) {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0, "{c:?} exited {code}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    (code, stdout)
}

/// Same file name, size and mtime in two clusters, different bytes: each cluster's
/// snapshot restores its own bytes (regression: the second backup took the first
/// cluster's snapshot as parent and reused its file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_is_taken_only_from_the_same_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let repo = repos::init(&url).await;
    let wk = repo.write_key.to_text();
    let mtime = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    let mut ids = Vec::new();
    for (cluster, content) in [("a", b"cluster a's bytes"), ("b", b"cluster b's BYTES")] {
        let dir = tmp.path().join(cluster);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), content).unwrap();
        filetime::set_file_mtime(dir.join("f"), mtime).unwrap();
        let mut c = cairn(&url, &wk);
        c.args(["--json", "backup", dir.to_str().unwrap(), "--source", "shared-name"])
            .args(["--cluster", cluster]);
        let (_, out) = run(c);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cluster"], cluster);
        assert_eq!(v["parent"], Value::Null, "no parent from another cluster: {v:#}");
        assert_eq!(v["summary"]["files_read"], 1, "the file is read, not reused: {v:#}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let full = repo.open_full().await;
    for (id, want) in ids.iter().zip([&b"cluster a's bytes"[..], &b"cluster b's BYTES"[..]]) {
        let snap = full.find_snapshot(id, None).await.unwrap();
        let node = full.lookup(&snap.snapshot, "f").await.unwrap();
        assert_eq!(full.read_file(&node).await.unwrap(), want, "snapshot {id}");
    }

    // A second backup in cluster a builds on cluster a's snapshot, not on b's newer one.
    let mut c = cairn(&url, &wk);
    c.args(["--json", "backup", tmp.path().join("a").to_str().unwrap()]).args([
        "--source",
        "shared-name",
        "--cluster",
        "a",
    ]);
    let (_, out) = run(c);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parent"], ids[0].as_str(), "{v:#}");
    assert_eq!(v["summary"]["files_read"], 0, "{v:#}");
}

/// `cairn snapshots` shows each snapshot's cluster, and `--cluster` filters by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_show_and_filter_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let repo = repos::init(&url).await;
    let wk = repo.write_key.to_text();
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    for cluster in ["east-prod", "west-prod"] {
        let mut c = cairn(&url, &wk);
        c.args(["backup", tmp.path().to_str().unwrap(), "--source", "app", "--cluster", cluster]);
        run(c);
    }
    let mut table = cairn(&url, &wk);
    table.arg("snapshots");
    let (_, text) = run(table);
    let header = text.lines().next().unwrap();
    assert!(header.contains("cluster"), "{text}");
    assert!(text.contains("east-prod") && text.contains("west-prod"), "{text}");

    let mut filtered = cairn(&url, &wk);
    filtered.args(["--json", "snapshots", "--cluster", "west-prod"]);
    let (_, out) = run(filtered);
    let v: Value = serde_json::from_str(&out).unwrap();
    let clusters: Vec<&str> =
        v.as_array().unwrap().iter().map(|s| s["cluster"].as_str().unwrap()).collect();
    assert_eq!(clusters, vec!["west-prod"]);

    // `latest` resolves within the cluster too.
    let mut ls = cairn(&url, &wk);
    ls.args(["--json", "snapshots", "--source", "app", "--cluster", "east-prod"]);
    let (_, out) = run(ls);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["cluster"], "east-prod");
}
