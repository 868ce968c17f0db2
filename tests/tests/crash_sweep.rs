//! Crash safety, swept: a store that lets N operations through and fails every later one
//! (what the store sees of a process that died after its N-th request), for every N, during
//! a backup, a forget and a prune. After each: `check --read-data` passes, every snapshot
//! restores exactly, the next run succeeds without manual steps, and prune cleans up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_core::repo::check::{CheckOptions, check};
use cairn_core::repo::forget::{self, GroupBy, KeepPolicy};
use cairn_core::repo::lock::{BackupLocks, LockOptions};
use cairn_core::repo::prune::{PruneOptions, prune};
use cairn_core::repo::{RetryPolicy, SnapshotId, Store};
use cairn_tests::faulty::{Faulty, clone_memory};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{TreeSpec, digest, generate, mutate};
use object_store::ObjectStore;

const LEASE: Duration = Duration::from_millis(1000);
const GRACE: Duration = Duration::from_millis(2000);
/// Long enough for the locks of a dead run to expire (lease + the clock slack).
const EXPIRY: Duration = Duration::from_millis(1000 + 1000 + 300);

type Digest = BTreeMap<String, String>;

struct World {
    base: Arc<dyn ObjectStore>,
    t: TestRepo,
    src: PathBuf,
    expected: HashMap<SnapshotId, Digest>,
    /// What a backup of `src` must restore to.
    next: Digest,
    scratch: PathBuf,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Backup,
    Forget,
    Prune,
}

fn lock_opts() -> LockOptions {
    LockOptions { lease: LEASE, wait: EXPIRY * 2, purpose: "sweep".into(), ..Default::default() }
}

fn prune_opts() -> PruneOptions {
    PruneOptions {
        grace: GRACE,
        unindexed_age: GRACE,
        max_unused: 0.0,
        lock: lock_opts(),
        ..Default::default()
    }
}

fn small(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        depth: 2,
        max_entries: 5,
        max_file: 256 << 10,
        sparse_size: 0,
        ..Default::default()
    }
}

fn store(inner: &Arc<dyn ObjectStore>) -> Store {
    Store::from_object_store(inner.clone(), "memory://sweep")
}

async fn run_step(step: Step, store: Store, w: &World) -> cairn_core::Result<()> {
    match step {
        Step::Backup => {
            let repo = w.t.open_on(store, false).await?;
            let locks = BackupLocks::acquire(&repo, "s", &lock_opts()).await?;
            let opts = BackupOptions {
                source: "s".into(),
                threads: 1,
                guard: Some(locks.guard()),
                ..Default::default()
            };
            let out = backup_dir(repo, &w.src, opts).await;
            let released = locks.release().await;
            out?;
            released
        }
        Step::Forget => {
            let repo = w.t.open_on(store, false).await?;
            let by = GroupBy { cluster: true, source: false, host: false };
            forget::forget(&repo, &KeepPolicy { last: 1, ..Default::default() }, by, None, false)
                .await
                .map(|_| ())
        }
        Step::Prune => {
            let repo = w.t.open_on(store, true).await?;
            prune(repo, &prune_opts()).await.map(|_| ())
        }
    }
}

