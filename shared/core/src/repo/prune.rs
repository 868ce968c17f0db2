//! `prune`: reclaim the space of forgotten snapshots, safely beside running backups.
//!
//! Two phases (FORMAT.md §15). A run
//! 1. **deletes** what earlier runs marked, once a mark is older than the grace period on
//!    the store's clock and every backup that was running when it was written has ended;
//!    any pack in it that still holds the only copy of a referenced blob is kept (rescued);
//! 2. **marks** what is unused now: packs without live blobs, packs left unindexed by
//!    crashed writers, and packs whose live blobs it copied elsewhere (repack).
//!
//! Index objects are compacted on the way: the surviving packs of every index object are
//! rewritten into a few large objects *before* the old ones and then the doomed packs are
//! deleted, so a crash at any step leaves a repository that passes `check`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::ids::{BlobId, IndexId, PackId};
use super::index::{IndexFile, MasterIndex};
use super::lock::{self, Lock, LockKind, LockOptions};
use super::mark::{self, Mark};
use super::pack::{BlobKind, PackHeader};
use super::snapshot::SnapshotEntry;
use super::tree::{NodeKind, TreeBlob};
use super::{Repository, pack_key};
use crate::{Error, Result};

/// More index objects than this are compacted even when no pack is deleted.
const COMPACT_ABOVE: usize = 64;
/// Packs per compacted index object.
const PACKS_PER_INDEX: usize = 4096;
/// Blob entries per compacted index object (about 25 MiB of plaintext at most).
const ENTRIES_PER_INDEX: usize = 500_000;

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How old a mark must be, on the store's clock, before its packs are deleted.
    pub grace: Duration,
    /// Unindexed packs younger than this are left alone (a running writer indexes them
    /// soon); older ones are marked.
    pub unindexed_age: Duration,
    /// Repack partly used packs until unused bytes are at most this fraction of used bytes.
    pub max_unused: f64,
    /// Read at most this many live bytes for repacking in one run.
    pub max_repack: u64,
    pub dry_run: bool,
    pub lock: LockOptions,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::from_secs(24 * 3600),
            unindexed_age: Duration::from_secs(3600),
            max_unused: 0.05,
            max_repack: u64::MAX,
            dry_run: false,
            lock: LockOptions { purpose: "prune".into(), ..Default::default() },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub blobs: usize,
    pub packs: usize,
    pub used_bytes: u64,
    pub unused_bytes: u64,
    pub index_objects_before: usize,
    pub index_objects_after: usize,
    /// Phase 1.
    pub deleted_packs: usize,
    pub deleted_bytes: u64,
    pub rescued_packs: usize,
    pub deferred_deletes: usize,
    pub marks_removed: usize,
    pub marks_waiting: usize,
    /// Phase 2.
    pub marked_packs: usize,
    pub marked_bytes: u64,
    pub repacked_packs: usize,
    pub repacked_live_bytes: u64,
    pub repack_skipped_no_identity: usize,
}

/// One live bit per blob of the merged index, by position.
struct LiveSet(Vec<u64>);

impl LiveSet {
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    /// Set; returns whether it was already set.
    fn set(&mut self, i: usize) -> bool {
        let was = self.get(i);
        self.0[i / 64] |= 1 << (i % 64);
        was
    }
}

struct Loaded {
    /// The index objects loaded, with the packs each lists. The objects themselves are read
    /// again when needed rather than held: memory is the merged index plus a few bits and
    /// words per blob and pack.
    objects: Vec<(String, Vec<PackId>)>,
    index: Arc<MasterIndex>,
    live: LiveSet,
}

/// Bytes of live canonical blobs per pack slot: a pack with none holds no data any listed
/// snapshot needs (other copies serve them).
fn used_per_slot(index: &MasterIndex, live: &LiveSet) -> Vec<u64> {
    let mut used = vec![0u64; index.packs.len()];
    for (i, (_, loc)) in index.iter().enumerate() {
        if live.get(i) {
            used[loc.pack as usize] += u64::from(loc.length);
        }
    }
    used
}

