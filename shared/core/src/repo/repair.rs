//! `repair index`: rebuild the index from what the packs say about themselves (FORMAT.md
//! §15.8).
//!
//! Every pack carries its own sealed header (§6.3), the same bytes an index object lists for
//! it, so the index is redundant and can be rebuilt: after an index object is lost or
//! damaged, after a crash left packs unindexed, or after a pack was lost (its entries must go,
//! or backups keep deduplicating against blobs that no longer exist).
//!
//! The run gathers (index objects, pack listing, marks), plans ([`plan`], pure), and carries
//! the plan out under the maintenance lock, so no prune runs beside it. Backups may: packs
//! they upload meanwhile are either in index objects this run did not load (kept, never
//! touched) or unindexed (indexed here, harmlessly, a second time later by their writer).
//! New index objects are written before any old one is deleted, so a crash at any point
//! leaves every present pack indexed at least once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::Repository;
use super::ids::{IndexId, PackId};
use super::index::IndexFile;
use super::lock::{Lock, LockKind, LockOptions};
use super::pack::PackHeader;
use super::prune::{ENTRIES_PER_INDEX, PACKS_PER_INDEX, write_index_object};
use crate::{Error, Result};

/// What `repair index` found and did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IndexRepair {
    /// Index objects read.
    pub index_objects: usize,
    /// Index objects that did not open (damaged, or of another repository): replaced.
    pub damaged_index_objects: Vec<String>,
    /// Packs listed by an index but absent from the store: their blobs are gone, and
    /// snapshots that use them are damaged (`cairn check` names them).
    pub missing_packs: Vec<String>,
    /// Packs present but in no index, indexed again from their own headers.
    pub recovered_packs: Vec<String>,
    /// Present packs whose header does not open: left unindexed (prune removes them).
    pub unreadable_packs: Vec<String>,
    /// Index objects written / deleted.
    pub written: usize,
    pub deleted: usize,
    pub dry_run: bool,
}

impl IndexRepair {
    /// Whether the index was (or, in a dry run, would be) changed.
    pub fn changed(&self) -> bool {
        !self.damaged_index_objects.is_empty()
            || !self.missing_packs.is_empty()
            || !self.recovered_packs.is_empty()
    }
}

