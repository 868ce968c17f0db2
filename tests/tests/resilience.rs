//! Resilient under faults (#22): a fault-injecting proxy between cairn and the real S3 server
//! (500s, 503 SlowDown, connections dropped before and after the server applied a request,
//! bodies cut short, delays), and regression tests for each defect the fault run found.
//!
//! The chaos test runs backups, restores, forget, prune and check through the proxy at 5 %
//! and 20 % of requests faulted, then verifies without it: `check --read-data` passes and
//! every snapshot restores byte-identical. Stores are opened with the product's own S3
//! configuration ([`Store::open_s3_via`]) and a retry budget of 90 s (the default is 15 min).

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::Cli;
use cairn_core::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_core::repo::check::{CheckOptions, check};
use cairn_core::repo::forget::{self, GroupBy, KeepPolicy};
use cairn_core::repo::lock::{self, BackupLocks, Lock, LockKind, LockOptions};
use cairn_core::repo::prune::{PruneOptions, prune};
use cairn_core::repo::{Repository, RetryPolicy, SnapshotId, Store};
use cairn_core::{Error, Exit};
use cairn_tests::faults::{Fault, FaultProxy};
use cairn_tests::faulty::Faulty;
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::trees::{TreeSpec, digest, generate, mutate};
use cairn_tests::{env, unique};
use clap::Parser;

type Digest = BTreeMap<String, String>;

fn s3_addr() -> SocketAddr {
    let endpoint = env("CAIRN_TEST_S3_ENDPOINT");
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    hostport.to_socket_addrs().expect("S3 address").next().expect("an address")
}

fn s3_url() -> String {
    format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("resilience"))
}

/// Short enough for a test, long enough that 20 % faults never exhaust it.
fn test_retry() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(90),
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    }
}

fn via(url: &str, proxy: &FaultProxy) -> Store {
    Store::open_s3_via(url, &proxy.url()).unwrap().with_retry(test_retry())
}

fn small(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        depth: 2,
        max_entries: 6,
        max_file: 192 << 10,
        sparse_size: 0,
        ..Default::default()
    }
}

/// Successes and failures of one kind of operation.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    retryable: usize,
    /// Failures of any other class: never acceptable under network faults.
    other: Vec<String>,
}

impl Tally {
    fn add<T>(&mut self, r: &cairn_core::Result<T>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(Error::Retryable(_)) => self.retryable += 1,
            Err(e) => self.other.push(e.to_string()),
        }
    }
    fn total(&self) -> usize {
        self.ok + self.retryable + self.other.len()
    }
}

async fn backup_via(
    t: &TestRepo,
    store: Store,
    dir: &Path,
    source: &str,
) -> cairn_core::Result<SnapshotId> {
    let repo = t.open_on(store, false).await?;
    let locks = BackupLocks::acquire(&repo, source, &LockOptions::default()).await?;
    let opts = BackupOptions {
        source: source.into(),
        threads: 2,
        guard: Some(locks.guard()),
        ..Default::default()
    };
    let out = backup_dir(repo, dir, opts).await;
    let released = locks.release().await;
    let id = out?.id;
    released?;
    Ok(id)
}

/// Restore `id` and compare it with what was backed up. Wrong bytes are never acceptable:
/// a mismatch panics, whatever the fault rate.
async fn restore_via(
    t: &TestRepo,
    store: Store,
    id: SnapshotId,
    want: &Digest,
    scratch: &Path,
) -> cairn_core::Result<()> {
    let repo = t.open_on(store, true).await?;
    let snap = repo.find_snapshot(&id.to_hex(), None).await?;
    let out = scratch.join(format!("r-{}", rand::random::<u64>()));
    let report = restore(repo, snap.snapshot.root, &out, RestoreOptions::default()).await?;
    assert!(report.failures.is_empty(), "restore reported failures: {:?}", report.failures);
    assert_eq!(&digest(&out), want, "snapshot {} restored different bytes", id.short());
    std::fs::remove_dir_all(&out).unwrap();
    Ok(())
}

/// A lease long enough that refreshes ride out the faults, a grace period prune accepts
/// (twice the lease): the second round deletes what the first marked.
fn prune_opts() -> PruneOptions {
    PruneOptions {
        grace: Duration::from_secs(20),
        unindexed_age: Duration::from_secs(3600),
        max_unused: 0.0,
        lock: LockOptions { lease: Duration::from_secs(10), ..Default::default() },
        ..Default::default()
    }
}

