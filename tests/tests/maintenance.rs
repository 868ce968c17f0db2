//! Many writers and a pruner on one repository (file:// and the real S3 server): after many
//! rounds every snapshot restores exactly, `check --read-data` passes, and the space of
//! forgotten snapshots is reclaimed. Plus a backup killed with SIGKILL mid-way.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_shared::Error;
use cairn_shared::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_shared::repo::check::{CheckOptions, check};
use cairn_shared::repo::forget::{self, GroupBy, KeepPolicy};
use cairn_shared::repo::lock::{BackupLocks, LockOptions};
use cairn_shared::repo::prune::{PruneOptions, PruneReport, prune};
use cairn_shared::repo::{Repository, SnapshotId};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{TreeSpec, digest, generate, mutate};

const WRITERS: usize = 8;
const ROUNDS: u64 = 6;

fn small_tree(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        depth: 2,
        max_entries: 8,
        max_file: 512 << 10,
        sparse_size: 0,
        ..Default::default()
    }
}

fn lease_for(url: &str) -> Duration {
    if url.starts_with("s3://") { Duration::from_secs(2) } else { Duration::from_millis(400) }
}

fn lock_opts(lease: Duration) -> LockOptions {
    LockOptions { lease, wait: lease * 6, purpose: "test".into(), ..Default::default() }
}

fn prune_opts(lease: Duration) -> PruneOptions {
    PruneOptions {
        grace: lease * 2,
        unindexed_age: lease * 2,
        max_unused: 0.0,
        lock: lock_opts(lease),
        ..Default::default()
    }
}

/// One locked backup, retried when a prune condemned data it reused (the documented
/// answer to that error).
async fn locked_backup(
    repo: &Arc<Repository>,
    dir: &Path,
    source: &str,
    lease: Duration,
) -> SnapshotId {
    for _ in 0..5 {
        let locks = BackupLocks::acquire(repo, source, &lock_opts(lease)).await.expect("locks");
        let opts = BackupOptions {
            source: source.into(),
            threads: 1,
            guard: Some(locks.guard()),
            ..Default::default()
        };
        let out = backup_dir(repo.clone(), dir, opts).await;
        locks.release().await.unwrap();
        match out {
            Ok(o) => return o.id,
            Err(Error::Retryable(m)) => eprintln!("backup of {source} retried: {m}"),
            Err(e) => panic!("backup of {source}: {e}"),
        }
    }
    panic!("backup of {source} kept failing")
}

async fn verify_all(
    t: &TestRepo,
    expected: &HashMap<SnapshotId, BTreeMap<String, String>>,
    scratch: &Path,
) -> usize {
    let full = t.open_full().await;
    let report = check(&full, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
    assert!(report.ok(), "{}: check: {:?}", t.url, report.problems);
    full.load_index().await.unwrap();
    let snaps = full.snapshots().await.unwrap();
    for s in &snaps {
        let want =
            expected.get(&s.id).unwrap_or_else(|| panic!("unknown snapshot {}", s.id.short()));
        let out = scratch.join(format!("restore-{}", s.id.short()));
        let r = restore(full.clone(), s.snapshot.root.clone(), &out, RestoreOptions::default())
            .await
            .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(&digest(&out), want, "{}: snapshot {} differs", t.url, s.id.short());
        std::fs::remove_dir_all(&out).unwrap();
    }
    snaps.len()
}

async fn pack_bytes(repo: &Repository) -> u64 {
    repo.store().list("packs/").await.unwrap().iter().map(|(_, s)| s).sum()
}

async fn writers_and_a_pruner(url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let lease = lease_for(url);
    let t = repos::init(url).await;
    let common = tmp.path().join("common");
    generate(&common, &small_tree(1));
    let dirs: Vec<PathBuf> = (0..WRITERS)
        .map(|i| {
            let d = tmp.path().join(format!("w{i}"));
            generate(&d.join("own"), &small_tree(100 + i as u64));
            d
        })
        .collect();
    let mut expected: HashMap<SnapshotId, BTreeMap<String, String>> = HashMap::new();

    let stop = Arc::new(AtomicBool::new(false));
    let full = t.open_full().await;
    let pruner = {
        let (stop, full) = (stop.clone(), full.clone());
        tokio::spawn(async move {
            let mut reports: Vec<PruneReport> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let policy = KeepPolicy { last: 2, ..Default::default() };
                forget::forget(&full, &policy, GroupBy::default(), None, false)
                    .await
                    .expect("forget");
                reports.push(prune(full.clone(), &prune_opts(lease)).await.expect("prune"));
                tokio::time::sleep(lease / 2).await;
            }
            reports
        })
    };
    let mut peak = 0;
    for round in 0..ROUNDS {
        mutate(&common, 1000 + round);
        let mut tasks = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let _ = std::fs::remove_dir_all(d.join("common"));
            let cp = std::process::Command::new("cp")
                .arg("-a")
                .arg(&common)
                .arg(d.join("common"))
                .status();
            assert!(cp.unwrap().success(), "cp -a");
            mutate(&d.join("own"), round * 100 + i as u64);
            let want = digest(d);
            let repo = t.open_write().await;
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let id = locked_backup(&repo, &d, &format!("w{i}"), lease).await;
                (id, want)
            }));
        }
        for task in tasks {
            let (id, want) = task.await.unwrap();
            expected.insert(id, want);
        }
        peak = peak.max(pack_bytes(&full).await);
        // Let the pruner act between rounds too, not only beside running backups.
        tokio::time::sleep(lease * 3).await;
    }
    stop.store(true, Ordering::SeqCst);
    let reports = pruner.await.unwrap();
    let prunes = reports.len();
    let deleted: u64 = reports.iter().map(|r| r.deleted_bytes).sum();
    eprintln!(
        "{url}: {prunes} prunes beside {WRITERS} writers × {ROUNDS} rounds, {deleted} bytes deleted meanwhile"
    );
    assert!(prunes >= 4, "the pruner ran {prunes} times");
    assert!(deleted > 0, "prunes beside the writers deleted nothing");
    verify_all(&t, &expected, tmp.path()).await;

    // Forget all but the last of each source; two prunes a grace period apart reclaim it.
    forget::forget(
        &full,
        &KeepPolicy { last: 1, ..Default::default() },
        GroupBy::default(),
        None,
        false,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        prune(full.clone(), &prune_opts(lease)).await.unwrap();
        tokio::time::sleep(lease * 2 + cairn_shared::repo::lock::CLOCK_RESOLUTION * 2).await;
    }
    let last = prune(full.clone(), &prune_opts(lease)).await.unwrap();
    let n = verify_all(&t, &expected, tmp.path()).await;
    assert_eq!(n, WRITERS);
    let after = pack_bytes(&full).await;
    eprintln!("{url}: packs {peak} bytes at peak, {after} after; final prune: {last:?}");
    assert!(after < peak, "space reclaimed: {after} < {peak}");
    assert_eq!(last.marked_packs, 0, "nothing left to mark: {last:?}");
    assert_eq!(last.unused_bytes, 0, "no waste left: {last:?}");
    let report = check(&full, &CheckOptions::default()).await.unwrap();
    assert!(report.unindexed_packs.is_empty(), "{:?}", report.unindexed_packs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_a_pruner_on_local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    writers_and_a_pruner(&format!("file://{}", tmp.path().join("repo").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_a_pruner_on_s3() {
    let url = format!(
        "s3://{}/{}",
        cairn_tests::env("CAIRN_TEST_S3_BUCKET"),
        cairn_tests::unique("many")
    );
    writers_and_a_pruner(&url).await;
}
