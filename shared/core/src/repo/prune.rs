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
//!
//! A run gathers what it decides on (`gather`: snapshots, locks, marks, index, pack
//! listing, the store's clock), decides (`plan::plan`, a pure function, unit-tested there)
//! and carries the plan out (`Execution`). A dry run stops after planning and reports the
//! plan.

mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::ids::{BlobId, IndexId, PackId};
use super::index::{IndexFile, MasterIndex};
use super::lock::{self, Lock, LockKind, LockOptions};
use super::mark::{self, Mark};
use super::pack::{BlobKind, PackHeader};
use super::snapshot::SnapshotEntry;
use super::storage::Store;
use super::tree::{Extent, ExtentList, NodeKind, TreeBlob};
use super::{Repository, pack_key};
use crate::{Error, Result};
use plan::{LiveSet, PackObject, PruneInputs, PrunePlan, used_per_slot};

/// Packs per compacted index object.
pub(crate) const PACKS_PER_INDEX: usize = 4096;
/// Blob entries per compacted index object (about 25 MiB of plaintext at most).
pub(crate) const ENTRIES_PER_INDEX: usize = 500_000;

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

/// Written through `store` (a store under the writer's lease), sealed with `repo`'s key.
pub(crate) async fn write_index_object(
    repo: &Repository,
    store: &Store,
    packs: Vec<(PackId, PackHeader)>,
) -> Result<String> {
    let id = IndexId::random();
    let key = format!("index/{id}");
    let file = IndexFile { packs };
    store.create(&key, bytes::Bytes::from(file.seal(repo.meta_key(), &id))).await?;
    Ok(key)
}

pub async fn prune(repo: Arc<Repository>, opts: &PruneOptions) -> Result<PruneReport> {
    validate(opts)?;
    let lock = if opts.dry_run {
        None
    } else {
        Some(Lock::acquire(&repo, LockKind::Maintenance, &opts.lock).await?)
    };
    if lock.is_some() {
        lock::sweep_expired(&repo).await;
    }
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
    if !opts.dry_run {
        lock::sweep_expired(&repo).await;
    }
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
    let (snapshots, inputs) = gather(repo, opts).await?;
    let plan = plan::plan(&inputs, opts);
    for p in &plan.rescued {
        tracing::warn!(pack = %p.short(), "a marked pack holds the only copy of referenced data: kept");
    }
    if opts.dry_run {
        return Ok(plan.report(true));
    }
    tracing::info!(
        to_delete = plan.delete.len(),
        to_mark = plan.unused.len() + plan.unindexed.len(),
        to_repack = plan.repack.len(),
        "prune: decided"
    );
    let guard = lock.map(|l| l.guard());
    let execution = Execution {
        repo,
        store: repo.store().under_lease(guard.clone()),
        opts,
        guard,
        snapshots: &snapshots,
        inputs: &inputs,
        plan: &plan,
        doomed: plan.delete.clone(),
        retry: HashSet::new(),
        report: PruneReport {
            deleted_packs: 0,
            deleted_bytes: 0,
            marked_packs: 0,
            marked_bytes: 0,
            ..plan.report(false)
        },
    };
    execution.run().await
}

/// Steps 1 and 2 of FORMAT.md §15.5: load everything prune decides on. Any damage stops
/// it: liveness must be exact.
async fn gather(
    repo: &Arc<Repository>,
    opts: &PruneOptions,
) -> Result<(Vec<SnapshotEntry>, PruneInputs)> {
    let store = repo.store();
    let now = if opts.dry_run { chrono::Utc::now() } else { store.now().await? };
    // Snapshots before the index: every snapshot listed has its index objects written
    // (packs → index → snapshot), so every blob it references is found. A snapshot
    // committed later is covered by the commit check and step 6 (FORMAT.md §15).
    let (snapshots, bad) = repo.snapshots_lenient().await?;
    if let Some((key, e)) = bad.into_iter().next() {
        return Err(Error::Integrity(format!(
            "{key} does not open ({e}); prune cannot tell what it references. Run `cairn check`"
        )));
    }
    let live_shared: HashSet<String> =
        live_shared_locks(lock::list_locks(repo).await?).into_iter().collect();
    let marks = mark::load_marks(repo).await?;
    let LoadedIndex { mut master, objects, totals } = load_index(repo).await?;
    let pack_objects = list_packs(store).await?;
    master.set_marked(&mark::marked_packs(&marks));
    master.finish()?;
    let index = repo.install_index(master);
    tracing::info!(
        snapshots = snapshots.len(),
        blobs = index.len(),
        marks = marks.len(),
        "prune: loaded; walking snapshots"
    );
    let live = walk(repo, &index, &snapshots).await?;
    let inputs = PruneInputs {
        now,
        snapshots: snapshots.len(),
        live_shared,
        marks,
        index_objects: objects,
        pack_totals: totals,
        used: used_per_slot(&index, &live)?,
        index,
        live,
        pack_objects,
        can_read_data: repo.can_read_data(),
    };
    Ok((snapshots, inputs))
}