/// Every snapshot restores exactly and `check --read-data` finds nothing, without faults.
async fn verify(t: &TestRepo, expected: &HashMap<SnapshotId, Digest>, scratch: &Path) {
    let repo = t.open_full().await;
    let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.expect("check");
    assert!(report.ok(), "check after the faults: {:?}", report.problems);
    let snaps = repo.snapshots().await.unwrap();
    assert!(!snaps.is_empty());
    for s in &snaps {
        let want = expected.get(&s.id).unwrap_or_else(|| panic!("unknown snapshot {}", s.id));
        restore_via(t, Store::open(&t.url).unwrap(), s.id, want, scratch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_backups_restores_forget_prune_and_check_through_a_faulty_network() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let t = repos::init(&s3_url()).await;
    let proxy = FaultProxy::start(s3_addr()).await.unwrap();
    // Delays of 1–3 s would only make the test slow: the retry logic is the same.
    proxy.set_delay(Duration::from_millis(100)..Duration::from_millis(400));
    let sources = ["a", "b"];
    for (i, s) in sources.iter().enumerate() {
        generate(&tmp.path().join(s), &small(i as u64 + 1));
    }
    let mut expected: HashMap<SnapshotId, Digest> = HashMap::new();
    let mut report = Vec::new();
    for (round, rate) in [0.05, 0.20].into_iter().enumerate() {
        proxy.set_rate(rate);
        let before = proxy.stats();
        let started = Instant::now();
        let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
        for i in 0..8u64 {
            let source = sources[i as usize % 2];
            let dir = tmp.path().join(source);
            mutate(&dir, 100 * (round as u64 + 1) + i);
            let r = backup_via(&t, via(&t.url, &proxy), &dir, source).await;
            if let Ok(id) = &r {
                expected.insert(*id, digest(&dir));
            }
            tallies.entry("backup").or_default().add(&r);
            if i % 2 == 1 {
                let latest: Vec<(SnapshotId, Digest)> =
                    expected.iter().map(|(k, v)| (*k, v.clone())).take(1).collect();
                for (id, want) in latest {
                    let r = restore_via(&t, via(&t.url, &proxy), id, &want, &scratch).await;
                    tallies.entry("restore").or_default().add(&r);
                }
            }
        }
        let forgotten = async {
            let repo = t.open_on(via(&t.url, &proxy), false).await?;
            let policy = KeepPolicy { last: 2, ..Default::default() };
            forget::forget(&repo, &policy, GroupBy::default(), None, false).await
        }
        .await;
        tallies.entry("forget").or_default().add(&forgotten);
        for _ in 0..2 {
            let pruned = async {
                let repo = t.open_on(via(&t.url, &proxy), true).await?;
                prune(repo, &prune_opts()).await
            }
            .await;
            tallies.entry("prune").or_default().add(&pruned);
        }
        let checked = async {
            let repo = t.open_on(via(&t.url, &proxy), true).await?;
            check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await
        }
        .await;
        if let Ok(r) = &checked {
            assert!(r.ok(), "check through the faults found damage: {:?}", r.problems);
        }
        tallies.entry("check").or_default().add(&checked);

        let stats = proxy.stats();
        let faults = stats.faults() - before.faults();
        let requests = stats.requests - before.requests;
        let ok: usize = tallies.values().map(|t| t.ok).sum();
        let total: usize = tallies.values().map(Tally::total).sum();
        report.push(format!(
            "{:>3.0} % faults: {faults} faults in {requests} requests, {ok}/{total} operations \
             succeeded in {:.0?} — {}",
            rate * 100.0,
            started.elapsed(),
            tallies
                .iter()
                .map(|(k, t)| format!("{k} {}/{}", t.ok, t.total()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        eprintln!("{}", report.last().unwrap());
        assert!(faults > 0, "the proxy injected nothing at {rate}");
        for (kind, t) in &tallies {
            assert!(t.other.is_empty(), "{kind}: failures that are not retryable: {:?}", t.other);
        }
        if rate <= 0.05 {
            assert_eq!(ok, total, "at 5 % every operation succeeds: {tallies:?}");
        } else {
            assert!(ok * 100 >= total * 95, "at 20 % at least 95 % succeed: {tallies:?}");
        }
        // Forget dropped snapshots: keep only the digests of those still listed.
        let listed: Vec<SnapshotId> =
            t.open_write().await.snapshots().await.unwrap().iter().map(|s| s.id).collect();
        expected.retain(|id, _| listed.contains(id));
    }
    proxy.set_rate(0.0);
    verify(&t, &expected, &scratch).await;
    eprintln!("chaos summary:\n{}", report.join("\n"));
}

/// Defects 2 and 3: a create whose answer was lost (the server applied it, the connection
/// dropped) is retried into a 412. A snapshot, pack or index then failed with "already
/// exists" (exit 2) although it was committed, and a lock locked out its own holder (exit 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_to_creates_and_lock_writes_are_recognised_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&s3_url()).await;
    let proxy = FaultProxy::start(s3_addr()).await.unwrap();
    proxy.set_kinds(&[Fault::ResetAfter]);
    proxy.set_rate(0.5);
    let dir = tmp.path().join("src");
    generate(&dir, &small(9));
    for i in 0..4 {
        let repo = t.open_on(via(&t.url, &proxy), false).await.unwrap();
        let opts = LockOptions { wait: Duration::ZERO, ..Default::default() };
        let locks = BackupLocks::acquire(&repo, "lost", &opts)
            .await
            .unwrap_or_else(|e| panic!("run {i}: locked out by its own lock? {e}"));
        locks.release().await.unwrap();
        mutate(&dir, i);
        backup_via(&t, via(&t.url, &proxy), &dir, "lost").await.unwrap();
    }
    assert!(proxy.stats().injected(Fault::ResetAfter) > 0);
    proxy.set_rate(0.0);
    assert_eq!(t.open_write().await.snapshots().await.unwrap().len(), 4);
    assert!(lock::list_locks(&*t.open_write().await).await.unwrap().is_empty(), "no lock left");
}

/// Defect 1: a snapshot forgotten between a reader's listing and its fetch made backups and
/// `restore latest` fail with "not found" (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_forgotten_between_listing_and_fetch_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&format!("memory://{}", unique("vanish"))).await;
    let dir = tmp.path().join("src");
    generate(&dir, &small(3));
    let repo = t.open_full().await;
    let first = backup_dir(repo.clone(), &dir, BackupOptions::default()).await.unwrap().id;
    mutate(&dir, 1);
    let second = backup_dir(repo.clone(), &dir, BackupOptions::default()).await.unwrap().id;

    let faulty = Faulty::new(Store::open(&t.url).unwrap().object_store().clone(), u64::MAX);
    *faulty.gate.vanish_on_get.lock().unwrap() = Some(format!("snapshots/{first}"));
    let reader = t.open_on(Store::from_object_store(Arc::new(faulty), &t.url), true).await.unwrap();
    let listed = reader.snapshots().await.expect("listing tolerates a vanished record");
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![second]);
    assert_eq!(reader.find_snapshot("latest", None).await.unwrap().id, second);
}

/// Defect 4: `check` reported a store it could not read as "the repository is damaged"
/// (exit 4). It must say it could not read (retryable, exit 1) and judge nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_an_unreadable_store_from_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&format!("memory://{}", unique("unreadable"))).await;
    let dir = tmp.path().join("src");
    generate(&dir, &small(4));
    backup_dir(t.open_full().await, &dir, BackupOptions::default()).await.unwrap();
    let faulty = Faulty::new(Store::open(&t.url).unwrap().object_store().clone(), u64::MAX);
    let gate = faulty.gate.clone();
    let store = Store::from_object_store(Arc::new(faulty), &t.url).with_retry(RetryPolicy::NONE);
    let repo = t.open_on(store, true).await.unwrap();
    // The index loads; then no pack can be read.
    repo.load_index().await.unwrap();
    *gate.fail_gets_under.lock().unwrap() = Some("packs/".into());
    let err = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap_err();
    assert!(matches!(err, Error::Retryable(_)), "{err}");
    assert!(err.to_string().contains("could not read"), "{err}");
    assert_eq!(err.exit(), Exit::Retryable);
}

/// Defect 5: a lost index object made every restore, later backups of the source and prune
/// fail; a lost pack kept being reused by new backups. `cairn repair index` and `cairn repair
/// snapshots` put both right, on the real S3 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_rebuilds_a_lost_index_and_rewrites_snapshots_that_lost_a_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&s3_url()).await;
    let identity = tmp.path().join("identity");
    std::fs::write(&identity, t.identity_text()).unwrap();
    let cli = |args: &[&str]| {
        let mut argv = vec!["cairn", "--repo", &t.url, "--identity", identity.to_str().unwrap()];
        argv.extend_from_slice(args);
        let argv: Vec<String> = argv.into_iter().map(String::from).collect();
        async move { cairn::run(Cli::try_parse_from(argv).unwrap()).await }
    };
    let mut expected = HashMap::new();
    for (i, s) in ["x", "y"].iter().enumerate() {
        let dir = tmp.path().join(s);
        generate(&dir, &small(20 + i as u64));
        // Content for sure, whatever the generated tree holds.
        let bulk: Vec<u8> = (0..300 << 10).map(|_| rand::random::<u8>()).collect();
        std::fs::write(dir.join("bulk.bin"), bulk).unwrap();
        let opts = BackupOptions { source: (*s).into(), ..Default::default() };
        let id = backup_dir(t.open_full().await, &dir, opts).await.unwrap().id;
        expected.insert(id, digest(&dir));
    }
    let store = Store::open(&t.url).unwrap();
    // Lose every index object: restores fail as damage (exit 4, not "not found": exit 2).
    for (key, _) in store.list("index/").await.unwrap() {
        store.delete(&key).await.unwrap();
    }
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    assert_eq!(
        cli(&["restore", "latest", "--target", out_s, "--source", "x"]).await,
        Exit::Integrity
    );
    assert_eq!(cli(&["repair", "index"]).await, Exit::Success);
    verify(&t, &expected, &scratch_of(tmp.path())).await;

    // Lose one pack that holds data of source x.
    let repo = t.open_full().await;
    let snap = repo.find_snapshot("latest", Some("x")).await.unwrap();
    let index = repo.index().await.unwrap();
    let data_pack = first_data_pack(&repo, &snap.snapshot.root, &index).await;
    store.delete(&data_pack).await.unwrap();
    assert_eq!(cli(&["check"]).await, Exit::Integrity);
    assert_eq!(cli(&["repair", "index"]).await, Exit::Success);
    assert_eq!(cli(&["repair", "snapshots"]).await, Exit::Success);
    let repo = t.open_full().await;
    let snaps = repo.snapshots().await.unwrap();
    let repaired: Vec<_> =
        snaps.iter().filter(|s| s.snapshot.tags.contains_key("cairn.repaired-from")).collect();
    assert_eq!(repaired.len(), 1, "only x's snapshot lost data");
    assert!(repaired[0].snapshot.partial && !repaired[0].snapshot.failures.is_empty());
    // y was untouched and restores exactly; x's repaired snapshot restores what survived.
    let y = snaps.iter().find(|s| s.snapshot.source == "y").unwrap();
    restore_via(&t, Store::open(&t.url).unwrap(), y.id, &expected[&y.id], tmp.path())
        .await
        .unwrap();
    let rx = tmp.path().join("rx");
    let r = restore(repo.clone(), repaired[0].snapshot.root.clone(), &rx, Default::default())
        .await
        .unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let got = digest(&rx);
    let want = &expected[&snap.id];
    let lost: Vec<&String> = repaired[0].snapshot.failures.iter().map(|f| &f.path).collect();
    for (path, hash) in &got {
        assert_eq!(want.get(path), Some(hash), "{path} restored differently");
    }
    assert!(got.len() < want.len() && !lost.is_empty());
    // A backup of x after the repair stores the lost content again instead of reusing it.
    let opts = BackupOptions { source: "x".into(), ..Default::default() };
    let dir = tmp.path().join("x");
    let id = backup_dir(t.open_full().await, &dir, opts).await.unwrap().id;
    restore_via(&t, Store::open(&t.url).unwrap(), id, &digest(&dir), tmp.path()).await.unwrap();
}

fn scratch_of(tmp: &Path) -> std::path::PathBuf {
    let s = tmp.join("scratch");
    std::fs::create_dir_all(&s).unwrap();
    s
}

/// The key of the pack holding the first data blob found under `root`.
async fn first_data_pack(
    repo: &Repository,
    root: &cairn_core::repo::Node,
    index: &cairn_core::repo::index::MasterIndex,
) -> String {
    let mut stack = vec![root.clone()];
    while let Some(node) = stack.pop() {
        if let Some(id) = node.content.iter().find_map(|e| e.id) {
            let loc = index.get(&id).unwrap().unwrap();
            return cairn_core::repo::pack_key(&index.pack(loc.pack).id);
        }
        if !node.subtree.is_empty() {
            stack.extend(repo.read_dir(&node.subtree).await.unwrap());
        }
    }
    panic!("no data blob under {root:?}");
}

/// Defect 7: `cairn diff A B` of two plain snapshots exited 4 with the write key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_of_two_file_snapshots_needs_only_the_write_key() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let dir = tmp.path().join("src");
    generate(&dir, &small(5));
    let a = backup_dir(t.open_full().await, &dir, BackupOptions::default()).await.unwrap().id;
    mutate(&dir, 2);
    let b = backup_dir(t.open_full().await, &dir, BackupOptions::default()).await.unwrap().id;
    let key = t.write_key.to_text();
    let argv = ["cairn", "--repo", &t.url, "--write-key", &key, "diff", &a.to_hex(), &b.to_hex()];
    let exit = cairn::run(Cli::try_parse_from(argv).unwrap()).await;
    assert_eq!(exit, Exit::Success);
}

