//! Restore anywhere (#9): a snapshot written as plain objects into another bucket of the
//! real S3 server, and as a tar stream that `tar --compare` accepts against the source tree.

use std::collections::BTreeMap;
use std::process::Command;

use cairn_core::fs::{BackupOptions, backup_dir};
use cairn_tests::trees::{TreeSpec, digest, generate};
use cairn_tests::{env, repos, unique, workspace_bin};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

fn spec(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        depth: 3,
        max_entries: 6,
        max_file: 12 << 20,
        sparse_size: 24 << 20,
        wide: 0,
        deep: 0,
    }
}

fn cairn(repo: &repos::TestRepo) -> Command {
    let mut c = Command::new(workspace_bin("cairn"));
    c.env("CAIRN_REPO", &repo.url).env("CAIRN_IDENTITY", repo.identity_text());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_a_bucket_prefix_as_plain_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    generate(&src, &spec(61));
    let repo =
        repos::init(&format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("anyrepo"))).await;
    let opts = BackupOptions { source: "pvc/app/uploads".into(), ..Default::default() };
    backup_dir(repo.open_write().await, &src, opts).await.unwrap();

    let prefix = unique("exported");
    let target = format!("s3://{}/{prefix}", env("CAIRN_TEST_S3_BUCKET"));
    let out = cairn(&repo)
        .args(["restore", "latest", "--source", "pvc/app/uploads", "--target", &target])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every regular file is an object at its path with the same bytes; nothing else is.
    // (Names that are not UTF-8 cannot be keys: they are reported as skipped.)
    let want: BTreeMap<String, String> = digest(&src)
        .into_iter()
        .filter(|(k, v)| v.starts_with("file ") && !k.contains('\u{FFFD}'))
        .collect();
    let store = cairn_tests::s3::store();
    let listed: Vec<object_store::ObjectMeta> =
        store.list(Some(&prefix.as_str().into())).try_collect().await.unwrap();
    let mut got = BTreeMap::new();
    for meta in &listed {
        let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        let key = meta.location.as_ref().strip_prefix(&format!("{prefix}/")).unwrap().to_string();
        got.insert(key, format!("file {} {}", bytes.len(), blake3::hash(&bytes).to_hex()));
    }
    assert_eq!(got, want, "the bucket prefix holds the tree's files");
    assert!(
        want.values().any(|v| v.split(' ').nth(1).unwrap().parse::<u64>().unwrap() > 8 << 20),
        "a multipart-sized file was among them"
    );
    // Object metadata keeps the mode.
    let some = listed.iter().find(|m| m.size > 0).unwrap();
    let got = store.get(&some.location).await.unwrap();
    let mode = got.attributes.get(&object_store::Attribute::Metadata("cairn-mode".into()));
    assert!(mode.is_some(), "mode recorded as object metadata: {:?}", got.attributes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_stream_equals_the_tree_and_selection_narrows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    generate(&src, &spec(62));
    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let opts = BackupOptions { source: "tree".into(), ..Default::default() };
    backup_dir(repo.open_write().await, &src, opts).await.unwrap();

    let tar_path = tmp.path().join("out.tar");
    let out = cairn(&repo)
        .args(["restore", "latest", "--source", "tree", "--target", "-"])
        .stdout(std::fs::File::create(&tar_path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // GNU tar compares contents, sizes, modes, owners, mtimes, link targets and hard links.
    let cmp = Command::new("tar")
        .arg("--compare")
        .arg("-f")
        .arg(&tar_path)
        .arg("-C")
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "tar -d found differences:\n{}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    // And it holds every entry of the tree.
    let list = Command::new("tar").arg("-tf").arg(&tar_path).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).lines().count();
    assert_eq!(listed, digest(&src).len(), "one tar entry per path");

    // --exclude narrows it down.
    let out = cairn(&repo)
        .args(["restore", "latest", "--source", "tree", "--target", "-", "--exclude", "sparse.img"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let narrowed = tmp.path().join("narrow.tar");
    std::fs::write(&narrowed, &out.stdout).unwrap();
    let list = Command::new("tar").arg("-tf").arg(&narrowed).output().unwrap();
    let names = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(!names.lines().any(|l| l == "sparse.img"), "{names}");
    assert_eq!(names.lines().count(), digest(&src).len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_prefix_backs_up_and_an_unchanged_one_adds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    generate(&src, &spec(63));
    let bucket = env("CAIRN_TEST_S3_BUCKET");
    let repo = repos::init(&format!("s3://{bucket}/{}", unique("bucketrepo"))).await;
    backup_dir(
        repo.open_write().await,
        &src,
        BackupOptions { source: "tree".into(), ..Default::default() },
    )
    .await
    .unwrap();
    // The tree goes out as objects (the PVC-to-bucket direction) ...
    let prefix = unique("uploads");
    let url = format!("s3://{bucket}/{prefix}");
    let out = cairn(&repo)
        .args(["restore", "latest", "--source", "tree", "--target", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ... and comes back in as a bucket backup: its content is already in the repository.
    let backup = |parent: &str| {
        let out = Command::new(workspace_bin("cairn"))
            .args(["backup", &url, "--source", "bucket/uploads", "--parent", parent, "--json"])
            .env("CAIRN_REPO", &repo.url)
            .env("CAIRN_WRITE_KEY", repo.write_key.to_text())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = backup("auto");
    let files = first["summary"]["files"].as_u64().unwrap();
    let want = digest(&src).values().filter(|v| v.starts_with("file ")).count() as u64;
    assert!(files > 0 && files <= want, "{first:#}");
    assert!(
        first["summary"]["new_bytes"].as_u64().unwrap() < 64 << 10,
        "the data deduplicates against the tree's: {first:#}"
    );
    // Unchanged: listed, nothing fetched, nothing new.
    let second = backup("auto");
    assert_eq!(second["summary"]["files"], files);
    assert_eq!(second["summary"]["files_read"], 0, "{second:#}");
    assert!(second["summary"]["new_bytes"].as_u64().unwrap() < 16 << 10, "{second:#}");
    // --exclude leaves keys out.
    let out = Command::new(workspace_bin("cairn"))
        .args(["backup", &url, "--source", "bucket/partial", "--exclude", "sparse.img", "--json"])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_WRITE_KEY", repo.write_key.to_text())
        .output()
        .unwrap();
    let partial: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(partial["summary"]["files"].as_u64().unwrap(), files - 1, "{partial:#}");
    // And it restores to the same bytes.
    let back = tmp.path().join("back");
    let out = cairn(&repo)
        .args([
            "restore",
            "latest",
            "--source",
            "bucket/uploads",
            "--target",
            back.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored: BTreeMap<String, String> =
        digest(&back).into_iter().filter(|(_, v)| v.starts_with("file ")).collect();
    let original: BTreeMap<String, String> = digest(&src)
        .into_iter()
        .filter(|(k, v)| v.starts_with("file ") && !k.contains('\u{FFFD}'))
        .collect();
    assert_eq!(restored, original);
}