/// The inputs of a plan: what the store holds.
#[derive(Debug, Default)]
pub struct IndexInputs {
    /// Index objects that opened, by key.
    pub opened: BTreeMap<String, IndexFile>,
    /// Index objects that did not open.
    pub damaged: Vec<String>,
    /// Every pack object present.
    pub present: BTreeMap<PackId, u64>,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexPlan {
    /// Entries kept from index objects, for present packs (one per pack).
    pub keep: BTreeMap<PackId, PackHeader>,
    pub missing: BTreeSet<PackId>,
    /// Present packs to read the header of.
    pub read: BTreeMap<PackId, u64>,
    /// Rewrite everything (drop missing packs, replace damaged objects), or only add the
    /// recovered packs.
    pub rewrite: bool,
}

/// Decide, without I/O.
pub fn plan(inputs: &IndexInputs) -> IndexPlan {
    let mut p = IndexPlan::default();
    for file in inputs.opened.values() {
        for (id, header) in &file.packs {
            if inputs.present.contains_key(id) {
                p.keep.entry(*id).or_insert_with(|| header.clone());
            } else {
                p.missing.insert(*id);
            }
        }
    }
    // Marked packs too: they stay readable until a prune deletes them (§15.3), and a rescue
    // needs them indexed; their marks keep writers from deduplicating against them.
    p.read = inputs
        .present
        .iter()
        .filter(|(id, _)| !p.keep.contains_key(id))
        .map(|(id, size)| (*id, *size))
        .collect();
    p.rewrite = !p.missing.is_empty() || !inputs.damaged.is_empty();
    p
}

/// Rebuild the index. With `dry_run`, report what would change and write nothing.
pub async fn repair_index(
    repo: Arc<Repository>,
    lock: &LockOptions,
    dry_run: bool,
) -> Result<IndexRepair> {
    let held =
        if dry_run { None } else { Some(Lock::acquire(&repo, LockKind::Maintenance, lock).await?) };
    let result = run(&repo, held.as_ref(), dry_run).await;
    if let Some(l) = held {
        l.release().await?;
    }
    result
}

async fn run(repo: &Arc<Repository>, lock: Option<&Lock>, dry_run: bool) -> Result<IndexRepair> {
    let inputs = gather(repo).await?;
    let plan = plan(&inputs);
    let mut report = IndexRepair {
        index_objects: inputs.opened.len() + inputs.damaged.len(),
        damaged_index_objects: inputs.damaged.clone(),
        missing_packs: plan.missing.iter().map(super::pack_key).collect(),
        dry_run,
        ..Default::default()
    };
    let mut recovered = Vec::new();
    let headers: Vec<(PackId, Result<PackHeader>)> = futures::stream::iter(plan.read.clone())
        .map(
            |(id, size)| async move { (id, super::check::read_pack_header(repo, &id, size).await) },
        )
        .buffer_unordered(8)
        .collect()
        .await;
    for (id, header) in headers {
        match header {
            Ok(h) => recovered.push((id, h)),
            // Deleted since the listing (a prune that finished before we took the lock).
            Err(Error::NotFound(_)) => {}
            Err(e @ Error::Integrity(_)) => {
                tracing::warn!(pack = %id.short(), error = %e, "pack header does not open");
                report.unreadable_packs.push(super::pack_key(&id));
            }
            Err(e) => return Err(e),
        }
    }
    recovered.sort_by_key(|(id, _)| *id);
    report.recovered_packs = recovered.iter().map(|(id, _)| super::pack_key(id)).collect();
    if dry_run || !report.changed() {
        return Ok(report);
    }
    let guard = lock.map(Lock::guard);
    let check = || guard.as_ref().map_or(Ok(()), |g| g.check());
    let store = repo.store().under_lease(guard.clone());
    let to_write: Vec<(PackId, PackHeader)> =
        if plan.rewrite { plan.keep.into_iter().chain(recovered).collect() } else { recovered };
    for chunk in chunks(to_write) {
        check()?;
        write_index_object(repo, &store, chunk).await?;
        report.written += 1;
    }
    if plan.rewrite {
        for key in inputs.opened.keys().chain(&inputs.damaged) {
            check()?;
            store.delete(key).await?;
            report.deleted += 1;
        }
    }
    repo.load_index().await?;
    tracing::info!(
        recovered = report.recovered_packs.len(),
        missing = report.missing_packs.len(),
        written = report.written,
        deleted = report.deleted,
        "index repaired"
    );
    Ok(report)
}

/// Index objects and packs, as they are now (marks play no part: marked packs are indexed
/// like any other, and their marks keep writers from reusing them).
async fn gather(repo: &Repository) -> Result<IndexInputs> {
    let mut inputs = IndexInputs::default();
    let keys: Vec<String> =
        repo.store().list("index/").await?.into_iter().map(|(k, _)| k).collect();
    for (key, sealed) in repo.get_index_objects(keys).await? {
        let opened = IndexId::parse(key.trim_start_matches("index/"))
            .and_then(|id| IndexFile::open(repo.meta_key(), &id, &sealed));
        match opened {
            Ok(file) => {
                inputs.opened.insert(key, file);
            }
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "index object does not open");
                inputs.damaged.push(key);
            }
        }
    }
    for info in repo.store().list_info("packs/").await? {
        if let Some(id) = info.key.rsplit('/').next().and_then(|n| PackId::parse(n).ok()) {
            inputs.present.insert(id, info.size);
        }
    }
    Ok(inputs)
}