/// Defect 8: a wrong S3 secret printed a 2.5 KB XML document; it is one line, and a denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_one_readable_line() {
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(env("CAIRN_TEST_S3_ENDPOINT"))
        .with_bucket_name(env("CAIRN_TEST_S3_BUCKET"))
        .with_allow_http(true)
        .with_secret_access_key("not-the-secret")
        .build()
        .unwrap();
    let store = Store::from_object_store(Arc::new(s3), "s3://wrong").with_retry(RetryPolicy::NONE);
    let err = store.list("snapshots/").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Denied(_)), "{text}");
    assert!(text.len() < 500 && !text.contains('\n') && !text.contains("<?xml"), "{text}");
    assert!(text.contains("SignatureDoesNotMatch") || text.contains("AccessDenied"), "{text}");
}

/// Defect 9: expired lock objects of runs that died were never deleted; whoever meets them
/// now sweeps them (a backup's lock acquisition here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_locks_of_dead_runs_are_swept_by_the_next_backup() {
    let t = repos::init(&format!("memory://{}", unique("sweep-locks"))).await;
    let repo = t.open_write().await;
    let short = LockOptions { lease: Duration::from_millis(300), ..Default::default() };
    for _ in 0..3 {
        // Dropped without release: what a killed job leaves behind.
        drop(Lock::acquire(&repo, LockKind::Shared, &short).await.unwrap());
    }
    assert_eq!(lock::list_locks(&repo).await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(300 + 1000 + 200)).await;
    let locks = BackupLocks::acquire(&repo, "s", &LockOptions::default()).await.unwrap();
    let left = lock::list_locks(&repo).await.unwrap();
    assert_eq!(left.len(), 2, "only the backup's own two locks: {left:?}");
    assert!(left.iter().all(|l| !l.expired));
    locks.release().await.unwrap();
}

