//! The write credential backs up (also incrementally) and lists, but cannot read file
//! contents; an identity can; a wrong identity or a foreign write key is refused with exit 4.

use cairn::Cli;
use cairn_core::Exit;
use cairn_tests::{repos, unique};
use clap::Parser;

async fn cairn(args: &[&str]) -> Exit {
    let mut argv = vec!["cairn"];
    argv.extend_from_slice(args);
    cairn::run(Cli::try_parse_from(argv).expect("arguments parse")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_key_backs_up_but_cannot_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id_file = dir.join("id.txt");
    let wk = dir.join("wk.txt");
    let url = format!("s3://{}/{}", cairn_tests::env("CAIRN_TEST_S3_BUCKET"), unique("access"));
    assert_eq!(
        cairn(&["key", "generate", "--out", id_file.to_str().unwrap()]).await,
        Exit::Success
    );
    let text = std::fs::read_to_string(&id_file).unwrap();
    let recipient =
        text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    assert_eq!(
        cairn(&[
            "--repo",
            &url,
            "init",
            "--recipient",
            &recipient,
            "--write-key-out",
            wk.to_str().unwrap()
        ])
        .await,
        Exit::Success
    );

    let src = dir.join("src");
    std::fs::create_dir_all(src.join("secrets")).unwrap();
    std::fs::write(src.join("secrets/password"), b"hunter2").unwrap();
    std::fs::write(src.join("big.bin"), vec![42u8; 5 << 20]).unwrap();
    let w = ["--repo", &url, "--write-key", wk.to_str().unwrap()];
    let backup = |extra: &'static str| {
        let mut a: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        a.extend([
            "backup".into(),
            src.to_str().unwrap().into(),
            "--source".into(),
            "app".into(),
            "--tag".into(),
            extra.into(),
        ]);
        a
    };
    let a1 = backup("run=1");
    assert_eq!(cairn(&a1.iter().map(String::as_str).collect::<Vec<_>>()).await, Exit::Success);
    std::fs::write(src.join("secrets/password"), b"hunter3").unwrap();
    let a2 = backup("run=2");
    assert_eq!(cairn(&a2.iter().map(String::as_str).collect::<Vec<_>>()).await, Exit::Success);

    // Incremental: the second backup reused the unchanged big file.
    let repo = repos::TestRepo {
        url: url.clone(),
        identity: text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().parse().unwrap(),
        write_key: cairn_core::repo::WriteKey::from_text(&std::fs::read_to_string(&wk).unwrap())
            .unwrap(),
    };
    let wrepo = repo.open_write().await;
    let snaps = wrepo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[1].snapshot.summary.files_read, 1, "only the changed file is read");
    assert_eq!(snaps[1].snapshot.parent, Some(snaps[0].id));

    // Metadata is readable with the write key: list and ls work.
    let mut ls: Vec<&str> = w.to_vec();
    ls.extend(["ls", "latest:secrets", "--source", "app"]);
    assert_eq!(cairn(&ls).await, Exit::Success);

    // Contents are not: restore, cat and read-data check are refused with exit 4...
    let target = dir.join("out");
    let mut restore: Vec<&str> = w.to_vec();
    restore.extend(["restore", "latest", "--source", "app", "--target", target.to_str().unwrap()]);
    assert_eq!(cairn(&restore).await, Exit::Integrity);
    assert!(!target.join("secrets/password").exists());
    let mut cat: Vec<&str> = w.to_vec();
    cat.extend(["cat", "latest:secrets/password", "--source", "app"]);
    assert_eq!(cairn(&cat).await, Exit::Integrity);
    // ...and the library refuses the data blob even when asked directly.
    wrepo.load_index().await.unwrap();
    let node = wrepo.lookup(&snaps[1].snapshot, "secrets/password").await.unwrap();
    let blob = node.content[0].id.unwrap();
    assert!(matches!(wrepo.read_blob(&blob).await, Err(cairn_core::Error::Denied(_))));

    // The identity reads everything.
    let full = repo.open_full().await;
    full.load_index().await.unwrap();
    assert_eq!(full.read_blob(&blob).await.unwrap(), b"hunter3");
    let mut r: Vec<&str> = vec!["--repo", &url, "--identity", id_file.to_str().unwrap()];
    r.extend(["restore", "latest", "--source", "app", "--target", target.to_str().unwrap()]);
    assert_eq!(cairn(&r).await, Exit::Success);
    assert_eq!(std::fs::read(target.join("secrets/password")).unwrap(), b"hunter3");

    // A different identity, and a write key of another repository, are refused.
    let other = dir.join("other.txt");
    assert_eq!(cairn(&["key", "generate", "--out", other.to_str().unwrap()]).await, Exit::Success);
    assert_eq!(
        cairn(&["--repo", &url, "--identity", other.to_str().unwrap(), "snapshots"]).await,
        Exit::Integrity
    );
    let foreign =
        cairn_core::repo::WriteKey::generate(cairn_core::repo::RepoId::random()).to_text();
    assert_eq!(
        cairn(&["--repo", &url, "--write-key", &foreign, "snapshots"]).await,
        Exit::Integrity
    );
}

