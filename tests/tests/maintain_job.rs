//! `cairn-maintain` against the real S3 server: forget + prune + sampled check in one run,
//! its summary, and its exit codes (another prune running: 5; damage: 4).

use std::time::Duration;

use cairn_core::Exit;
use cairn_core::fs::{BackupOptions, backup_dir};
use cairn_core::repo::lock::{Lock, LockKind, LockOptions};
use cairn_tests::repos;
use cairn_tests::trees::{TreeSpec, generate, mutate};
use clap::Parser;

async fn maintain(args: &[&str]) -> Exit {
    let argv = std::iter::once("cairn-maintain").chain(args.iter().copied());
    cairn_maintain::run(cairn_maintain::Cli::try_parse_from(argv).expect("arguments parse")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_forgets_prunes_and_checks_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!(
        "s3://{}/{}",
        cairn_tests::env("CAIRN_TEST_S3_BUCKET"),
        cairn_tests::unique("maint")
    );
    let t = repos::init(&url).await;
    let src = tmp.path().join("src");
    generate(&src, &TreeSpec { seed: 3, sparse_size: 0, ..Default::default() });
    let w = t.open_write().await;
    for round in 0..3 {
        mutate(&src, round);
        // Data only this snapshot has: forgetting it frees real space.
        let mut unique = vec![0u8; 2 << 20];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut unique);
        std::fs::write(src.join("unique.bin"), unique).unwrap();
        backup_dir(
            w.clone(),
            &src,
            BackupOptions { source: "pvc/a/b".into(), ..Default::default() },
        )
        .await
        .unwrap();
    }
    let id = t.identity_text();
    let common = [
        "--repo",
        &url,
        "--identity",
        &id,
        "--keep-last",
        "1",
        "--grace",
        "4s",
        "--lock-lease",
        "2s",
        "--unindexed-age",
        "4s",
        "--check-subset",
        "100%",
        "--json",
    ];

    // Another prune holds the maintenance lock: exit 5, nothing done.
    let full = t.open_full().await;
    let held = Lock::acquire(
        &full,
        LockKind::Maintenance,
        &LockOptions { lease: Duration::from_secs(30), ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(maintain(&common).await, Exit::Locked);
    held.release().await.unwrap();
    assert_eq!(full.snapshots().await.unwrap().len(), 3, "a locked-out run changed nothing");

    // First run forgets two snapshots and marks their packs; a run after the grace period
    // deletes them.
    let before: u64 = full.store().list("packs/").await.unwrap().iter().map(|(_, s)| s).sum();
    assert_eq!(maintain(&common).await, Exit::Success);
    assert_eq!(full.snapshots().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(maintain(&common).await, Exit::Success);
    let after: u64 = full.store().list("packs/").await.unwrap().iter().map(|(_, s)| s).sum();
    assert!(after < before, "space reclaimed: {after} < {before}");

    // Damage: flip a byte in a pack. The check step finds it: exit 4.
    let (key, _) = full.store().list("packs/").await.unwrap().into_iter().next().unwrap();
    let mut bytes = full.store().get(&key).await.unwrap().to_vec();
    bytes[20] ^= 0xff;
    full.store().delete(&key).await.unwrap();
    full.store().create(&key, bytes.into()).await.unwrap();
    let no_prune: Vec<&str> = common.iter().copied().chain(["--no-prune"]).collect();
    assert_eq!(maintain(&no_prune).await, Exit::Integrity);
}