/// Defect 6: one truncated LIST body, or a connection dropped on a request, failed the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_listings_and_dropped_connections_are_retried() {
    let t = repos::init(&s3_url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    generate(&dir, &small(6));
    let bulk: Vec<u8> = (0..300 << 10).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("bulk.bin"), bulk).unwrap();
    backup_dir(t.open_full().await, &dir, BackupOptions::default()).await.unwrap();
    let packs = Store::open(&t.url).unwrap().list("packs/").await.unwrap().len();
    assert!(packs >= 2, "a data pack and a tree pack: {packs}");
    let proxy = FaultProxy::start(s3_addr()).await.unwrap();
    let repo = t.open_on(via(&t.url, &proxy), false).await.unwrap();
    assert_eq!(repo.store().list("packs/").await.unwrap().len(), packs, "rate 0");
    proxy.set_kinds(&[Fault::TruncatedBody, Fault::ResetBefore]);
    proxy.set_rate(0.5);
    for _ in 0..10 {
        assert_eq!(repo.snapshots().await.unwrap().len(), 1);
        assert_eq!(repo.store().list("packs/").await.unwrap().len(), packs);
    }
    let s = proxy.stats();
    assert!(s.injected(Fault::TruncatedBody) > 0 && s.injected(Fault::ResetBefore) > 0, "{s:?}");
}