/// Index objects, fetched a few at a time and decoded strictly, in arrival order.
fn index_objects<'a>(
    repo: &'a Repository,
    keys: Vec<String>,
) -> impl futures::Stream<Item = Result<(String, IndexFile)>> + 'a {
    use futures::StreamExt;
    futures::stream::iter(keys)
        .map(move |key| async move {
            let sealed = repo.store().get(&key).await?;
            let id = IndexId::parse(key.trim_start_matches("index/"))?;
            let file = IndexFile::open(repo.meta_key(), &id, &sealed).map_err(|e| {
                Error::Integrity(format!("{key}: {e}; run `cairn check` before pruning"))
            })?;
            Ok((key, file))
        })
        .buffer_unordered(8)
}

async fn write_index_object(repo: &Repository, packs: Vec<(PackId, PackHeader)>) -> Result<String> {
    let id = IndexId::random();
    let key = format!("index/{id}");
    let file = IndexFile { packs };
    repo.store().create(&key, bytes::Bytes::from(file.seal(repo.meta_key(), &id))).await?;
    Ok(key)
}

pub async fn prune(repo: Arc<Repository>, opts: &PruneOptions) -> Result<PruneReport> {
    validate(opts)?;
    let lock = if opts.dry_run {
        None
    } else {
        Some(Lock::acquire(&repo, LockKind::Maintenance, &opts.lock).await?)
    };
    let result = run(&repo, opts, lock.as_ref()).await;
    if let Some(l) = lock {
        l.release().await?;
    }
    result
}

/// Prune under a maintenance lock the caller already holds (`cairn-maintain` takes it
/// before forgetting, so that a locked-out run changes nothing).
pub async fn prune_locked(
    repo: Arc<Repository>,
    opts: &PruneOptions,
    lock: &Lock,
) -> Result<PruneReport> {
    validate(opts)?;
    run(&repo, opts, Some(lock)).await
}

fn validate(opts: &PruneOptions) -> Result<()> {
    if opts.grace < opts.lock.lease * 2 {
        return Err(Error::Invalid(format!(
            "grace {} must be at least twice the lock lease ({})",
            humantime::format_duration(opts.grace),
            humantime::format_duration(opts.lock.lease)
        )));
    }
    Ok(())
}

fn live_shared_locks(locks: Vec<lock::LockInfo>) -> Vec<String> {
    locks
        .into_iter()
        .filter(|l| !l.expired && l.record.as_ref().is_some_and(|r| r.kind == "shared"))
        .map(|l| l.key)
        .collect()
}

