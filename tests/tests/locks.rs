//! Lock objects against memory://, file:// and the real S3 server: per-source exclusion,
//! expiry of a dead holder's lock, and a holder that cannot refresh stopping in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::Cli;
use cairn_core::repo::lock::{self, BackupLocks, Lock, LockKind, LockOptions};
use cairn_core::repo::{BlobKind, RetryPolicy, Store};
use cairn_core::{Error, Exit};
use cairn_tests::faulty::Faulty;
use cairn_tests::repos;
use clap::Parser;

fn opts(lease: Duration, wait: Duration) -> LockOptions {
    LockOptions { lease, wait, purpose: "test".into(), ..Default::default() }
}

/// S3 timestamps have one-second resolution: leases there are longer.
fn lease_for(url: &str) -> Duration {
    if url.starts_with("s3://") { Duration::from_secs(3) } else { Duration::from_millis(800) }
}

async fn cli(args: &[&str]) -> Exit {
    cairn::run(Cli::try_parse_from(args).expect("arguments parse")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_runs_of_one_source_exactly_one_proceeds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), b"hello").unwrap();
    for url in repos::backends(tmp.path()) {
        let t = repos::init(&url).await;
        let (a, b) = (t.open_write().await, t.open_write().await);
        let o = opts(Duration::from_secs(30), Duration::ZERO);
        let (ra, rb) = tokio::join!(
            BackupLocks::acquire(&a, "pvc/ns/data", &o),
            BackupLocks::acquire(&b, "pvc/ns/data", &o)
        );
        assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{url}: exactly one holder");
        let err = ra.as_ref().err().or(rb.as_ref().err()).unwrap();
        assert!(matches!(err, Error::Locked(_)), "{url}: {err}");
        assert_eq!(err.exit(), Exit::Locked);
        let held = ra.ok().or(rb.ok()).unwrap();

        // Another source is not blocked; the CLI on the held source exits 5.
        let other = BackupLocks::acquire(&b, "pvc/ns/other", &o).await.expect("other source");
        let wk = t.write_key.to_text();
        let argv = |src: &'static str| {
            vec![
                "cairn",
                "--repo",
                &url,
                "--write-key",
                &wk,
                "backup",
                data.to_str().unwrap(),
                "--source",
                src,
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        };
        let run = |v: Vec<String>| async move { cairn::run(Cli::try_parse_from(v).unwrap()).await };
        assert_eq!(run(argv("pvc/ns/data")).await, Exit::Locked, "{url}");
        let listed = lock::list_locks(&a).await.unwrap();
        assert_eq!(listed.len(), 4, "{url}: two sources × (source + shared): {listed:?}");
        assert!(listed.iter().all(|l| !l.expired && l.record.is_some()));

        held.release().await.unwrap();
        other.release().await.unwrap();
        assert_eq!(run(argv("pvc/ns/data")).await, Exit::Success, "{url}");
        assert!(lock::list_locks(&a).await.unwrap().is_empty(), "{url}: locks released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_holders_lock_expires_and_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    for url in repos::backends(tmp.path()) {
        let lease = lease_for(&url);
        let t = repos::init(&url).await;
        let r = t.open_write().await;
        let kind = LockKind::Source("etcd".into());
        let dead = Lock::acquire(&r, kind.clone(), &opts(lease, Duration::ZERO)).await.unwrap();
        let taken = Instant::now();
        drop(dead); // the holder dies: no more refreshes, no release
        let err = Lock::acquire(&r, kind.clone(), &opts(lease, Duration::ZERO)).await.unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{url}: {err}");
        assert!(err.to_string().contains("source etcd"), "{err}");

        // A live lock of someone else is never removed by `unlock --stale`.
        let live =
            Lock::acquire(&r, LockKind::Shared, &opts(Duration::from_secs(60), Duration::ZERO))
                .await
                .unwrap();
        assert!(lock::remove_stale(&r).await.unwrap().is_empty(), "{url}: nothing expired yet");

        // Waiting past the lease: the expired lock is broken and taken.
        let again =
            Lock::acquire(&r, kind.clone(), &opts(lease, lease * 4 + Duration::from_secs(2)))
                .await
                .expect("expired lock broken");
        assert!(taken.elapsed() >= lease, "{url}: broken too early");
        again.release().await.unwrap();

        // `cairn unlock --stale` removes a dead lock, and only that.
        drop(Lock::acquire(&r, kind.clone(), &opts(lease, Duration::ZERO)).await.unwrap());
        tokio::time::sleep(lease + lock::CLOCK_RESOLUTION * 2 + Duration::from_millis(200)).await;
        let wk = t.write_key.to_text();
        assert_eq!(
            cli(&["cairn", "--repo", &url, "--write-key", &wk, "unlock", "--stale"]).await,
            Exit::Success
        );
        let left = lock::list_locks(&r).await.unwrap();
        assert_eq!(left.len(), 1, "{url}: only the live lock is left: {left:?}");
        assert_eq!(left[0].key, live.key());
        live.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_cannot_refresh_stops_before_its_lease_ends() {
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faulty = Faulty::new(inner.clone(), u64::MAX);
    let gate = faulty.gate.clone();
    let t = repos::init_on(Store::from_object_store(inner.clone(), "memory://refresh")).await;
    let holder = t
        .open_on(
            Store::from_object_store(Arc::new(faulty), "memory://refresh")
                .with_retry(RetryPolicy::NONE),
            false,
        )
        .await
        .unwrap();
    let other =
        t.open_on(Store::from_object_store(inner, "memory://refresh"), false).await.unwrap();

    let lease = Duration::from_millis(1000);
    let kind = LockKind::Source("pvc/a/b".into());
    let before = Instant::now();
    let lock = Lock::acquire(&holder, kind.clone(), &opts(lease, Duration::ZERO)).await.unwrap();
    let guard = lock.guard();
    assert!(guard.check().is_ok());
    // A writer loads its index when it starts, before anything goes wrong.
    let index = holder.index().await.unwrap();
    // The store becomes unreachable for the holder.
    gate.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped = loop {
        if let Err(e) = guard.check() {
            // Not "another holder" (exit 5): the store could not be reached (exit 1).
            assert!(matches!(e, Error::Retryable(_)), "{e}");
            break before.elapsed();
        }
        assert!(before.elapsed() < Duration::from_secs(3), "the guard never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(stopped < lease, "holder stopped after {stopped:?}, lease {lease:?}");

    // Its writer refuses to write from then on.
    let writer = holder.writer(index, tokio::runtime::Handle::current()).with_guard(Some(guard));
    let refused =
        tokio::task::spawn_blocking(move || writer.add_blob(BlobKind::Data, b"late").map(|_| ()))
            .await
            .unwrap();
    assert!(matches!(refused, Err(Error::Retryable(_))), "{refused:?}");

    // Others see the lock as held until the lease has run out, then take it over.
    assert!(Lock::acquire(&other, kind.clone(), &opts(lease, Duration::ZERO)).await.is_err());
    let successor =
        Lock::acquire(&other, kind, &opts(lease, Duration::from_secs(5))).await.unwrap();
    let taken_over = before.elapsed();
    assert!(stopped < taken_over, "stopped {stopped:?} before the takeover at {taken_over:?}");
    successor.release().await.unwrap();
    drop(lock);
}