/// Every index object, decoded strictly, merged (not finished: marks are set first).
struct LoadedIndex {
    master: MasterIndex,
    /// The objects, with the packs each lists.
    objects: Vec<(String, Vec<PackId>)>,
    /// Bytes of the blobs of each pack, as the first object listing it says.
    totals: HashMap<PackId, u64>,
}

async fn load_index(repo: &Repository) -> Result<LoadedIndex> {
    use futures::StreamExt;
    let keys: Vec<String> =
        repo.store().list("index/").await?.into_iter().map(|(k, _)| k).collect();
    let mut loaded = LoadedIndex {
        master: MasterIndex::new(repo.index_budget().clone()),
        objects: Vec::with_capacity(keys.len()),
        totals: HashMap::new(),
    };
    let mut stream = std::pin::pin!(index_objects(repo, keys));
    while let Some(item) = stream.next().await {
        let (key, file) = item?;
        let mut packs = Vec::with_capacity(file.packs.len());
        for (id, h) in &file.packs {
            loaded.master.add_pack(*id, h)?;
            loaded
                .totals
                .entry(*id)
                .or_insert_with(|| h.entries.iter().map(|e| u64::from(e.length)).sum());
            packs.push(*id);
        }
        loaded.objects.push((key, packs));
    }
    Ok(loaded)
}

/// The pack listing: size and last-modified time of every pack object.
async fn list_packs(store: &Store) -> Result<BTreeMap<PackId, PackObject>> {
    let mut packs = BTreeMap::new();
    for info in store.list_info("packs/").await? {
        if let Some(id) = info.key.rsplit('/').next().and_then(|n| PackId::parse(n).ok()) {
            packs.insert(id, PackObject { size: info.size, modified: info.modified });
        }
    }
    Ok(packs)
}

/// Carrying a plan out (FORMAT.md §15.5 steps 4 to 8), checking the lease before every
/// write and delete. What it finds on the way only narrows the delete set.
struct Execution<'a> {
    repo: &'a Arc<Repository>,
    /// The repository's store, writing only under the maintenance lease.
    store: Store,
    opts: &'a PruneOptions,
    guard: Option<lock::LeaseGuard>,
    /// The snapshots listed in step 1.
    snapshots: &'a [SnapshotEntry],
    inputs: &'a PruneInputs,
    plan: &'a PrunePlan,
    /// The packs still to delete, with their sizes.
    doomed: BTreeMap<PackId, u64>,
    /// Packs whose deletion must be tried again: their marks stay.
    retry: HashSet<PackId>,
    report: PruneReport,
}