async fn run(
    repo: &Arc<Repository>,
    opts: &PruneOptions,
    lock: Option<&Lock>,
) -> Result<PruneReport> {
    use futures::StreamExt;
    let guard = lock.map(|l| l.guard());
    let check = || guard.as_ref().map_or(Ok(()), |g| g.check());
    let store = repo.store().clone();
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    let now = if opts.dry_run { chrono::Utc::now() } else { store.now().await? };

    // ---- Load everything prune decides on. Any damage stops it: liveness must be exact.
    // Snapshots before the index: every snapshot listed has its index objects written
    // (packs → index → snapshot), so every blob it references is found. A snapshot
    // committed later is covered by the commit check and step 6 (FORMAT.md §15).
    let (snapshots, bad) = repo.snapshots_lenient().await?;
    if let Some((key, e)) = bad.into_iter().next() {
        return Err(Error::Integrity(format!(
            "{key} does not open ({e}); prune cannot tell what it references. Run `cairn check`"
        )));
    }
    report.snapshots = snapshots.len();
    let live_shared: HashSet<String> =
        live_shared_locks(lock::list_locks(repo).await?).into_iter().collect();
    let marks = mark::load_marks(repo).await?;
    let marked_all = mark::marked_packs(&marks);
    let index_keys: Vec<String> = store.list("index/").await?.into_iter().map(|(k, _)| k).collect();
    let mut master = MasterIndex::default();
    let mut objects_listed: Vec<(String, Vec<PackId>)> = Vec::with_capacity(index_keys.len());
    let mut totals: HashMap<PackId, u64> = HashMap::new();
    let mut stream = std::pin::pin!(index_objects(repo, index_keys));
    while let Some(item) = stream.next().await {
        let (key, file) = item?;
        let mut packs = Vec::with_capacity(file.packs.len());
        for (id, h) in &file.packs {
            master.add_pack(*id, h);
            totals
                .entry(*id)
                .or_insert_with(|| h.entries.iter().map(|e| u64::from(e.length)).sum());
            packs.push(*id);
        }
        objects_listed.push((key, packs));
    }
    report.index_objects_before = objects_listed.len();
    let mut objects: HashMap<PackId, u64> = HashMap::new();
    let mut object_age: HashMap<PackId, Duration> = HashMap::new();
    for info in store.list_info("packs/").await? {
        if let Some(id) = info.key.rsplit('/').next().and_then(|n| PackId::parse(n).ok()) {
            objects.insert(id, info.size);
            object_age.insert(id, (now - info.modified).to_std().unwrap_or(Duration::ZERO));
        }
    }
    master.set_marked(&marked_all);
    master.finish();
    let index = repo.install_index(master);
    report.blobs = index.len();
    tracing::info!(
        snapshots = snapshots.len(),
        blobs = index.len(),
        marks = marks.len(),
        "prune: loaded; walking snapshots"
    );
    let live = walk(repo, &index, &snapshots).await?;
    let used = used_per_slot(&index, &live);
    let loaded = Loaded { objects: objects_listed, index, live };

    // ---- Phase 1: which marked packs may go now.
    let mut aged = Vec::new();
    for m in &marks {
        let age = (now - m.modified).to_std().unwrap_or(Duration::ZERO);
        let waiting_on = m.mark.running_backups.iter().filter(|k| live_shared.contains(*k)).count();
        if age >= opts.grace && waiting_on == 0 {
            aged.push(m);
        } else {
            report.marks_waiting += 1;
        }
    }
    let mut doomed: HashSet<PackId> = HashSet::new();
    for m in &aged {
        for p in &m.mark.packs {
            if objects.contains_key(p) {
                doomed.insert(*p);
            }
        }
    }
    let candidates: Vec<PackId> = doomed.iter().copied().collect();
    for p in candidates {
        if loaded.index.pack_slot(&p).is_some_and(|slot| used[slot as usize] > 0) {
            tracing::warn!(pack = %p.short(), "a marked pack holds the only copy of referenced data: kept");
            doomed.remove(&p);
            report.rescued_packs += 1;
        }
    }

    // ---- Phase 2: what is unused now.
    let mut dead = Vec::new();
    let mut partial = Vec::new();
    for (slot, record) in loaded.index.packs.iter().enumerate() {
        let pid = record.id;
        let Some(size) = objects.get(&pid) else { continue }; // indexed but missing: check's business
        let total = totals.get(&pid).copied().unwrap_or(0);
        let used = used[slot].min(total);
        report.packs += 1;
        report.used_bytes += used;
        report.unused_bytes += total - used;
        if marked_all.contains(&pid) {
            continue;
        }
        if used == 0 {
            dead.push((pid, *size));
        } else if used < total {
            partial.push((slot as u32, record.kind, used, total));
        }
    }
    for (pid, size) in &objects {
        if loaded.index.pack_slot(pid).is_none()
            && !marked_all.contains(pid)
            && object_age.get(pid).is_some_and(|a| *a >= opts.unindexed_age)
        {
            dead.push((*pid, *size));
        }
    }
    // Repack the most wasteful packs first until the waste is within bounds.
    partial.sort_by(|a, b| {
        let fa = (a.3 - a.2) as f64 / a.3 as f64;
        let fb = (b.3 - b.2) as f64 / b.3 as f64;
        fb.total_cmp(&fa)
    });
    let target = (report.used_bytes as f64 * opts.max_unused) as u64;
    let mut waste = partial.iter().map(|p| p.3 - p.2).sum::<u64>();
    let mut repack: Vec<u32> = Vec::new();
    let mut budget = opts.max_repack;
    for (slot, kind, used, total) in partial {
        if waste <= target {
            break;
        }
        if kind == BlobKind::Data && !repo.can_read_data() {
            report.repack_skipped_no_identity += 1;
            continue;
        }
        if used > budget {
            continue;
        }
        budget -= used;
        waste -= total - used;
        repack.push(slot);
    }
    report.repacked_packs = repack.len();
    let repack_ids: Vec<PackId> = repack.iter().map(|s| loaded.index.pack(*s).id).collect();

    if opts.dry_run {
        report.deleted_packs = doomed.len();
        report.deleted_bytes = doomed.iter().filter_map(|p| objects.get(p)).sum();
        report.marked_packs = dead.len() + repack.len();
        report.marked_bytes = dead.iter().map(|d| d.1).sum::<u64>()
            + repack_ids.iter().filter_map(|p| objects.get(p)).sum::<u64>();
        report.index_objects_after = report.index_objects_before;
        return Ok(report);
    }

    tracing::info!(
        to_delete = doomed.len(),
        to_mark = dead.len(),
        to_repack = repack.len(),
        "prune: decided"
    );
    if !repack.is_empty() {
        report.repacked_live_bytes = copy_live_blobs(repo, &loaded, &repack, guard.clone()).await?;
    }
    let mut condemned: Vec<PackId> = dead.iter().map(|d| d.0).collect();
    condemned.extend(repack_ids.iter().copied());
    if !condemned.is_empty() {
        check()?;
        // Listed now, just before the mark is written, so that few backups can start
        // between the listing and the mark (those that do see the mark, or are caught by
        // their commit check).
        let running = live_shared_locks(lock::list_locks(repo).await?);
        let m = Mark {
            version: mark::MARK_VERSION,
            created: super::now_rfc3339(),
            packs: condemned.clone(),
            running_backups: running,
        };
        let key = mark::save_mark(repo, &m).await?;
        report.marked_packs = condemned.len();
        report.marked_bytes = condemned.iter().filter_map(|p| objects.get(p)).sum();
        tracing::info!(mark = %key, packs = condemned.len(), "marked unused packs");
    }

    // ---- Compact the index (new objects first, then the old ones go), then delete.
    let compact = !doomed.is_empty() || loaded.objects.len() > COMPACT_ABOVE;
    let mut new_keys = HashSet::new();
    let mut appeared_files: Vec<(String, IndexFile)> = Vec::new();
    // Packs whose deletion must be tried again: their mark stays.
    let mut retry: HashSet<PackId> = HashSet::new();
    if compact {
        let old_keys: Vec<String> = loaded.objects.iter().map(|(k, _)| k.clone()).collect();
        let mut seen = HashSet::new();
        let mut chunk: Vec<(PackId, PackHeader)> = Vec::new();
        let mut chunk_entries = 0usize;
        let mut stream = std::pin::pin!(index_objects(repo, old_keys.clone()));
        while let Some(item) = stream.next().await {
            let (_, file) = item?;
            for (id, h) in file.packs {
                if doomed.contains(&id) || !seen.insert(id) {
                    continue;
                }
                chunk_entries += h.entries.len();
                chunk.push((id, h));
                if chunk.len() >= PACKS_PER_INDEX || chunk_entries >= ENTRIES_PER_INDEX {
                    check()?;
                    new_keys.insert(write_index_object(repo, std::mem::take(&mut chunk)).await?);
                    chunk_entries = 0;
                }
            }
        }
        if !chunk.is_empty() {
            check()?;
            new_keys.insert(write_index_object(repo, chunk).await?);
        }
        // Index objects that appeared since loading (writers, or a prune whose lock we
        // wrongly think expired): any doomed pack they list must stay.
        let loaded_keys: HashSet<&String> = old_keys.iter().collect();
        let appeared: Vec<String> = store
            .list("index/")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !loaded_keys.contains(k) && !new_keys.contains(k))
            .collect();
        for (key, sealed) in repo.get_index_objects(appeared).await? {
            let id = IndexId::parse(key.trim_start_matches("index/"))?;
            let file = IndexFile::open(repo.meta_key(), &id, &sealed)?;
            for (p, _) in &file.packs {
                if doomed.remove(p) {
                    report.rescued_packs += 1;
                }
            }
            appeared_files.push((key, file));
        }
        for (key, packs) in &loaded.objects {
            check()?;
            if let Err(e) = store.delete(key).await {
                // The old object still lists its packs: none of them may go.
                tracing::warn!(object = %key, error = %e, "cannot delete index object; its packs stay");
                for p in packs {
                    if doomed.remove(p) {
                        report.deferred_deletes += 1;
                        retry.insert(*p);
                    }
                }
            }
        }
        report.index_objects_after = store.list("index/").await?.len();
    } else {
        report.index_objects_after = report.index_objects_before;
    }
    if !doomed.is_empty() {
        let rescued = rescue_for_new_snapshots(
            repo,
            opts,
            &snapshots,
            &loaded,
            &appeared_files,
            &marked_all,
            &doomed,
        )
        .await?;
        if !rescued.is_empty() {
            // Their index entries went with the old index objects: index them again, from
            // the headers in the packs themselves.
            let mut packs = Vec::new();
            for p in &rescued {
                if let Some(size) = objects.get(p) {
                    packs.push((*p, super::check::read_pack_header(repo, p, *size).await?));
                }
            }
            check()?;
            write_index_object(repo, packs).await?;
            for p in &rescued {
                doomed.remove(p);
            }
            report.rescued_packs += rescued.len();
        }
    }
    for p in &doomed {
        check()?;
        match store.delete(&pack_key(p)).await {
            Ok(()) => {
                report.deleted_packs += 1;
                report.deleted_bytes += objects.get(p).copied().unwrap_or(0);
            }
            Err(e) => {
                // Object Lock retention, or a policy without delete: try again next run.
                tracing::warn!(pack = %p.short(), error = %e, "pack delete refused; deferred");
                report.deferred_deletes += 1;
                retry.insert(*p);
            }
        }
    }
    for m in aged {
        if m.mark.packs.iter().any(|p| retry.contains(p)) {
            continue;
        }
        check()?;
        if store.delete(&m.key).await.is_ok() {
            report.marks_removed += 1;
        }
    }
    Ok(report)
}