/// A small filesystem of its own, mounted for the test (the suite runs as root, like the
/// node it starts); unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn run(args: &[&str]) {
        let ok = std::process::Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(ok.success(), "{args:?}");
    }
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        Mount::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            at.to_str().unwrap(),
        ]);
        Mount(at.to_path_buf())
    }
    fn read_only(&self) {
        let at = self.0.to_str().unwrap();
        Mount::run(&["mount", "-o", "remount,ro", at]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Defect 8: ENOSPC during a restore said "invalid input"; a read-only `file://` repository
/// failed with exit 1 like a network error. A full disk is "storage full" (exit 1, retry when
/// there is room); a repository that refuses writes is a denial (exit 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_read_only_repository_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let t = repos::init(&format!("memory://{}", unique("full"))).await;
    let dir = tmp.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let big: Vec<u8> = (0..2 << 20).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("big"), &big).unwrap();
    let repo = t.open_full().await;
    let snap = backup_dir(repo.clone(), &dir, BackupOptions::default()).await.unwrap();
    let small_disk = Mount::tmpfs(&tmp.path().join("small"), "512k");
    let root = repo.find_snapshot(&snap.id.to_hex(), None).await.unwrap().snapshot.root;
    let err = restore(repo.clone(), root, &small_disk.0.join("out"), RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StorageFull(_)), "{err}");

    let ro = Mount::tmpfs(&tmp.path().join("ro"), "16m");
    let url = format!("file://{}", ro.0.join("repo").display());
    let t = repos::init(&url).await;
    ro.read_only();
    let err = backup_dir(t.open_full().await, &dir, BackupOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    assert_eq!(err.exit(), Exit::Integrity);
}