/// Packs in groups the size of a compacted index object.
fn chunks(packs: Vec<(PackId, PackHeader)>) -> Vec<Vec<(PackId, PackHeader)>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut entries = 0usize;
    for (id, h) in packs {
        entries += h.entries.len();
        chunk.push((id, h));
        if chunk.len() >= PACKS_PER_INDEX || entries >= ENTRIES_PER_INDEX {
            out.push(std::mem::take(&mut chunk));
            entries = 0;
        }
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// One snapshot `repair snapshots` rewrote (or would rewrite).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RepairedSnapshot {
    pub original: String,
    pub source: String,
    /// The new snapshot's id; `None` in a dry run.
    pub repaired: Option<String>,
    /// Files left out (content lost) and directories whose listing was partly lost.
    pub lost: Vec<String>,
}

/// What `repair snapshots` found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotsRepair {
    pub snapshots: usize,
    pub repaired: Vec<RepairedSnapshot>,
    pub dry_run: bool,
}

/// The tag a repaired snapshot carries: the id of the snapshot it was made from.
pub const REPAIRED_FROM_TAG: &str = "cairn.repaired-from";

/// Under the maintenance lock (no prune meanwhile), and only once the index names no pack
/// that is gone (`repair index` first). Rewrite every snapshot that refers to lost data (a blob in no index, or in a pack that is
/// gone) into a new snapshot without it: files whose content is incomplete are left out,
/// directories whose listing is lost become empty, and both are listed as the new snapshot's
/// failures (it is marked partial). The new snapshot carries [`REPAIRED_FROM_TAG`] and sorts
/// right after its original, so `latest` resolves to it; the original is kept until it is
/// forgotten. Run `repair index` first when index objects were lost: a blob the index does not
/// know counts as lost here.
pub async fn repair_snapshots(
    repo: Arc<Repository>,
    lock: &LockOptions,
    dry_run: bool,
) -> Result<SnapshotsRepair> {
    // The maintenance lock: no prune deletes a pack while we judge what is lost. Snapshots
    // are listed before the index is loaded and the packs listed (a backup indexes its blobs
    // before it commits), so a snapshot committed meanwhile is never judged against an index
    // older than it.
    let held =
        if dry_run { None } else { Some(Lock::acquire(&repo, LockKind::Maintenance, lock).await?) };
    let prepared = async {
        let snapshots = repo.snapshots().await?;
        repo.load_index().await?;
        let index = repo.index().await?;
        let present: HashSet<PackId> = repo
            .store()
            .list("packs/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| PackId::parse(k.rsplit('/').next()?).ok())
            .collect();
        // A blob whose indexed copy is in a pack that is gone may have another copy the
        // index does not offer: `repair index` first, which drops the gone packs.
        let gone = index.packs.iter().filter(|p| !present.contains(&p.id)).count();
        if gone > 0 {
            return Err(Error::Invalid(format!(
                "the index lists {gone} pack(s) that are gone: run `cairn repair index` first"
            )));
        }
        Ok((snapshots, index, present))
    }
    .await;
    let (snapshots, index, present) = match prepared {
        Ok(p) => p,
        Err(e) => {
            if let Some(l) = held {
                l.release().await?;
            }
            return Err(e);
        }
    };
    let mut report = SnapshotsRepair { snapshots: snapshots.len(), dry_run, ..Default::default() };
    let guard = held.as_ref().map(Lock::guard);
    let result = async {
        // An original already repaired is not repaired again (it stays damaged until it is
        // forgotten; its repaired copy is what restores use).
        let done: HashSet<String> = snapshots
            .iter()
            .filter_map(|e| e.snapshot.tags.get(REPAIRED_FROM_TAG).cloned())
            .collect();
        for entry in snapshots.iter().filter(|e| !done.contains(&e.id.to_hex())) {
            let (repo2, index2, present2, guard2) =
                (repo.clone(), index.clone(), present.clone(), guard.clone());
            let handle = tokio::runtime::Handle::current();
            let snapshot = entry.snapshot.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let writer = repo2.writer(index2.clone(), handle.clone()).with_guard(guard2);
                let mut rebuild = Rebuild {
                    repo: &repo2,
                    index: &index2,
                    present: &present2,
                    handle: &handle,
                    writer: (!dry_run).then_some(&writer),
                    lost: Vec::new(),
                };
                let root = rebuild.dir(&snapshot.root, "")?;
                if !dry_run && root.is_some() {
                    writer.flush()?;
                }
                Ok::<_, Error>((root, rebuild.lost, writer.relied()))
            })
            .await
            .map_err(|e| Error::Retryable(format!("repair task: {e}")))??;
            let (Some(root), lost, relied) = outcome else { continue };
            let mut repaired = RepairedSnapshot {
                original: entry.id.to_hex(),
                source: entry.snapshot.source.clone(),
                repaired: None,
                lost: lost.clone(),
            };
            if !dry_run {
                let mut s = entry.snapshot.clone();
                s.root = root;
                s.partial = true;
                s.parent = Some(entry.id);
                s.tags.insert(REPAIRED_FROM_TAG.into(), entry.id.to_hex());
                // One millisecond later than its original: `latest` picks the repaired copy.
                s.time += time::Duration::milliseconds(1);
                s.failures.extend(lost.into_iter().map(|path| super::snapshot::Failure {
                    path,
                    error: "lost from the repository; left out by `cairn repair snapshots`".into(),
                }));
                let id = repo.commit_snapshot(&s, relied, guard.as_ref()).await?;
                tracing::warn!(original = %entry.id.short(), repaired = %id.short(), "snapshot repaired");
                repaired.repaired = Some(id.to_hex());
            }
            report.repaired.push(repaired);
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Some(l) = held {
        l.release().await?;
    }
    result?;
    if report.repaired.iter().any(|r| r.repaired.is_some()) {
        // The new tree blobs' index objects: readers of this handle see them.
        repo.load_index().await?;
    }
    Ok(report)
}

/// Rebuilding one snapshot's trees without what is lost (blocking: runs in spawn_blocking).
struct Rebuild<'a> {
    repo: &'a Arc<Repository>,
    index: &'a super::index::MasterIndex,
    present: &'a HashSet<PackId>,
    handle: &'a tokio::runtime::Handle,
    /// `None` in a dry run: nothing is written.
    writer: Option<&'a super::Writer>,
    lost: Vec<String>,
}