/// How long prune waits, after removing doomed packs from the index, before looking for
/// snapshots committed meanwhile: a writer whose commit check ran just before the removal
/// has this long to finish its one snapshot write.
fn settle(opts: &PruneOptions) -> Duration {
    (opts.lock.lease / 2).min(Duration::from_secs(5))
}

/// Snapshots committed since prune listed them may use doomed packs (their writers checked
/// before the index changed). Walk them against everything indexed, old and new; return the
/// doomed packs holding the only copy of data they use. If they cannot be walked, keep all.
#[allow(clippy::too_many_arguments)]
async fn rescue_for_new_snapshots(
    repo: &Arc<Repository>,
    opts: &PruneOptions,
    listed: &[SnapshotEntry],
    loaded: &Loaded,
    appeared: &[(String, IndexFile)],
    marked: &HashSet<PackId>,
    doomed: &HashSet<PackId>,
) -> Result<Vec<PackId>> {
    tokio::time::sleep(settle(opts)).await;
    let known: HashSet<_> = listed.iter().map(|s| s.id).collect();
    let (now, bad) = repo.snapshots_lenient().await?;
    let fresh: Vec<SnapshotEntry> = now.into_iter().filter(|s| !known.contains(&s.id)).collect();
    if fresh.is_empty() && bad.is_empty() {
        return Ok(Vec::new());
    }
    let mut master = (*loaded.index).clone();
    for (_, f) in appeared {
        for (id, h) in &f.packs {
            master.add_pack(*id, h);
        }
    }
    master.set_marked(marked);
    master.finish();
    let index = repo.install_index(master);
    let live = match (bad.is_empty(), walk(repo, &index, &fresh).await) {
        (true, Ok(live)) => live,
        (_, result) => {
            tracing::warn!(error = ?result.err(), "snapshots committed meanwhile cannot be walked: no pack deleted this run");
            return Ok(doomed.iter().copied().collect());
        }
    };
    let used = used_per_slot(&index, &live);
    let rescued: Vec<PackId> = doomed
        .iter()
        .copied()
        .filter(|p| index.pack_slot(p).is_some_and(|slot| used[slot as usize] > 0))
        .collect();
    for p in &rescued {
        tracing::warn!(pack = %p.short(), "a snapshot committed during prune uses this pack: kept");
    }
    Ok(rescued)
}

