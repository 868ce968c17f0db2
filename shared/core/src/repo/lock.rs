//! Lock objects in the bucket (`locks/…`), with leases judged on the store's clock.
//!
//! * **shared** (`locks/shared-<nonce>`): every backup holds one. It excludes nothing; it
//!   tells `prune` which writers were running when it marked packs (FORMAT.md §15).
//! * **maintenance** (`locks/maintenance`): exclusive among prunes and repacks.
//! * **source** (`locks/source-<keyed hash>`): two runs of the same CronJob never back up
//!   the same source at once.
//!
//! A lock is taken with a create-only put, so of two racers exactly one wins. Its holder
//! rewrites it every `lease / 5` (after checking that its nonce is still there); whoever
//! finds a lock whose last write, on the store's clock, is older than its lease may delete
//! it. A holder that has not refreshed successfully for `lease × 3/4` stops writing: its
//! [`LeaseGuard`] fails, well before anybody may consider the lease expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Repository;
use super::crypto::{SymKey, domain};
use super::storage::{Store, Timestamp};
use crate::{Error, Result};

pub const LOCK_VERSION: u32 = 1;
/// The coarsest last-modified resolution among supported stores (S3: one second).
pub const CLOCK_RESOLUTION: Duration = Duration::from_secs(1);
/// Default lease: long enough to ride out a slow store, short enough that a crashed
/// CronJob's lock is gone before its next run.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Maintenance,
    Source(String),
}

impl LockKind {
    fn key(&self, repo: &Repository) -> String {
        match self {
            LockKind::Shared => format!("locks/shared-{}", hex::encode(rand::random::<[u8; 12]>())),
            LockKind::Maintenance => "locks/maintenance".into(),
            LockKind::Source(s) => {
                format!("locks/source-{}", repo.write_key().source_lock_name(s))
            }
        }
    }

    fn label(&self) -> String {
        match self {
            LockKind::Shared => "shared".into(),
            LockKind::Maintenance => "maintenance".into(),
            LockKind::Source(s) => format!("source {s}"),
        }
    }
}

/// Who holds a lock: in a pod there is no PID worth checking, so name the pod, node and job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub pid: u32,
}

impl Holder {
    /// From the environment: `CAIRN_POD_NAME`, `CAIRN_NODE_NAME`, `CAIRN_JOB_NAME` (set with
    /// the downward API in our manifests).
    pub fn from_env() -> Holder {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Holder {
            host: crate::host::hostname(),
            pod: var("CAIRN_POD_NAME"),
            node: var("CAIRN_NODE_NAME"),
            job: var("CAIRN_JOB_NAME"),
            pid: std::process::id(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pod, &self.job) {
            (Some(pod), _) => write!(f, "pod {pod}")?,
            (None, Some(job)) => write!(f, "job {job}")?,
            _ => write!(f, "{} pid {}", self.host, self.pid)?,
        }
        if let Some(node) = &self.node {
            write!(f, " on {node}")?;
        }
        Ok(())
    }
}

/// The content of a lock object (sealed with the metadata key, bound to the object key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub version: u32,
    /// `shared`, `maintenance` or `source`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Random; tells the holder its lock from a successor's.
    pub nonce: String,
    pub holder: Holder,
    pub purpose: String,
    /// Milliseconds.
    pub lease_ms: u64,
    /// The holder's clock when it first took the lock. Informative only.
    pub created: String,
}

impl LockRecord {
    fn seal(&self, meta: &SymKey, key: &str) -> Bytes {
        Bytes::from(meta.seal(
            domain::LOCK,
            key.as_bytes(),
            &serde_json::to_vec(self).expect("json"),
        ))
    }

    fn open(meta: &SymKey, key: &str, sealed: &[u8]) -> Result<LockRecord> {
        let plain = meta.open(domain::LOCK, key.as_bytes(), sealed, key)?;
        serde_json::from_slice(&plain).map_err(|e| Error::Integrity(format!("{key}: {e}")))
    }
}

#[derive(Debug, Clone)]
pub struct LockOptions {
    pub lease: Duration,
    /// How long to wait for a held lock before giving up with [`Error::Locked`].
    pub wait: Duration,
    pub purpose: String,
    pub holder: Holder,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lease: DEFAULT_LEASE,
            wait: Duration::ZERO,
            purpose: String::new(),
            holder: Holder::from_env(),
        }
    }
}

