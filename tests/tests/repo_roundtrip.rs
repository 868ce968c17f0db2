//! Random trees with every kind of entry round-trip exactly through backup and restore, on
//! memory://, file:// and the real S3 server; incremental backups read only what changed.

use cairn_core::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_core::repo::ParentSpec;
use cairn_tests::repos;
use cairn_tests::trees::{TreeSpec, assert_same_tree, generate, mutate};

async fn round_trip(url: &str, spec: &TreeSpec) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    generate(&src, spec);
    let repo = repos::init(url).await;

    let writer_view = repo.open_write().await;
    let opts = BackupOptions { source: "test".into(), ..Default::default() };
    let first = backup_dir(writer_view.clone(), &src, opts.clone()).await.expect("first backup");
    assert!(!first.snapshot.partial, "failures: {:?}", first.snapshot.failures);

    let full = repo.open_full().await;
    let out1 = tmp.path().join("out1");
    let report =
        restore(full.clone(), first.snapshot.root.clone(), &out1, RestoreOptions::default())
            .await
            .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_same_tree(&src, &out1);

    let changed = mutate(&src, spec.seed + 100);
    let second = backup_dir(
        writer_view.clone(),
        &src,
        BackupOptions { parent: ParentSpec::Snapshot(first.id.to_hex()), ..opts },
    )
    .await
    .expect("incremental backup");
    let s = &second.snapshot.summary;
    assert!(
        s.files_read as usize <= changed,
        "incremental backup read {} files, only {changed} changed (of {})",
        s.files_read,
        s.files
    );
    let out2 = tmp.path().join("out2");
    restore(full.clone(), second.snapshot.root.clone(), &out2, RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(&src, &out2);

    let report = cairn_core::repo::check::check(
        &full,
        &cairn_core::repo::check::CheckOptions { read_data_fraction: 1.0 },
    )
    .await
    .unwrap();
    assert!(report.ok(), "check: {:?}", report.problems);
    assert_eq!(report.snapshots, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_trees_round_trip_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, url) in repos::backends(tmp.path()).iter().enumerate() {
        for seed in 0..3u64 {
            let spec = TreeSpec { seed: seed * 10 + i as u64, ..Default::default() };
            round_trip(&format!("{url}-{seed}"), &spec).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_deep_and_multi_gib_sparse_trees_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        seed: 7,
        depth: 1,
        max_entries: 3,
        wide: 5000,
        deep: 60,
        sparse_size: 3 << 30,
        ..Default::default()
    };
    round_trip(&format!("file://{}", tmp.path().join("repo").display()), &spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_and_an_empty_directory_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repos::init(&format!("memory://{}", cairn_tests::unique("single"))).await;
    let w = repo.open_write().await;
    let file = tmp.path().join("snapshot.db");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    let out =
        backup_dir(w.clone(), &file, BackupOptions { source: "etcd".into(), ..Default::default() })
            .await
            .unwrap();
    let full = repo.open_full().await;
    full.load_index().await.unwrap();
    let node = full.lookup(&out.snapshot, "snapshot.db").await.unwrap();
    assert_eq!(node.size, 3 << 20);
    let dest = tmp.path().join("restored");
    restore(full.clone(), out.snapshot.root.clone(), &dest, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("snapshot.db")).unwrap(), vec![7u8; 3 << 20]);

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = backup_dir(w, &empty, BackupOptions { source: "empty".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(out.snapshot.summary.files, 0);
    let dest = tmp.path().join("restored-empty");
    restore(full, out.snapshot.root, &dest, RestoreOptions::default()).await.unwrap();
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}