impl Execution<'_> {
    fn check(&self) -> Result<()> {
        self.guard.as_ref().map_or(Ok(()), |g| g.check())
    }

    async fn run(mut self) -> Result<PruneReport> {
        self.mark().await?;
        let appeared = if self.plan.compact { self.compact().await? } else { Vec::new() };
        if !self.doomed.is_empty() {
            self.rescue_late(&appeared).await?;
        }
        self.delete_packs().await?;
        self.remove_marks().await?;
        Ok(self.report)
    }

    /// Step 4: copy the live blobs of the packs to repack, then write the one new mark.
    async fn mark(&mut self) -> Result<()> {
        if !self.plan.repack.is_empty() {
            let slots: Vec<u32> = self.plan.repack.iter().map(|r| r.slot).collect();
            self.report.repacked_live_bytes =
                copy_live_blobs(self.repo, self.inputs, &slots, self.guard.clone()).await?;
        }
        let condemned = self.plan.condemned();
        if condemned.is_empty() {
            return Ok(());
        }
        self.check()?;
        // Listed now, just before the mark is written, so that few backups can start
        // between the listing and the mark (those that do see the mark, or are caught by
        // their commit check).
        let running = live_shared_locks(lock::list_locks(self.repo).await?);
        let m = Mark {
            version: mark::MARK_VERSION,
            created: super::now_rfc3339(),
            packs: condemned,
            running_backups: running,
        };
        let key = mark::save_mark(self.repo, &self.store, &m).await?;
        self.report.marked_packs = m.packs.len();
        self.report.marked_bytes = self.plan.condemned_bytes();
        tracing::info!(mark = %key, packs = m.packs.len(), "marked unused packs");
        Ok(())
    }

    /// Step 5: new index objects first, then the doomed packs listed by index objects that
    /// appeared meanwhile are spared, then the loaded objects go. Returns those that appeared.
    async fn compact(&mut self) -> Result<Vec<(String, IndexFile)>> {
        let new_keys = self.write_compacted().await?;
        let appeared = self.spare_appeared(&new_keys).await?;
        self.delete_loaded_objects().await?;
        self.report.index_objects_after = self.repo.store().list("index/").await?.len();
        Ok(appeared)
    }

    /// The packs of the loaded index objects that are not doomed, into new index objects.
    /// Returns their keys.
    async fn write_compacted(&self) -> Result<HashSet<String>> {
        use futures::StreamExt;
        let old_keys: Vec<String> =
            self.inputs.index_objects.iter().map(|(k, _)| k.clone()).collect();
        let mut new_keys = HashSet::new();
        let mut seen = HashSet::new();
        let mut chunk: Vec<(PackId, PackHeader)> = Vec::new();
        let mut chunk_entries = 0usize;
        let mut stream = std::pin::pin!(index_objects(self.repo, old_keys));
        while let Some(item) = stream.next().await {
            let (_, file) = item?;
            for (id, h) in file.packs {
                if self.doomed.contains_key(&id) || !seen.insert(id) {
                    continue;
                }
                chunk_entries += h.entries.len();
                chunk.push((id, h));
                if chunk.len() >= PACKS_PER_INDEX || chunk_entries >= ENTRIES_PER_INDEX {
                    self.check()?;
                    new_keys.insert(
                        write_index_object(self.repo, &self.store, std::mem::take(&mut chunk))
                            .await?,
                    );
                    chunk_entries = 0;
                }
            }
        }
        if !chunk.is_empty() {
            self.check()?;
            new_keys.insert(write_index_object(self.repo, &self.store, chunk).await?);
        }
        Ok(new_keys)
    }

    /// Index objects that appeared since loading (writers, or a prune whose lock we wrongly
    /// think expired): any doomed pack they list must stay.
    async fn spare_appeared(
        &mut self,
        new_keys: &HashSet<String>,
    ) -> Result<Vec<(String, IndexFile)>> {
        let inputs = self.inputs;
        let loaded_keys: HashSet<&String> = inputs.index_objects.iter().map(|(k, _)| k).collect();
        let appeared: Vec<String> = self
            .repo
            .store()
            .list("index/")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !loaded_keys.contains(k) && !new_keys.contains(k))
            .collect();
        let mut files = Vec::new();
        for (key, sealed) in self.repo.get_index_objects(appeared).await? {
            let id = IndexId::parse(key.trim_start_matches("index/"))?;
            let file = IndexFile::open(self.repo.meta_key(), &id, &sealed)?;
            for (p, _) in &file.packs {
                if self.doomed.remove(p).is_some() {
                    self.report.rescued_packs += 1;
                }
            }
            files.push((key, file));
        }
        Ok(files)
    }

    /// Delete the loaded index objects. One that cannot be deleted still lists its packs:
    /// none of them may go this run.
    async fn delete_loaded_objects(&mut self) -> Result<()> {
        let inputs = self.inputs;
        for (key, packs) in &inputs.index_objects {
            self.check()?;
            if let Err(e) = self.store.delete(key).await {
                tracing::warn!(object = %key, error = %e, "cannot delete index object; its packs stay");
                for p in packs {
                    if self.doomed.remove(p).is_some() {
                        self.report.deferred_deletes += 1;
                        self.retry.insert(*p);
                    }
                }
            }
        }
        Ok(())
    }

    /// Step 6: doomed packs that snapshots committed since step 1 use are kept. Their index
    /// entries went with the old index objects: they are indexed again, from the headers in
    /// the packs themselves.
    async fn rescue_late(&mut self, appeared: &[(String, IndexFile)]) -> Result<()> {
        let rescued = rescue_for_new_snapshots(
            self.repo,
            self.opts,
            self.snapshots,
            self.inputs,
            appeared,
            &self.doomed,
        )
        .await?;
        if rescued.is_empty() {
            return Ok(());
        }
        let mut packs = Vec::new();
        for p in &rescued {
            if let Some(object) = self.inputs.pack_objects.get(p) {
                packs.push((*p, super::check::read_pack_header(self.repo, p, object.size).await?));
            }
        }
        self.check()?;
        write_index_object(self.repo, &self.store, packs).await?;
        for p in &rescued {
            self.doomed.remove(p);
        }
        self.report.rescued_packs += rescued.len();
        Ok(())
    }

    /// Step 7: delete the doomed packs. A refused delete is tried again by a later run.
    async fn delete_packs(&mut self) -> Result<()> {
        for (p, size) in std::mem::take(&mut self.doomed) {
            self.check()?;
            match self.store.delete(&pack_key(&p)).await {
                Ok(()) => {
                    self.report.deleted_packs += 1;
                    self.report.deleted_bytes += size;
                }
                Err(e) => {
                    // Object Lock retention, or a policy without delete: try again next run.
                    tracing::warn!(pack = %p.short(), error = %e, "pack delete refused; deferred");
                    self.report.deferred_deletes += 1;
                    self.retry.insert(p);
                }
            }
        }
        Ok(())
    }

    /// Step 7, last: remove the ripe marks none of whose packs is to be tried again.
    async fn remove_marks(&mut self) -> Result<()> {
        for m in self.plan.marks_to_remove(&self.retry) {
            self.check()?;
            if self.store.delete(&m.key).await.is_ok() {
                self.report.marks_removed += 1;
            }
        }
        Ok(())
    }
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
async fn rescue_for_new_snapshots(
    repo: &Arc<Repository>,
    opts: &PruneOptions,
    listed: &[SnapshotEntry],
    loaded: &PruneInputs,
    appeared: &[(String, IndexFile)],
    doomed: &BTreeMap<PackId, u64>,
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
            master.add_pack(*id, h)?;
        }
    }
    master.set_marked(&mark::marked_packs(&loaded.marks));
    master.finish()?;
    let index = repo.install_index(master);
    let live = match (bad.is_empty(), walk(repo, &index, &fresh).await) {
        (true, Ok(live)) => live,
        (_, result) => {
            tracing::warn!(error = ?result.err(), "snapshots committed meanwhile cannot be walked: no pack deleted this run");
            return Ok(doomed.keys().copied().collect());
        }
    };
    let used = used_per_slot(&index, &live)?;
    let rescued: Vec<PackId> = doomed
        .keys()
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
    let mut live = LiveSet::new(index.len());
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
        // Tree-kind blobs still to read: directory listings (false) and extent lists (true).
        let mut pending: Vec<(BlobId, bool)> = Vec::new();
        let visit_tree =
            |id: &BlobId, list: bool, live: &mut LiveSet, pending: &mut Vec<(BlobId, bool)>| {
                let pos = index.position(id)?.ok_or_else(|| missing(id, s))?;
                if !live.set(pos) {
                    pending.push((*id, list));
                }
                Ok::<_, Error>(())
            };
        let mark_data = |ext: &Extent, live: &mut LiveSet| {
            if let Some(id) = &ext.id {
                let pos = index.position(id)?.ok_or_else(|| missing(id, s))?;
                live.set(pos);
            }
            Ok::<_, Error>(())
        };
        for id in &s.snapshot.root.subtree {
            visit_tree(id, false, &mut live, &mut pending)?;
        }
        while !pending.is_empty() {
            let batch: Vec<(BlobId, bool)> = pending.drain(..pending.len().min(16)).collect();
            let blobs =
                futures::future::try_join_all(batch.iter().map(|(id, _)| repo.read_blob(id)))
                    .await?;
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
            for (blob, (_, list)) in blobs.into_iter().zip(&batch) {
                if *list {
                    for ext in &ExtentList::decode(&blob)? {
                        mark_data(ext, &mut live)?;
                    }
                    continue;
                }
                for node in TreeBlob::decode(&blob)?.nodes {
                    if node.kind == NodeKind::Dir {
                        for id in &node.subtree {
                            visit_tree(id, false, &mut live, &mut pending)?;
                        }
                    }
                    for ext in &node.content {
                        mark_data(ext, &mut live)?;
                    }
                    for id in &node.extent_lists {
                        visit_tree(id, true, &mut live, &mut pending)?;
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
    loaded: &PruneInputs,
    slots: &[u32],
    guard: Option<lock::LeaseGuard>,
) -> Result<u64> {
    let wanted: HashSet<u32> = slots.iter().copied().collect();
    let mut work: Vec<(u32, u32, BlobKind, BlobId)> = Vec::new();
    for (i, entry) in loaded.index.iter().enumerate() {
        let (id, loc) = entry?;
        if wanted.contains(&loc.pack) && loaded.live.get(i) {
            work.push((loc.pack, loc.offset, loc.kind, id));
        }
    }
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