#[tokio::test]
async fn bad_input_gets_a_usage_exit_code() {
    assert_eq!(
        cairn(&["--repo", "ftp://nowhere", "--write-key", "CAIRN-WRITE-KEY-1 x y", "snapshots"])
            .await,
        Exit::Usage
    );
    assert_eq!(
        cairn(&[
            "--repo",
            &format!("memory://{}", unique("none")),
            "--identity",
            "AGE-SECRET-KEY-1QQQ",
            "snapshots"
        ])
        .await,
        Exit::Usage
    );
    let tmp = tempfile::tempdir().unwrap();
    let id = tmp.path().join("id.txt");
    assert_eq!(cairn(&["key", "generate", "--out", id.to_str().unwrap()]).await, Exit::Success);
    // No repository at the location: usage (NotFound), not a crash.
    let url = format!("file://{}", tmp.path().join("nothing-here").display());
    assert_eq!(
        cairn(&["--repo", &url, "--identity", id.to_str().unwrap(), "snapshots"]).await,
        Exit::Usage
    );
}

/// A long-running reader (`cairn ui`) refreshes its snapshot list by listing names and
/// fetching only records it has not opened yet; forgotten records drop out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_refresh_fetches_only_new_records_and_drops_forgotten_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let test_repo = repos::init(&url).await;
    let wk = test_repo.write_key.to_text();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let backup = |content: &'static str| {
        let (url, wk, data) = (url.clone(), wk.clone(), data.clone());
        async move {
            std::fs::write(data.join("f"), content).unwrap();
            let d = data.to_str().unwrap();
            assert_eq!(
                cairn(&["--repo", &url, "--write-key", &wk, "backup", d, "--source", "s"]).await,
                Exit::Success
            );
        }
    };
    backup("one").await;
    let repo = test_repo.open_write().await;
    let (mut first, failures) = repo.snapshots_refresh(&[]).await.unwrap();
    assert_eq!((first.len(), failures.len()), (1, 0));
    // Mark the cached copy: if the refresh fetched it again, the mark would be gone.
    first[0].snapshot.host = "from-the-cache".into();
    backup("two").await;
    let (second, _) = repo.snapshots_refresh(&first).await.unwrap();
    assert_eq!(second.len(), 2);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].snapshot.host, "from-the-cache", "a known record was fetched again");
    assert_ne!(second[1].snapshot.host, "from-the-cache");
    let forget = ["--repo", &url, "--write-key", &wk, "forget", "--keep-last", "1"];
    assert_eq!(cairn(&forget).await, Exit::Success);
    let (third, _) = repo.snapshots_refresh(&second).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].id, second[1].id);
}