/// Mark every blob the snapshots reference. Trees shared between snapshots are read once.
async fn walk(
    repo: &Repository,
    index: &MasterIndex,
    snapshots: &[SnapshotEntry],
) -> Result<LiveSet> {
    let mut live = LiveSet(vec![0; index.len().div_ceil(64)]);
    let started = std::time::Instant::now();
    let mut last_report = started;
    let mut trees_read = 0u64;
    let missing = |id: &BlobId, s: &SnapshotEntry| {
        Error::Integrity(format!(
            "snapshot {} references blob {} that is in no index; run `cairn check`",
            s.id.short(),
            id.short()
        ))
    };
    for (done, s) in snapshots.iter().enumerate() {
        let mut pending: Vec<BlobId> = Vec::new();
        let visit_tree = |id: &BlobId, live: &mut LiveSet, pending: &mut Vec<BlobId>| {
            let pos = index.position(id).ok_or_else(|| missing(id, s))?;
            if !live.set(pos) {
                pending.push(*id);
            }
            Ok::<_, Error>(())
        };
        for id in &s.snapshot.root.subtree {
            visit_tree(id, &mut live, &mut pending)?;
        }
        while !pending.is_empty() {
            let batch: Vec<BlobId> = pending.drain(..pending.len().min(16)).collect();
            let blobs =
                futures::future::try_join_all(batch.iter().map(|id| repo.read_blob(id))).await?;
            trees_read += blobs.len() as u64;
            if last_report.elapsed() >= std::time::Duration::from_secs(5) {
                last_report = std::time::Instant::now();
                tracing::info!(
                    snapshots_done = done,
                    snapshots = snapshots.len(),
                    trees_read,
                    elapsed_s = started.elapsed().as_secs(),
                    "prune: walking snapshots"
                );
            }
            for blob in blobs {
                for node in TreeBlob::decode(&blob)?.nodes {
                    if node.kind == NodeKind::Dir {
                        for id in &node.subtree {
                            visit_tree(id, &mut live, &mut pending)?;
                        }
                    }
                    for ext in &node.content {
                        if let Some(id) = &ext.id {
                            let pos = index.position(id).ok_or_else(|| missing(id, s))?;
                            live.set(pos);
                        }
                    }
                }
            }
        }
    }
    Ok(live)
}

