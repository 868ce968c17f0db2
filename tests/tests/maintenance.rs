//! Many writers and a pruner on one repository (file:// and the real S3 server): after many
//! rounds every snapshot restores exactly, `check --read-data` passes, and the space of
//! forgotten snapshots is reclaimed. Plus a backup killed with SIGKILL mid-way.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_core::Error;
use cairn_core::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_core::repo::check::{CheckOptions, check};
use cairn_core::repo::forget::{self, GroupBy, KeepPolicy};
use cairn_core::repo::lock::{BackupLocks, LockOptions};
use cairn_core::repo::prune::{PruneOptions, PruneReport, prune};
use cairn_core::repo::{Repository, SnapshotId};
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
    if url.starts_with("s3://") { Duration::from_secs(2) } else { Duration::from_secs(1) }
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
        tokio::time::sleep(lease * 2 + cairn_core::repo::lock::CLOCK_RESOLUTION * 2).await;
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

fn cairn_bin() -> PathBuf {
    cairn_tests::workspace_bin("cairn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_killed_with_sigkill_leaves_a_sound_repository() {
    use rand::{RngCore, SeedableRng};
    use std::os::unix::process::ExitStatusExt;

    let tmp = tempfile::tempdir().unwrap();
    let url = format!(
        "s3://{}/{}",
        cairn_tests::env("CAIRN_TEST_S3_BUCKET"),
        cairn_tests::unique("kill")
    );
    let t = repos::init(&url).await;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for i in 0..64 {
        let mut buf = vec![0u8; 2 << 20];
        rng.fill_bytes(&mut buf);
        std::fs::write(data.join(format!("f{i:02}")), buf).unwrap();
    }
    let want = digest(&data);
    let wk = t.write_key.to_text();
    let mut child = std::process::Command::new(cairn_bin())
        .args(["--repo", &url, "--write-key", &wk, "backup", data.to_str().unwrap()])
        .args(["--source", "victim", "--lock-lease", "2s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let repo = t.open_full().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let packs = repo.store().list("packs/").await.unwrap().len();
        if packs >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the backup never uploaded a pack");
        assert!(child.try_wait().unwrap().is_none(), "the backup ended before it could be killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");

    let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
    assert!(report.ok(), "after SIGKILL: {:?}", report.problems);
    assert!(repo.snapshots().await.unwrap().is_empty(), "no snapshot from a killed backup");
    let held = cairn_core::repo::lock::list_locks(&repo).await.unwrap();
    assert_eq!(held.len(), 2, "the dead run's source and shared locks: {held:?}");

    // The next run waits out the dead run's lease and succeeds, no unlock needed.
    let argv: Vec<String> =
        ["cairn", "--repo", &url, "--write-key", &wk, "backup", data.to_str().unwrap()]
            .into_iter()
            .chain(["--source", "victim", "--lock-lease", "2s", "--lock-wait", "20s"])
            .map(String::from)
            .collect();
    let exit = cairn::run(<cairn::Cli as clap::Parser>::try_parse_from(argv).unwrap()).await;
    assert_eq!(exit, cairn_core::Exit::Success);

    // Two prunes a grace period apart remove what the killed run left.
    let opts = PruneOptions {
        grace: Duration::from_secs(4),
        unindexed_age: Duration::from_secs(4),
        lock: lock_opts(Duration::from_secs(2)),
        ..Default::default()
    };
    for _ in 0..2 {
        prune(repo.clone(), &opts).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    prune(repo.clone(), &opts).await.unwrap();
    let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.unindexed_packs.is_empty(), "left over: {:?}", report.unindexed_packs);
    repo.load_index().await.unwrap();
    let snap = repo.find_snapshot("latest", Some("victim")).await.unwrap();
    let out = tmp.path().join("out");
    restore(repo.clone(), snap.snapshot.root, &out, RestoreOptions::default()).await.unwrap();
    assert_eq!(digest(&out), want);
}

/// A writer that reused data from a pack, while a prune marked that pack and a later prune
/// deleted it *and* its mark, must not commit: its commit check sees the index compacted
/// under it and finds the data gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_outliving_mark_and_delete_does_not_commit() {
    use cairn_core::repo::{BlobKind, Extent, Name, Node, NodeKind, TreeBlob};
    let t = repos::init(&format!("memory://{}", cairn_tests::unique("outlive"))).await;
    let tmp = tempfile::tempdir().unwrap();
    let content = b"data only the forgotten snapshot had".to_vec();
    std::fs::write(tmp.path().join("f"), &content).unwrap();
    let full = t.open_full().await;
    let old = backup_dir(
        full.clone(),
        tmp.path(),
        BackupOptions { source: "a".into(), ..Default::default() },
    )
    .await
    .unwrap();
    full.store().delete(&format!("snapshots/{}", old.id)).await.unwrap(); // forgotten

    // The long-running writer loads the index and reuses the blob.
    let w = t.open_write().await;
    w.load_index().await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let w2 = w.clone();
    let index = w.index().await.unwrap();
    let (relied, root) = tokio::task::spawn_blocking(move || {
        let writer = w2.writer(index, handle);
        let added = writer.add_blob(BlobKind::Data, &content).unwrap();
        assert_eq!(added.stored, 0, "reused from the forgotten snapshot's pack");
        let mut file = Node::new(Name(b"f".to_vec()), NodeKind::File);
        file.size = content.len() as u64;
        file.content = vec![Extent { id: Some(added.id), len: file.size }];
        let mut root = Node::new(Name(Vec::new()), NodeKind::Dir);
        root.subtree =
            vec![writer.add_blob(BlobKind::Tree, &TreeBlob::encode(&[file])).unwrap().id];
        writer.flush().unwrap();
        (writer.relied(), root)
    })
    .await
    .unwrap();
    assert!(!relied.is_empty());

    // Meanwhile: one prune marks the pack, a later one deletes it and removes the mark.
    let lease = Duration::from_secs(1);
    let first = prune(full.clone(), &prune_opts(lease)).await.unwrap();
    assert!(first.marked_packs > 0, "{first:?}");
    tokio::time::sleep(lease * 2 + Duration::from_millis(100)).await;
    let second = prune(full.clone(), &prune_opts(lease)).await.unwrap();
    assert!(second.deleted_packs > 0 && second.marks_removed > 0, "{second:?}");
    assert!(full.store().list("gc/").await.unwrap().is_empty(), "the mark is gone");

    let mut snapshot = old.snapshot.clone();
    snapshot.root = root;
    let err = w.commit_snapshot(&snapshot, relied, None).await.unwrap_err();
    assert!(matches!(err, Error::Retryable(_)), "{err}");
    assert!(w.snapshots().await.unwrap().is_empty(), "nothing committed");
}