/// A lock found in the bucket.
#[derive(Clone)]
pub struct LockInfo {
    pub key: String,
    /// `None` when the object does not open (another repository's key, or damage).
    pub record: Option<LockRecord>,
    pub modified: Timestamp,
    /// The object as read, to tell a later refresh or successor from it.
    raw: Bytes,
    /// Age of the last write, on the store's clock.
    pub age: Duration,
    pub expired: bool,
}

impl std::fmt::Debug for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockInfo")
            .field("key", &self.key)
            .field("record", &self.record)
            .field("modified", &self.modified)
            .field("age", &self.age)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

impl LockInfo {
    pub fn lease(&self) -> Duration {
        // A lock we cannot read is given a long lease: better to wait than to break it.
        self.record
            .as_ref()
            .map_or(Duration::from_secs(3600), |r| Duration::from_millis(r.lease_ms))
    }
    pub fn describe(&self) -> String {
        match &self.record {
            Some(r) => format!(
                "{} lock held by {} ({}), last refreshed {}s ago, lease {}s",
                r.kind,
                r.holder,
                if r.purpose.is_empty() { "-" } else { &r.purpose },
                self.age.as_secs(),
                r.lease_ms / 1000
            ),
            None => format!("{} (unreadable), last written {}s ago", self.key, self.age.as_secs()),
        }
    }
}

/// Shared by a [`Lock`] and everything that writes under it.
#[derive(Debug)]
struct LeaseState {
    key: String,
    /// After this instant the holder must assume its lease may be gone.
    deadline: Mutex<Instant>,
    /// Why the lease is gone, and whether someone else has the lock now (exit 5) or we
    /// only could not keep it up (the store unreachable: exit 1).
    lost: Mutex<Option<(Lost, String)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// Another holder took it, or it was removed: [`Error::Locked`].
    TakenOver,
    /// Refreshes did not succeed in time: [`Error::Retryable`].
    NotRefreshed,
}

/// Cheap handle writers consult before every write that others depend on.
#[derive(Debug, Clone)]
pub struct LeaseGuard(Arc<LeaseState>);

impl LeaseGuard {
    /// Ok while the lease is certainly ours.
    pub fn check(&self) -> Result<()> {
        self.remaining().map(|_| ())
    }

    /// How long writes may still go on under this lease; an error once it may be gone:
    /// [`Error::Locked`] when another holder has the lock, [`Error::Retryable`] when the
    /// refreshes could not reach the store in time.
    pub fn remaining(&self) -> Result<Duration> {
        if let Some((how, why)) = self.0.lost.lock().as_ref() {
            let msg = format!("lock {} lost ({why}); stopped writing", self.0.key);
            return Err(match how {
                Lost::TakenOver => Error::Locked(msg),
                Lost::NotRefreshed => Error::Retryable(msg),
            });
        }
        let left = self.0.deadline.lock().saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Retryable(format!(
                "lock {} could not be refreshed in time; stopped writing before its lease ran out",
                self.0.key
            )));
        }
        Ok(left)
    }
}

/// A held lock. Dropping it stops the refresher (the lease then runs out on its own);
/// [`Lock::release`] deletes it at once.
#[derive(Debug)]
pub struct Lock {
    store: Store,
    meta: SymKey,
    key: String,
    nonce: String,
    guard: LeaseGuard,
    refresher: tokio::task::JoinHandle<()>,
}

/// Time this process has spent waiting for locks that others held, summed: what a job
/// reports as its lock wait.
static WAITED_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn add_wait(d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    WAITED_NS.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
}

/// Time spent so far in this process waiting for locks held by others.
pub fn time_waited() -> Duration {
    Duration::from_nanos(WAITED_NS.load(std::sync::atomic::Ordering::Relaxed))
}

fn safety(lease: Duration) -> Duration {
    lease / 4
}