/// Review of #22: a write made for a lock holder (a snapshot record, an index object, a mark,
/// a prune's delete) retried past the holder's lease could land after a prune or a successor
/// acted on the lease having run out. Under a lease that can no longer be vouched for, no
/// attempt starts, and the failure says the store could not be reached (exit 1), not that
/// another run holds the lock (exit 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_a_lapsed_lease_never_start() {
    let t = repos::init(&format!("memory://{}", unique("lapsed"))).await;
    let repo = t.open_write().await;
    let short = LockOptions { lease: Duration::from_millis(400), ..Default::default() };
    let held = Lock::acquire(&repo, LockKind::Shared, &short).await.unwrap();
    let guard = held.guard();
    let store = repo.store().under_lease(Some(guard.clone()));
    store.create("gc/while-held", bytes::Bytes::from_static(b"x")).await.unwrap();
    drop(held); // the refresher stops, as it does when the store is unreachable
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = store.create("gc/after", bytes::Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, Error::Retryable(_)), "{err}");
    assert_eq!(err.exit(), Exit::Retryable);
    assert!(store.delete("gc/while-held").await.is_err(), "deletes are refused too");
    let keys: Vec<String> =
        repo.store().list("gc/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["gc/while-held".to_string()], "nothing written or deleted late");
}

/// Review of #22: a lock whose lease lapsed after the work under it was done is left to
/// expire on release, not reported as a failure (a committed backup must not exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_lapsed_lock_is_not_a_failure() {
    let t = repos::init(&format!("memory://{}", unique("lapsed-release"))).await;
    let faulty = Faulty::new(Store::open(&t.url).unwrap().object_store().clone(), u64::MAX);
    let gate = faulty.gate.clone();
    let store = Store::from_object_store(Arc::new(faulty), &t.url).with_retry(RetryPolicy::NONE);
    let repo = t.open_on(store, false).await.unwrap();
    let short = LockOptions { lease: Duration::from_millis(400), ..Default::default() };
    let held = Lock::acquire(&repo, LockKind::Shared, &short).await.unwrap();
    // The store stops answering long enough for the lease to lapse, then comes back.
    gate.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    gate.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(held.guard().check().is_err(), "the lease lapsed");
    gate.down.store(false, std::sync::atomic::Ordering::SeqCst);
    gate.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    held.release().await.expect("a lapsed lease is left to expire, not an error");
}