/// The repository is sound and every snapshot in it restores to what was backed up.
async fn verify(w: &World, inner: &Arc<dyn ObjectStore>, what: &str) -> usize {
    let full = w.t.open_on(store(inner), true).await.expect("open");
    let report = check(&full, &CheckOptions { read_data_fraction: 1.0 }).await.expect("check runs");
    assert!(report.ok(), "{what}: check: {:?}", report.problems);
    full.load_index().await.unwrap();
    let snaps = full.snapshots().await.unwrap();
    for s in &snaps {
        let want = w.expected.get(&s.id).unwrap_or(&w.next);
        let out = w.scratch.join(format!("r-{}", rand::random::<u64>()));
        let r = restore(full.clone(), s.snapshot.root.clone(), &out, RestoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{what}: restore {}: {e}", s.id.short()));
        assert!(r.failures.is_empty(), "{what}: {:?}", r.failures);
        assert_eq!(&digest(&out), want, "{what}: snapshot {} restores differently", s.id.short());
        std::fs::remove_dir_all(&out).unwrap();
    }
    report.unindexed_packs.len()
}

async fn build_world(tmp: &Path) -> World {
    let base: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let t = repos::init_on(store(&base)).await;
    let src = tmp.join("src");
    let other = tmp.join("other");
    generate(&src, &small(1));
    generate(&other, &small(2));
    let mut w = World {
        base: base.clone(),
        t,
        src: src.clone(),
        expected: HashMap::new(),
        next: Digest::new(),
        scratch: tmp.join("scratch"),
    };
    let repo = w.t.open_on(store(&base), true).await.unwrap();
    for (dir, source, change) in [(&src, "s", false), (&src, "s", true), (&other, "t", false)] {
        if change {
            mutate(dir, 7);
        }
        let opts = BackupOptions { source: source.into(), ..Default::default() };
        let out = backup_dir(repo.clone(), dir, opts).await.unwrap();
        w.expected.insert(out.id, digest(dir));
    }
    // The oldest snapshot of `s` goes; a prune marks what only it used.
    let policy = KeepPolicy { last: 1, ..Default::default() };
    forget::forget(&repo, &policy, GroupBy::default(), None, false).await.unwrap();
    let report = prune(repo, &prune_opts()).await.unwrap();
    assert!(report.marked_packs > 0, "the base has a mark: {report:?}");
    mutate(&src, 8);
    w.next = digest(&src);
    w
}

async fn sweep(step: Step) {
    let tmp = tempfile::tempdir().unwrap();
    let w = build_world(tmp.path()).await;
    std::fs::create_dir_all(&w.scratch).unwrap();

    // How many operations does the step make when nothing fails?
    let probe = clone_memory(&w.base).await;
    if matches!(step, Step::Prune) {
        tokio::time::sleep(GRACE).await; // cloning renews times: let the base's mark age
    }
    let counting = Faulty::new(probe, u64::MAX);
    let gate = counting.gate.clone();
    run_step(
        step,
        Store::from_object_store(Arc::new(counting), "memory://count")
            .with_retry(RetryPolicy::NONE),
        &w,
    )
    .await
    .unwrap_or_else(|e| panic!("{step:?} without faults: {e}"));
    let total = gate.ops();
    eprintln!("{step:?}: {total} store operations; sweeping every crash point");

    let mut clones = Vec::new();
    for _ in 0..total {
        clones.push(clone_memory(&w.base).await);
    }
    if matches!(step, Step::Prune) {
        tokio::time::sleep(GRACE).await;
    }
    let mut failed = 0;
    for (n, inner) in clones.iter().enumerate() {
        let faulty = Faulty::new(inner.clone(), n as u64);
        let result = run_step(
            step,
            Store::from_object_store(Arc::new(faulty), "memory://faulty")
                .with_retry(RetryPolicy::NONE),
            &w,
        )
        .await;
        if result.is_err() {
            failed += 1;
        }
        verify(&w, inner, &format!("{step:?} crashed after {n} operations")).await;
    }
    assert!(failed >= total as usize * 9 / 10, "{step:?}: only {failed} of {total} runs failed");

    // The next run succeeds without manual steps (dead runs' locks expire on their own).
    tokio::time::sleep(EXPIRY).await;
    for (n, inner) in clones.iter().enumerate() {
        run_step(step, store(inner), &w)
            .await
            .unwrap_or_else(|e| panic!("{step:?} after a crash at {n}: the next run failed: {e}"));
        verify(&w, inner, &format!("{step:?} rerun after a crash at {n}")).await;
    }

    // Leftovers (unindexed packs, dead data) are cleaned by the next prunes.
    for round in 0..3 {
        for (n, inner) in clones.iter().enumerate() {
            let repo = w.t.open_on(store(inner), true).await.unwrap();
            prune(repo, &prune_opts())
                .await
                .unwrap_or_else(|e| panic!("{step:?}, crash at {n}: prune {round}: {e}"));
        }
        tokio::time::sleep(GRACE + Duration::from_millis(50)).await;
    }
    for (n, inner) in clones.iter().enumerate() {
        let left = verify(&w, inner, &format!("{step:?}, crash at {n}, after prunes")).await;
        assert_eq!(left, 0, "{step:?}, crash at {n}: unindexed packs left after prunes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_point_of_a_backup() {
    sweep(Step::Backup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_point_of_a_forget() {
    sweep(Step::Forget).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_point_of_a_prune() {
    sweep(Step::Prune).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_refused_by_retention_are_deferred_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let w = build_world(tmp.path()).await;
    std::fs::create_dir_all(&w.scratch).unwrap();
    let inner = clone_memory(&w.base).await;
    tokio::time::sleep(GRACE).await;
    let faulty = Faulty::new(inner.clone(), u64::MAX);
    let gate = faulty.gate.clone();
    gate.deny_deletes.store(true, std::sync::atomic::Ordering::SeqCst);
    let repo =
        w.t.open_on(
            Store::from_object_store(Arc::new(faulty), "memory://locked")
                .with_retry(RetryPolicy::NONE),
            true,
        )
        .await
        .unwrap();
    let report = prune(repo.clone(), &prune_opts()).await.expect("prune succeeds");
    assert!(report.deferred_deletes > 0, "{report:?}");
    assert_eq!(report.deleted_packs, 0);
    verify(&w, &inner, "deletes refused").await;

    // Retention over: the next prunes finish the job.
    gate.deny_deletes.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut deleted = 0;
    for _ in 0..3 {
        deleted += prune(repo.clone(), &prune_opts()).await.unwrap().deleted_packs;
        tokio::time::sleep(GRACE + Duration::from_millis(50)).await;
    }
    assert!(deleted >= report.deferred_deletes, "deleted {deleted} of {}", report.deferred_deletes);
    assert_eq!(verify(&w, &inner, "after retention").await, 0);
}

/// A store that stops answering (hangs) after N operations, during a backup: the backup gives
/// up within its store timeout and lease, saves nothing half-done, and the repository is sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_hangs_mid_backup_fails_it_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let w = build_world(tmp.path()).await;
    std::fs::create_dir_all(&w.scratch).unwrap();
    let probe = clone_memory(&w.base).await;
    let counting = Faulty::new(probe, u64::MAX);
    let gate = counting.gate.clone();
    run_step(
        Step::Backup,
        Store::from_object_store(Arc::new(counting), "memory://count")
            .with_retry(RetryPolicy::NONE),
        &w,
    )
    .await
    .unwrap();
    let total = gate.ops();
    for n in (0..total).step_by(3) {
        let inner = clone_memory(&w.base).await;
        let faulty = Faulty::new(inner.clone(), n);
        faulty.gate.hang.store(true, std::sync::atomic::Ordering::SeqCst);
        let store = Store::from_object_store(Arc::new(faulty), "memory://hang")
            .with_retry(RetryPolicy::NONE)
            .with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let result =
            tokio::time::timeout(Duration::from_secs(30), run_step(Step::Backup, store, &w))
                .await
                .unwrap_or_else(|_| {
                    panic!("backup hung with the store stuck after {n} operations")
                });
        // Past the commit only the lock release hangs: the backup then succeeds, and its
        // locks expire on their own.
        eprintln!(
            "hang after {n} of {total}: {:?} in {:?}",
            result.as_ref().err(),
            started.elapsed()
        );
        verify(&w, &inner, &format!("store hung after {n} operations")).await;
    }
}