/// Copy the live canonical blobs of the packs in `slots` into new packs (and index
/// objects). Returns bytes copied.
async fn copy_live_blobs(
    repo: &Arc<Repository>,
    loaded: &Loaded,
    slots: &[u32],
    guard: Option<lock::LeaseGuard>,
) -> Result<u64> {
    let wanted: HashSet<u32> = slots.iter().copied().collect();
    let mut work: Vec<(u32, u32, BlobKind, BlobId)> = loaded
        .index
        .iter()
        .enumerate()
        .filter(|(i, (_, loc))| wanted.contains(&loc.pack) && loaded.live.get(*i))
        .map(|(_, (id, loc))| (loc.pack, loc.offset, loc.kind, *id))
        .collect();
    // In pack order: reads then go through each pack front to back, window by window.
    work.sort_unstable_by_key(|w| (w.0, w.1));
    let repo2 = repo.clone();
    let handle = tokio::runtime::Handle::current();
    let index = repo.index().await?;
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let writer = repo2.writer(index, handle.clone()).with_guard(guard);
        let mut copied = 0u64;
        for (_, _, kind, id) in work {
            let plain = handle.block_on(repo2.read_blob(&id))?;
            copied += plain.len() as u64;
            writer.add_blob_forced(kind, id, &plain)?;
        }
        writer.flush()?;
        Ok(copied)
    })
    .await
    .map_err(|e| Error::Retryable(format!("repack worker: {e}")))?
}