impl Lock {
    pub async fn acquire(repo: &Repository, kind: LockKind, opts: &LockOptions) -> Result<Lock> {
        if opts.lease < Duration::from_millis(200) {
            return Err(Error::Invalid("lock lease must be at least 200ms".into()));
        }
        let store = repo.store().clone();
        let meta = repo.meta_key().clone();
        let key = kind.key(repo);
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let record = LockRecord {
            version: LOCK_VERSION,
            kind: match &kind {
                LockKind::Shared => "shared",
                LockKind::Maintenance => "maintenance",
                LockKind::Source(_) => "source",
            }
            .into(),
            source: match &kind {
                LockKind::Source(s) => Some(s.clone()),
                _ => None,
            },
            nonce: nonce.clone(),
            holder: opts.holder.clone(),
            purpose: opts.purpose.clone(),
            lease_ms: opts.lease.as_millis() as u64,
            created: crate::repo::now_rfc3339(),
        };
        let sealed = record.seal(&meta, &key);
        let started = Instant::now();
        let poll = (opts.lease / 10).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let sent = loop {
            let sent = Instant::now();
            match store.create(&key, sealed.clone()).await {
                Ok(()) => break sent,
                Err(Error::AlreadyExists(_)) => {}
                Err(e @ Error::Retryable(_)) => {
                    // The create may have happened and only its response been lost.
                    match read_record(&store, &meta, &key).await {
                        Ok(Some(r)) if r.nonce == nonce => break sent,
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            let now = store.now().await?;
            let Some(info) = inspect(&store, &meta, &key, now).await? else {
                continue; // released meanwhile
            };
            if info.expired {
                tracing::warn!(lock = %key, holder = %info.describe(), "breaking an expired lock");
                break_if_unchanged(&store, &info).await?;
                continue;
            }
            if started.elapsed() + poll > opts.wait {
                return Err(Error::Locked(format!(
                    "{} is locked: {}",
                    kind.label(),
                    info.describe()
                )));
            }
            let slept = Instant::now();
            tokio::time::sleep(poll).await;
            add_wait(slept.elapsed());
        };
        let state = Arc::new(LeaseState {
            key: key.clone(),
            deadline: Mutex::new(sent + opts.lease - safety(opts.lease)),
            lost: Mutex::new(None),
        });
        let refresher = tokio::spawn(refresh_loop(
            store.clone(),
            meta.clone(),
            key.clone(),
            nonce.clone(),
            sealed,
            opts.lease,
            state.clone(),
        ));
        tracing::debug!(lock = %key, "lock acquired");
        Ok(Lock { store, meta, key, nonce, guard: LeaseGuard(state), refresher })
    }

    pub fn guard(&self) -> LeaseGuard {
        self.guard.clone()
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stop refreshing and delete the lock if it is still ours.
    /// A lease that already lapsed is left to expire: the work done under it is done (a
    /// committed snapshot stays committed), and deleting now could hit a successor's lock.
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        if self.guard.check().is_err() {
            tracing::debug!(lock = %self.key, "lease lapsed before release; it expires on its own");
            return Ok(());
        }
        if let Ok(Some(r)) = read_record(&self.store, &self.meta, &self.key).await
            && r.nonce == self.nonce
        {
            // Not retried past our lease: a late delete could remove a successor's lock.
            match self.store.under_lease(Some(self.guard.clone())).delete(&self.key).await {
                Ok(()) => {}
                Err(_) if self.guard.check().is_err() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh_loop(
    store: Store,
    meta: SymKey,
    key: String,
    nonce: String,
    sealed: Bytes,
    lease: Duration,
    state: Arc<LeaseState>,
) {
    let every = lease / 5;
    loop {
        tokio::time::sleep(every).await;
        if Instant::now() >= *state.deadline.lock() {
            // Too late to refresh safely: someone may already have broken the lock.
            state.lost.lock().get_or_insert_with(|| {
                (Lost::NotRefreshed, "lease ran out before a refresh succeeded".into())
            });
            return;
        }
        let sent = Instant::now();
        let read = tokio::time::timeout(every, read_record(&store, &meta, &key)).await;
        let read = read.unwrap_or_else(|_| Err(Error::Retryable("no answer in time".into())));
        match read {
            Ok(Some(r)) if r.nonce == nonce => {}
            Ok(Some(r)) => {
                *state.lost.lock() = Some((Lost::TakenOver, format!("taken over by {}", r.holder)));
                return;
            }
            Ok(None) => {
                *state.lost.lock() = Some((Lost::TakenOver, "removed by someone else".into()));
                return;
            }
            Err(e) => {
                tracing::warn!(lock = %key, error = %e, "lock refresh: read failed; will retry");
                continue;
            }
        }
        match tokio::time::timeout(every, store.put_overwrite(&key, sealed.clone())).await {
            // A refresh that lands after our own deadline may have overwritten a successor
            // who broke the lock meanwhile: we cannot tell, so the lease counts as lost.
            Ok(Ok(())) if Instant::now() >= *state.deadline.lock() => {
                state.lost.lock().get_or_insert_with(|| {
                    (Lost::NotRefreshed, "a refresh landed too late".into())
                });
                return;
            }
            Ok(Ok(())) => *state.deadline.lock() = sent + lease - safety(lease),
            Ok(Err(e)) => {
                tracing::warn!(lock = %key, error = %e, "lock refresh failed; will retry")
            }
            Err(_) => tracing::warn!(lock = %key, "lock refresh timed out; will retry"),
        }
    }
}

async fn read_record(store: &Store, meta: &SymKey, key: &str) -> Result<Option<LockRecord>> {
    match store.get(key).await {
        Ok(b) => LockRecord::open(meta, key, &b).map(Some),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Look at one lock object; `None` if it is gone.
async fn inspect(
    store: &Store,
    meta: &SymKey,
    key: &str,
    now: Timestamp,
) -> Result<Option<LockInfo>> {
    let head = match store.head(key).await {
        Ok(h) => h,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let raw = match store.get(key).await {
        Ok(b) => b,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(info_from(key.to_string(), meta, raw, head.modified, now)))
}

fn info_from(
    key: String,
    meta: &SymKey,
    raw: Bytes,
    modified: Timestamp,
    now: Timestamp,
) -> LockInfo {
    let age = (now - modified).to_std().unwrap_or(Duration::ZERO);
    let record = LockRecord::open(meta, &key, &raw).ok();
    let mut info = LockInfo { key, record, raw, modified, age, expired: false };
    // Stores such as S3 keep last-modified times to the second: allow for that rounding.
    info.expired = age > info.lease() + CLOCK_RESOLUTION;
    info
}

/// Delete an expired lock, unless it changed since we judged it (its holder refreshed, or a
/// successor took it): same bytes and same last-modified time.
/// Returns whether it deleted it.
async fn break_if_unchanged(store: &Store, info: &LockInfo) -> Result<bool> {
    let (bytes, head) = match (store.get(&info.key).await, store.head(&info.key).await) {
        (Ok(b), Ok(h)) => (b, h),
        (Err(Error::NotFound(_)), _) | (_, Err(Error::NotFound(_))) => return Ok(false),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    if bytes == info.raw && head.modified == info.modified {
        // One attempt: a delete retried later could remove a successor's fresh lock.
        store.delete_once(&info.key).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Every lock in the repository, judged on the store's clock.
pub async fn list_locks(repo: &Repository) -> Result<Vec<LockInfo>> {
    let store = repo.store();
    let now = store.now().await?;
    let mut out = Vec::new();
    for obj in store.list_info("locks/").await? {
        let name = obj.key.trim_start_matches("locks/");
        if name.starts_with("clock-") || name.starts_with("probe-") {
            continue;
        }
        // Judged from HEAD, like `break_if_unchanged` compares: some stores list times with
        // milliseconds and HEAD them to the second.
        if let Some(info) = inspect(store, repo.meta_key(), &obj.key, now).await? {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Delete every expired lock; returns what was removed. Live locks are never touched.
pub async fn remove_stale(repo: &Repository) -> Result<Vec<LockInfo>> {
    let mut removed = Vec::new();
    for info in list_locks(repo).await?.into_iter().filter(|l| l.expired) {
        if break_if_unchanged(repo.store(), &info).await? {
            removed.push(info);
        }
    }
    Ok(removed)
}

/// Sweep expired locks (runs that died leave theirs behind) without failing the caller:
/// whoever meets them removes them (FORMAT.md §15.1), so they never pile up.
pub async fn sweep_expired(repo: &Repository) {
    match remove_stale(repo).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(count = removed.len(), "removed expired locks of runs that ended");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep expired locks; left for later"),
    }
}

/// The name of a backup's source lock: per cluster when one is named, so that clusters
/// sharing a bucket (and source names like `etcd`) never wait for each other.
pub fn source_lock_name(source: &str, cluster: Option<&str>) -> String {
    match cluster {
        Some(c) => format!("{source}@{c}"),
        None => source.to_string(),
    }
}

/// The locks a backup runs under: its source's (so two runs of one CronJob never overlap)
/// and a shared one (so prune knows it is running).
#[derive(Debug)]
pub struct BackupLocks {
    source: Lock,
    shared: Lock,
}

impl BackupLocks {
    pub async fn acquire(repo: &Repository, source: &str, opts: &LockOptions) -> Result<Self> {
        let source_lock = Lock::acquire(repo, LockKind::Source(source.to_string()), opts).await?;
        let shared = match Lock::acquire(repo, LockKind::Shared, opts).await {
            Ok(l) => l,
            Err(e) => {
                let _ = source_lock.release().await;
                return Err(e);
            }
        };
        sweep_expired(repo).await;
        Ok(BackupLocks { source: source_lock, shared })
    }

    /// The lease writers check: prune relies on the shared lock.
    pub fn guard(&self) -> LeaseGuard {
        self.shared.guard()
    }

    pub async fn release(self) -> Result<()> {
        let a = self.shared.release().await;
        let b = self.source.release().await;
        a.and(b)
    }
}