impl Rebuild<'_> {
    fn blob_present(&self, id: &super::BlobId) -> Result<bool> {
        Ok(self.index.get(id)?.is_some_and(|l| self.present.contains(&self.index.pack(l.pack).id)))
    }

    /// Is every blob of this file's content (its extent lists included) in a present pack?
    /// An extent list that does not open counts as lost; a store failure is an error.
    fn content_present(&self, file: &super::Node) -> Result<bool> {
        let all_present = |extents: &[super::Extent]| -> Result<bool> {
            for id in extents.iter().filter_map(|e| e.id.as_ref()) {
                if !self.blob_present(id)? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if !all_present(&file.content)? {
            return Ok(false);
        }
        for list_id in &file.extent_lists {
            if !self.blob_present(list_id)? {
                return Ok(false);
            }
            match self.handle.block_on(self.repo.read_extent_list(list_id)) {
                Ok(extents) if all_present(&extents)? => {}
                Ok(_) | Err(Error::Integrity(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The directory `node` at `path` rebuilt, or `None` if nothing under it is lost.
    fn dir(&mut self, node: &super::Node, path: &str) -> Result<Option<super::Node>> {
        use super::tree::{MAX_NODES_PER_BLOB, NodeKind, TreeBlob};
        let mut changed = false;
        let mut children = Vec::new();
        for tree_id in &node.subtree {
            let read = if self.blob_present(tree_id)? {
                self.handle
                    .block_on(self.repo.read_blob(tree_id))
                    .and_then(|b| TreeBlob::decode(&b))
            } else {
                Err(Error::Integrity("tree blob lost".into()))
            };
            match read {
                Ok(t) => children.extend(t.nodes),
                Err(Error::Integrity(_)) => {
                    changed = true;
                    self.lost.push(format!("{}/", if path.is_empty() { "" } else { path }));
                }
                Err(e) => return Err(e),
            }
        }
        let mut kept = Vec::with_capacity(children.len());
        for child in children {
            let child_path = format!("{path}/{}", child.name.display());
            match child.kind {
                NodeKind::Dir => match self.dir(&child, &child_path)? {
                    Some(rebuilt) => {
                        changed = true;
                        kept.push(rebuilt);
                    }
                    None => kept.push(child),
                },
                NodeKind::File if !self.content_present(&child)? => {
                    changed = true;
                    self.lost.push(child_path);
                }
                _ => kept.push(child),
            }
        }
        if !changed {
            return Ok(None);
        }
        let mut rebuilt = node.clone();
        rebuilt.subtree.clear();
        if let Some(w) = self.writer {
            for part in kept.chunks(MAX_NODES_PER_BLOB) {
                rebuilt
                    .subtree
                    .push(w.add_blob(super::BlobKind::Tree, &TreeBlob::encode(part))?.id);
            }
        }
        Ok(Some(rebuilt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::testutil::{backup, memory_repo, noise, pack_of, packs, read_latest};

    fn header() -> PackHeader {
        PackHeader { kind: crate::repo::BlobKind::Data, wrapped_key: Vec::new(), entries: vec![] }
    }

    #[test]
    fn the_plan_drops_missing_packs_and_reads_unindexed_ones() {
        let (a, b, c, d) = (PackId([1; 32]), PackId([2; 32]), PackId([3; 32]), PackId([4; 32]));
        let mut inputs = IndexInputs::default();
        inputs
            .opened
            .insert("index/x".into(), IndexFile { packs: vec![(a, header()), (b, header())] });
        inputs.present = BTreeMap::from([(a, 10), (c, 30), (d, 40)]);
        // `d` is named by a mark: marks do not enter the plan, it is indexed like any other.
        let p = plan(&inputs);
        assert_eq!(p.keep.keys().copied().collect::<Vec<_>>(), vec![a]);
        assert_eq!(p.missing, BTreeSet::from([b]));
        assert_eq!(p.read, BTreeMap::from([(c, 30), (d, 40)]), "marked packs are indexed too");
        assert!(p.rewrite);
        // Only unindexed packs: add to the index, rewrite nothing.
        inputs.opened.insert("index/x".into(), IndexFile { packs: vec![(a, header())] });
        assert!(!plan(&inputs).rewrite);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_index_object_is_rebuilt_from_the_packs() {
        let repo = memory_repo("repair-lost-index").await;
        let (x, y) = (noise(300 << 10), noise(300 << 10));
        backup(&repo, "src", &[("x", &x), ("y", &y)]).await;
        let all_packs = packs(&repo).await;
        for (key, _) in repo.store().list("index/").await.unwrap() {
            repo.store().delete(&key).await.unwrap();
        }
        repo.load_index().await.unwrap();
        assert!(read_latest(&repo, "x").await.is_err(), "unreadable before repair");

        let dry = repair_index(repo.clone(), &LockOptions::default(), true).await.unwrap();
        assert_eq!(dry.recovered_packs.len(), all_packs.len());
        assert_eq!(dry.written, 0);
        assert!(repo.store().list("index/").await.unwrap().is_empty(), "a dry run writes nothing");

        let r = repair_index(repo.clone(), &LockOptions::default(), false).await.unwrap();
        assert_eq!(r.recovered_packs.len(), all_packs.len(), "{r:?}");
        assert!(r.written >= 1 && r.missing_packs.is_empty(), "{r:?}");
        assert_eq!(read_latest(&repo, "x").await.unwrap(), x);
        assert_eq!(read_latest(&repo, "y").await.unwrap(), y);
        let again = repair_index(repo.clone(), &LockOptions::default(), false).await.unwrap();
        assert!(!again.changed(), "a second run finds nothing: {again:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_pack_leaves_the_index_so_no_backup_reuses_its_blobs() {
        let repo = memory_repo("repair-lost-pack").await;
        let x = noise(300 << 10);
        backup(&repo, "src", &[("x", &x)]).await;
        let lost = pack_of(&repo, "x").await;
        repo.store().delete(&lost).await.unwrap();
        let r = repair_index(repo.clone(), &LockOptions::default(), false).await.unwrap();
        assert_eq!(r.missing_packs, vec![lost.clone()], "{r:?}");
        assert!(r.deleted >= 1);
        let index = repo.index().await.unwrap();
        let blob = repo.write_key().blob_id(&x);
        assert!(!index.contains(&blob).unwrap(), "the lost blob is no longer offered for dedup");
        // The next backup of the same content stores it again, and it restores.
        backup(&repo, "src", &[("x", &x)]).await;
        assert_eq!(read_latest(&repo, "x").await.unwrap(), x);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_that_lost_a_pack_is_rewritten_without_the_lost_files() {
        let repo = memory_repo("repair-snapshots").await;
        // 1 MiB packs: five files of 400 KiB fill more than one.
        let names = ["a", "b", "d/c", "d/e", "f"];
        let files: Vec<Vec<u8>> = names.iter().map(|_| noise(400 << 10)).collect();
        let listed: Vec<(&str, &[u8])> =
            names.iter().zip(&files).map(|(n, f)| (*n, f.as_slice())).collect();
        let original = backup(&repo, "src", &listed).await;
        let lost = pack_of(&repo, "a").await;
        let mut lost_files = Vec::new();
        let mut survivors = Vec::new();
        for (name, content) in names.iter().zip(&files) {
            if pack_of(&repo, name).await == lost {
                lost_files.push(format!("/{name}"));
            } else {
                survivors.push((*name, content));
            }
        }
        assert!(!survivors.is_empty(), "more than one pack");
        repo.store().delete(&lost).await.unwrap();
        // The index still offers the lost pack: repair the index first.
        let refused = repair_snapshots(repo.clone(), &LockOptions::default(), true).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        repair_index(repo.clone(), &LockOptions::default(), false).await.unwrap();

        let dry = repair_snapshots(repo.clone(), &LockOptions::default(), true).await.unwrap();
        assert_eq!(dry.repaired.len(), 1);
        let mut reported = dry.repaired[0].lost.clone();
        reported.sort();
        assert_eq!(reported, lost_files);
        assert_eq!(repo.snapshots().await.unwrap().len(), 1, "a dry run writes nothing");

        let r = repair_snapshots(repo.clone(), &LockOptions::default(), false).await.unwrap();
        assert_eq!(r.repaired.len(), 1, "{r:?}");
        assert_eq!(r.repaired[0].original, original.to_hex());
        let snaps = repo.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 2, "the original is kept");
        let latest = repo.find_snapshot("latest", None).await.unwrap();
        assert_eq!(latest.snapshot.tags.get(REPAIRED_FROM_TAG), Some(&original.to_hex()));
        assert!(latest.snapshot.partial);
        for (name, content) in survivors {
            assert_eq!(&read_latest(&repo, name).await.unwrap(), content, "survivors restore");
        }
        assert!(matches!(repo.lookup(&latest.snapshot, "a").await, Err(Error::NotFound(_))));
        // The repaired snapshot is sound and its original already repaired: nothing to do.
        let again = repair_snapshots(repo.clone(), &LockOptions::default(), false).await.unwrap();
        assert!(again.repaired.is_empty(), "{again:?}");
    }
}