impl PruneReport {
    pub fn render(&self) -> String {
        use crate::progress::human_bytes as h;
        let would = if self.dry_run { "would be " } else { "" };
        format!(
            "{} snapshots, {} blobs in {} packs: {} used, {} unused\n\
             deleted {}{} packs ({}); {} rescued, {} deferred; marks removed {}, waiting {}\n\
             marked {}{} packs ({}) for deletion after the grace period; repacked {} packs ({} copied){}\n\
             index objects {} -> {}\n",
            self.snapshots,
            self.blobs,
            self.packs,
            h(self.used_bytes),
            h(self.unused_bytes),
            would,
            self.deleted_packs,
            h(self.deleted_bytes),
            self.rescued_packs,
            self.deferred_deletes,
            self.marks_removed,
            self.marks_waiting,
            would,
            self.marked_packs,
            h(self.marked_bytes),
            self.repacked_packs,
            h(self.repacked_live_bytes),
            if self.repack_skipped_no_identity > 0 {
                format!(
                    "; {} data packs not repacked (needs the identity)",
                    self.repack_skipped_no_identity
                )
            } else {
                String::new()
            },
            self.index_objects_before,
            self.index_objects_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::check::{CheckOptions, check};
    use crate::repo::testutil::{backup, memory_repo, noise, packs};

    fn e2e_opts(dry_run: bool) -> PruneOptions {
        let lease = Duration::from_secs(1);
        PruneOptions {
            grace: lease * 4,
            unindexed_age: lease * 4,
            max_unused: 0.0,
            dry_run,
            lock: LockOptions { lease, purpose: "test".into(), ..Default::default() },
            ..Default::default()
        }
    }

    /// The whole protocol on a memory store: a forgotten snapshot's data is marked (its
    /// shared blob repacked first), nothing goes within the grace period, everything marked
    /// goes after it, and what is kept still reads. Each dry run reports what the real run
    /// beside it then does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forgotten_data_is_marked_then_deleted_after_the_grace_period() {
        let repo = memory_repo("prune-e2e").await;
        let shared = noise(300 << 10);
        let (g0, g1) = (noise(300 << 10), noise(300 << 10));
        let kept: Vec<Vec<u8>> = (0..3).map(|_| noise(300 << 10)).collect();
        let gone = backup(&repo, "gone", &[("shared", &shared), ("g0", &g0), ("g1", &g1)]).await;
        let keep_files: Vec<(&str, &[u8])> =
            vec![("shared", &shared), ("k0", &kept[0]), ("k1", &kept[1]), ("k2", &kept[2])];
        backup(&repo, "keep", &keep_files).await;
        repo.store().delete(&format!("snapshots/{gone}")).await.unwrap();
        let before = packs(&repo).await;

        let dry = prune(repo.clone(), &e2e_opts(true)).await.unwrap();
        let first = prune(repo.clone(), &e2e_opts(false)).await.unwrap();
        assert!(dry.dry_run && !first.dry_run);
        let planned = |r: &PruneReport| {
            (
                r.snapshots,
                r.packs,
                r.marked_packs,
                r.marked_bytes,
                r.repacked_packs,
                r.deleted_packs,
            )
        };
        assert_eq!(planned(&dry), planned(&first));
        // The data pack of `gone` (its `shared` copied out first) and its tree pack.
        assert_eq!((first.snapshots, first.marked_packs, first.repacked_packs), (1, 2, 1));
        assert_eq!(first.repacked_live_bytes, 300 << 10);
        let after_mark = packs(&repo).await;
        assert!(before.iter().all(|p| after_mark.contains(p)), "a pack was deleted at once");
        let marks = mark::load_marks(&repo).await.unwrap();
        assert_eq!(marks.len(), 1);

        let within = prune(repo.clone(), &e2e_opts(false)).await.unwrap();
        assert_eq!((within.deleted_packs, within.marked_packs, within.marks_waiting), (0, 0, 1));

        tokio::time::sleep(Duration::from_millis(4200)).await;
        let dry = prune(repo.clone(), &e2e_opts(true)).await.unwrap();
        let second = prune(repo.clone(), &e2e_opts(false)).await.unwrap();
        assert_eq!(planned(&dry), planned(&second));
        assert_eq!((dry.deleted_bytes, dry.marks_waiting), (second.deleted_bytes, 0));
        assert_eq!((second.deleted_packs, second.marks_removed, second.rescued_packs), (2, 1, 0));
        assert!(second.index_objects_after >= 1);
        let left = packs(&repo).await;
        for p in &marks[0].mark.packs {
            assert!(!left.iter().any(|(k, _)| *k == pack_key(p)), "{p:?} not deleted");
        }
        assert!(mark::load_marks(&repo).await.unwrap().is_empty());

        let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
        assert!(report.ok() && report.unindexed_packs.is_empty(), "{report:?}");
        repo.load_index().await.unwrap();
        let snapshot = repo.find_snapshot("latest", None).await.unwrap().snapshot;
        for (path, content) in keep_files {
            let node = repo.lookup(&snapshot, path).await.unwrap();
            assert_eq!(repo.read_file(&node).await.unwrap(), content, "{path}");
        }
    }
}
