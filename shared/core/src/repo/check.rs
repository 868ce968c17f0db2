//! `check`: find every kind of damage and name what it affects.
//!
//! 1. Every index object opens; every pack it lists exists, its header opens and agrees with
//!    the index (catches missing, truncated and altered packs, and a wrong key).
//! 2. Every pack in the store is indexed (unindexed packs are reported as leftovers, not
//!    damage: a crashed backup leaves them and prune removes them).
//! 3. Every snapshot's trees open, and every blob they reference is indexed in a sound pack.
//! 4. With `read_data`, every data blob of the chosen packs is fetched, decrypted and hashed.
//!
//! Problems name the snapshots and paths they affect.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use super::ids::{BlobId, IndexId, PackId, SnapshotId};
use super::index::{IndexFile, MasterIndex};
use super::pack::{
    MAGIC, PackHeader, TRAILER_LEN, header_len_from_trailer, open_header, read_header,
};
use super::snapshot::SnapshotEntry;
use super::tree::{Extent, ExtentList, Node, NodeKind, TreeBlob};
use super::{Repository, pack_key};
use crate::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Fraction of packs (0.0..=1.0) whose data blobs are read and verified.
    pub read_data_fraction: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: String,
    pub object: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Affected {
    pub snapshot: String,
    pub source: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_objects: usize,
    pub packs: usize,
    pub blobs: usize,
    pub packs_read: usize,
    pub unindexed_packs: Vec<String>,
    pub problems: Vec<Problem>,
    pub affected: Vec<Affected>,
    /// Objects that could not be read (store unreachable, access refused): the check is
    /// incomplete. Reported beside damage it did confirm; alone it is an error instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    // Snapshots first: a backup indexes its blobs before it commits (§12.1), so the index
    // loaded next covers every snapshot listed now, whatever commits meanwhile.
    let listed_snapshots = repo.snapshots_lenient().await?;
    // Blob reads below go through the repository's own index; a damaged index object is
    // reported by the pass that follows, so a failure to load here is not fatal.
    repo.load_index_lenient().await?;
    let mut found = Findings::default();
    let indexed = check_index_objects(repo, &mut found).await?;
    let unindexed_packs = check_packs(repo, &indexed.headers, &mut found).await?;
    // Data is read before trees are walked, so that affected paths include data damage.
    let packs_read = if opts.read_data_fraction > 0.0 {
        read_data(repo, &indexed, opts.read_data_fraction, &mut found).await
    } else {
        0
    };
    mark_blobs_of_bad_packs(repo, &mut found).await?;
    let (snapshots, affected) =
        check_snapshots(repo, listed_snapshots, &indexed.master, &mut found).await?;
    if found.problems.is_empty()
        && let Some(first) = found.unreadable.first()
    {
        // Trouble reading is not damage: say what could not be read and judge nothing.
        let msg = format!(
            "could not read {} object(s), so the check is incomplete and reports no damage \
             (first: {first})",
            found.unreadable.len()
        );
        return Err(if found.denied { Error::Denied(msg) } else { Error::Retryable(msg) });
    }
    Ok(CheckReport {
        snapshots,
        index_objects: indexed.objects,
        packs: indexed.headers.len(),
        blobs: indexed.master.len(),
        packs_read,
        unindexed_packs,
        problems: found.problems.into_iter().collect(),
        affected,
        unreadable: found.unreadable,
    })
}

/// What the passes found so far.
#[derive(Debug, Default)]
struct Findings {
    problems: BTreeSet<Problem>,
    /// Packs missing or unsound: every blob they hold counts as damaged.
    bad_packs: HashSet<PackId>,
    /// Blobs that did not open.
    bad_blobs: HashSet<BlobId>,
    /// Reads that failed for a reason that is not the data's (the store unreachable
    /// after every retry, access refused): the check cannot conclude on those objects.
    unreadable: Vec<String>,
    /// Some of them were refused access (exit 4 rather than 1).
    denied: bool,
}

impl Findings {
    fn add(&mut self, kind: &str, object: &str, detail: &str) {
        self.problems.insert(problem(kind, object, detail));
    }

    /// Record a failed read: damage, unless the store could not be reached. Returns whether
    /// it was damage.
    fn failed(&mut self, kind: &str, object: &str, e: &Error) -> bool {
        if matches!(e, Error::Retryable(_) | Error::Denied(_)) {
            self.denied |= matches!(e, Error::Denied(_));
            self.unreadable.push(format!("{object}: {e}"));
            false
        } else {
            self.add(kind, object, &e.to_string());
            true
        }
    }
}

/// The index objects that opened, merged.
struct Indexed {
    /// Index objects listed, whether they opened or not.
    objects: usize,
    master: MasterIndex,
    /// Each indexed pack's header as (the last) index object listing it says, as a digest
    /// of its encoding: 32 bytes a pack, where the headers themselves are ~50 a blob.
    headers: HashMap<PackId, [u8; 32]>,
}

/// The digest a header is compared by: its canonical encoding's hash.
fn header_digest(header: &PackHeader) -> [u8; 32] {
    let mut encoded = Vec::new();
    header.encode(&mut encoded);
    *blake3::hash(&encoded).as_bytes()
}

/// Every blob a damaged or missing pack's header lists, whichever copy an index would
/// pick (restores and check may merge the index in different orders): the index objects are
/// read again for those packs, so that no header has to be held for the whole check.
async fn mark_blobs_of_bad_packs(repo: &Repository, found: &mut Findings) -> Result<()> {
    if found.bad_packs.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> =
        repo.store().list("index/").await?.into_iter().map(|(k, _)| k).collect();
    let meta = repo.meta_key();
    let (bad_packs, bad_blobs) = (&found.bad_packs, &mut found.bad_blobs);
    repo.for_each_index_object(keys, |key, sealed| {
        // Objects that do not open were reported by pass 1.
        if let Ok(file) = IndexId::parse(key.trim_start_matches("index/"))
            .and_then(|id| IndexFile::open(meta, &id, &sealed))
        {
            for (pack, header) in &file.packs {
                if bad_packs.contains(pack) {
                    bad_blobs.extend(header.entries.iter().map(|e| e.id));
                }
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Pass 1: every index object opens.
async fn check_index_objects(repo: &Repository, found: &mut Findings) -> Result<Indexed> {
    let store = repo.store();
    let index_keys = store.list("index/").await?;
    let mut indexed = Indexed {
        objects: index_keys.len(),
        master: MasterIndex::new(repo.index_budget().clone()),
        headers: HashMap::new(),
    };
    let mut named = Vec::new();
    for (key, _) in &index_keys {
        if IndexId::parse(key.trim_start_matches("index/")).is_ok() {
            named.push(key.clone());
        } else {
            found.add("stray-object", key, "not a valid index name");
        }
    }
    // One compacted away by a prune meanwhile is skipped, its replacement fetched. Each is
    // merged as it arrives and dropped: the sealed objects are never all held at once.
    let meta = repo.meta_key();
    let master = &mut indexed.master;
    let headers = &mut indexed.headers;
    repo.for_each_index_object(named, |key, sealed| {
        let opened = IndexId::parse(key.trim_start_matches("index/"))
            .and_then(|id| IndexFile::open(meta, &id, &sealed));
        match opened {
            Ok(file) => {
                for (pack, header) in file.packs {
                    master.add_pack(pack, &header)?;
                    headers.insert(pack, header_digest(&header));
                }
            }
            Err(e) => {
                found.failed("index", key, &e);
            }
        }
        Ok(())
    })
    .await?;
    indexed.master.finish()?;
    Ok(indexed)
}

/// Pass 2: every indexed pack is present, its header opens and agrees with the index.
/// Returns the keys of packs present but in no index (leftovers, not damage), sorted.
async fn check_packs(
    repo: &Repository,
    headers: &HashMap<PackId, [u8; 32]>,
    found: &mut Findings,
) -> Result<Vec<String>> {
    let listed: HashMap<PackId, u64> = repo
        .store()
        .list("packs/")
        .await?
        .into_iter()
        .filter_map(|(k, size)| PackId::parse(k.rsplit('/').next()?).ok().map(|id| (id, size)))
        .collect();
    // Per pack: `None` when it is not in the store at all, else what reading its header gave.
    let results: Vec<(PackId, Option<Result<()>>)> = futures::stream::iter(headers.iter())
        .map(|(id, indexed)| {
            let size = listed.get(id).copied();
            async move {
                let Some(size) = size else { return (*id, None) };
                (*id, Some(verify_pack_header(repo, id, size, indexed).await))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut absent = Vec::new();
    for (id, result) in results {
        let damaged = match result {
            None | Some(Err(Error::NotFound(_))) => {
                absent.push(id);
                false
            }
            Some(Ok(())) => false,
            Some(Err(e)) => found.failed("pack", &pack_key(&id), &e),
        };
        if damaged {
            found.bad_packs.insert(id);
        }
    }
    for id in confirm_missing(repo, absent).await? {
        found.add("pack", &pack_key(&id), "missing");
        found.bad_packs.insert(id);
    }
    let unindexed: BTreeSet<String> =
        listed.keys().filter(|id| !headers.contains_key(id)).map(pack_key).collect();
    Ok(unindexed.into_iter().collect())
}

/// Of packs found absent, those still missing now and still indexed: a prune that deleted a
/// pack meanwhile had removed it from the index first (§15.5), which is not damage.
async fn confirm_missing(repo: &Repository, absent: Vec<PackId>) -> Result<Vec<PackId>> {
    if absent.is_empty() {
        return Ok(absent);
    }
    let keys: Vec<String> =
        repo.store().list("index/").await?.into_iter().map(|(k, _)| k).collect();
    let mut indexed_now = HashSet::new();
    for (key, sealed) in repo.get_index_objects(keys).await? {
        if let Ok(file) = IndexId::parse(key.trim_start_matches("index/"))
            .and_then(|id| IndexFile::open(repo.meta_key(), &id, &sealed))
        {
            indexed_now.extend(file.packs.into_iter().map(|(p, _)| p));
        }
    }
    let mut missing = Vec::new();
    for id in absent.into_iter().filter(|p| indexed_now.contains(p)) {
        match repo.store().head(&pack_key(&id)).await {
            Err(Error::NotFound(_)) => missing.push(id),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// Pass 4 (read data): fetch a `fraction` of the sound packs whole and open every blob.
/// Returns how many packs were read.
async fn read_data(
    repo: &Repository,
    indexed: &Indexed,
    fraction: f64,
    found: &mut Findings,
) -> usize {
    let mut ids: Vec<PackId> =
        indexed.headers.keys().filter(|id| !found.bad_packs.contains(id)).copied().collect();
    ids.sort();
    // A different subset each run: start at a random point of the sorted list.
    let start = if ids.is_empty() { 0 } else { rand::random::<u64>() as usize % ids.len() };
    let chosen = choose_packs(&ids, fraction, start);
    let packs_read = chosen.len();
    let master = &indexed.master;
    let results: Vec<(PackId, Vec<BlobFailure>)> = futures::stream::iter(chosen)
        .map(|id| async move { (id, read_pack_blobs(repo, master, &id).await) })
        .buffer_unordered(4)
        .collect()
        .await;
    for (id, failures) in results {
        for (blob, err) in failures {
            match blob {
                Some(blob) => {
                    if found.failed("blob", &format!("{} in {}", blob, pack_key(&id)), &err) {
                        found.bad_blobs.insert(blob);
                    }
                }
                None => {
                    if found.failed("pack", &pack_key(&id), &err) {
                        found.bad_packs.insert(id);
                    }
                }
            }
        }
    }
    packs_read
}

/// `fraction` (at most all) of `ids`, rounded up, taken from `start` on and wrapping around.
fn choose_packs(ids: &[PackId], fraction: f64, start: usize) -> Vec<PackId> {
    let take = ((ids.len() as f64) * fraction.min(1.0)).ceil() as usize;
    (0..take.min(ids.len())).map(|i| ids[(start + i) % ids.len()]).collect()
}

/// Pass 3: every snapshot opens, its trees open, and every blob it references is indexed
/// and not found damaged. Tree reads go through the repository's index (loaded leniently).
/// Returns the number of snapshots that opened and the paths damage affects.
async fn check_snapshots(
    repo: &Repository,
    (snaps, bad_snapshots): (Vec<SnapshotEntry>, Vec<(String, Error)>),
    master: &MasterIndex,
    found: &mut Findings,
) -> Result<(usize, Vec<Affected>)> {
    for (key, e) in bad_snapshots {
        found.add("snapshot", &key, &e.to_string());
    }
    let mut affected: BTreeMap<SnapshotId, Affected> = BTreeMap::new();
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    // Extent lists whose blobs were all found present: snapshots of a database share most.
    let mut sound_lists: HashSet<BlobId> = HashSet::new();
    for entry in &snaps {
        let paths =
            walk_snapshot(repo, entry, master, found, &mut seen_trees, &mut sound_lists).await;
        if !paths.is_empty() {
            affected.insert(
                entry.id,
                Affected {
                    snapshot: entry.id.to_hex(),
                    source: entry.snapshot.source.clone(),
                    paths: paths.into_iter().collect(),
                },
            );
        }
    }
    Ok((snaps.len(), affected.into_values().collect()))
}

/// Walk one snapshot's trees. Returns the paths of directories whose listing and files
/// whose content is missing or damaged (`/` for the root).
async fn walk_snapshot(
    repo: &Repository,
    entry: &SnapshotEntry,
    master: &MasterIndex,
    found: &mut Findings,
    seen_trees: &mut HashSet<BlobId>,
    sound_lists: &mut HashSet<BlobId>,
) -> BTreeSet<String> {
    let mut damaged = BTreeSet::new();
    let mut stack = vec![(String::new(), entry.snapshot.root.clone())];
    while let Some((path, node)) = stack.pop() {
        let shown = || if path.is_empty() { "/".to_string() } else { path.clone() };
        match node.kind {
            NodeKind::Dir => {
                for tree_id in &node.subtree {
                    match read_tree(repo, tree_id, master, found, seen_trees).await {
                        Some(children) => {
                            for child in children {
                                stack.push((format!("{path}/{}", child.name.display()), child));
                            }
                        }
                        None => {
                            damaged.insert(shown());
                        }
                    }
                }
            }
            NodeKind::File => {
                // Whether any data blob of `extents` is missing or damaged.
                let check_data = |extents: &[Extent], found: &mut Findings| {
                    let mut bad = false;
                    for id in extents.iter().filter_map(|ext| ext.id.as_ref()) {
                        match master.contains(id) {
                            Ok(true) => bad |= found.bad_blobs.contains(id),
                            Ok(false) => {
                                found.add("missing-blob", &id.to_hex(), "data blob is in no index");
                                bad = true;
                            }
                            Err(e) => {
                                found.failed("index-cache", &id.to_hex(), &e);
                                bad = true;
                            }
                        }
                    }
                    bad
                };
                if check_data(&node.content, found) {
                    damaged.insert(shown());
                }
                for list_id in &node.extent_lists {
                    if sound_lists.contains(list_id) {
                        continue;
                    }
                    let list =
                        read_tree_blob(repo, list_id, master, found, seen_trees, "extent list")
                            .await
                            .map(|b| ExtentList::decode(&b));
                    match list {
                        Some(Ok(extents)) => {
                            if check_data(&extents, found) {
                                damaged.insert(shown());
                            } else {
                                sound_lists.insert(*list_id);
                            }
                        }
                        Some(Err(e)) => {
                            // Reported once: a blob known bad is not read again.
                            found.failed("extent-list", &list_id.to_hex(), &e);
                            found.bad_blobs.insert(*list_id);
                            damaged.insert(shown());
                        }
                        None => {
                            damaged.insert(shown());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    damaged
}

/// The nodes of one directory listing blob; `None` if it is in no index, known damaged, or
/// does not open (reported on its first visit, and known damaged from then on).
async fn read_tree(
    repo: &Repository,
    tree_id: &BlobId,
    master: &MasterIndex,
    found: &mut Findings,
    seen_trees: &mut HashSet<BlobId>,
) -> Option<Vec<Node>> {
    let blob = read_tree_blob(repo, tree_id, master, found, seen_trees, "tree").await?;
    match TreeBlob::decode(&blob) {
        Ok(t) => Some(t.nodes),
        Err(e) => {
            found.failed("tree", &tree_id.to_hex(), &e);
            found.bad_blobs.insert(*tree_id);
            None
        }
    }
}

/// The plaintext of a tree-kind blob (a listing or an extent list); `None` if it is in no
/// index, known damaged, or does not open (reported on its first visit, and known damaged
/// from then on).
async fn read_tree_blob(
    repo: &Repository,
    tree_id: &BlobId,
    master: &MasterIndex,
    found: &mut Findings,
    seen_trees: &mut HashSet<BlobId>,
    what: &str,
) -> Option<Vec<u8>> {
    match master.contains(tree_id) {
        Ok(true) => {}
        Ok(false) => {
            found.add("missing-blob", &tree_id.to_hex(), &format!("{what} blob is in no index"));
            return None;
        }
        Err(e) => {
            found.failed("index-cache", &tree_id.to_hex(), &e);
            return None;
        }
    }
    if found.bad_blobs.contains(tree_id) {
        return None;
    }
    let first_visit = seen_trees.insert(*tree_id);
    match repo.read_blob(tree_id).await {
        Ok(b) => Some(b),
        Err(e) => {
            let damage = if first_visit {
                found.failed("tree", &tree_id.to_hex(), &e)
            } else {
                !matches!(e, Error::Retryable(_))
            };
            if damage {
                found.bad_blobs.insert(*tree_id);
            }
            None
        }
    }
}

/// A blob that failed to open (or, with no id, the whole pack), and why.
type BlobFailure = (Option<BlobId>, Error);

fn problem(kind: &str, object: &str, detail: &str) -> Problem {
    Problem { kind: kind.into(), object: object.into(), detail: detail.into() }
}

/// Read a pack's header from the pack itself: only its tail is fetched (trailer, then the
/// sealed header).
pub async fn read_pack_header(repo: &Repository, id: &PackId, size: u64) -> Result<PackHeader> {
    let key = pack_key(id);
    if size < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(Error::Integrity(format!("truncated to {size} bytes")));
    }
    let trailer = repo.store().get_range(&key, size - TRAILER_LEN as u64..size).await?;
    let sealed_len = header_len_from_trailer(id, &trailer, size)?;
    let start = size - TRAILER_LEN as u64 - u64::from(sealed_len);
    let sealed = repo.store().get_range(&key, start..size - TRAILER_LEN as u64).await?;
    open_header(id, &sealed, start, repo.meta_key())
}

async fn verify_pack_header(
    repo: &Repository,
    id: &PackId,
    size: u64,
    indexed: &[u8; 32],
) -> Result<()> {
    let header = read_pack_header(repo, id, size).await?;
    if &header_digest(&header) != indexed {
        return Err(Error::Integrity("pack header disagrees with the index".into()));
    }
    Ok(())
}

/// Fetch a whole pack and open each of its blobs. Returns the failures.
async fn read_pack_blobs(repo: &Repository, master: &MasterIndex, id: &PackId) -> Vec<BlobFailure> {
    // Pack keys are found through the repository's own index (its slots, not `master`'s).
    let repo_index = match repo.index().await {
        Ok(i) => i,
        Err(e) => return vec![(None, e)],
    };
    let bytes = match repo.store().get(&pack_key(id)).await {
        Ok(b) => b,
        Err(e) => return vec![(None, e)],
    };
    let header = match read_header(id, &bytes, repo.meta_key()) {
        Ok(h) => h,
        Err(e) => return vec![(None, e)],
    };
    let mut failures = Vec::new();
    for e in &header.entries {
        let mut loc = match master.get(&e.id) {
            Ok(Some(loc)) => loc,
            Ok(None) => continue,
            Err(err) => {
                failures.push((None, err));
                continue;
            }
        };
        // The blob may be indexed in another pack too; check this copy.
        if let Some(slot) = repo_index.pack_slot(id) {
            loc.pack = slot;
        }
        loc.offset = e.offset;
        loc.length = e.length;
        let (start, end) = (e.offset as usize, e.offset as usize + e.length as usize);
        let Some(sealed) = bytes.get(start..end) else {
            failures.push((Some(e.id), Error::Integrity("lies outside the pack".into())));
            continue;
        };
        if let Err(err) = repo.open_blob(&e.id, &loc, sealed) {
            failures.push((Some(e.id), err));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::testutil::{backup, memory_repo, noise, pack_of, packs};
    use crate::repo::{Snapshot, SnapshotEntry};

    const ALL: CheckOptions = CheckOptions { read_data_fraction: 1.0 };
    const NO_DATA: CheckOptions = CheckOptions { read_data_fraction: 0.0 };

    async fn three_files(name: &str) -> Arc<Repository> {
        let repo = memory_repo(name).await;
        let (a, b, c) = (noise(400 << 10), noise(400 << 10), noise(400 << 10));
        backup(&repo, "src", &[("a", &a), ("b", &b), ("d/c", &c)]).await;
        repo
    }

    fn kinds(r: &CheckReport) -> Vec<&str> {
        r.problems.iter().map(|p| p.kind.as_str()).collect()
    }

    fn paths(r: &CheckReport) -> Vec<&str> {
        r.affected.iter().flat_map(|a| a.paths.iter().map(String::as_str)).collect()
    }

    async fn latest(repo: &Repository) -> SnapshotEntry {
        repo.find_snapshot("latest", None).await.unwrap()
    }

    /// Flip one byte inside a blob, leaving the pack's header (at its tail) intact.
    async fn corrupt_blob(repo: &Repository, blob: &BlobId) {
        let index = repo.index().await.unwrap();
        let loc = index.get(blob).unwrap().unwrap();
        let key = pack_key(&index.pack(loc.pack).id);
        let mut bytes = repo.store().get(&key).await.unwrap().to_vec();
        bytes[loc.offset as usize + 20] ^= 0x55;
        repo.store().put_overwrite(&key, bytes.into()).await.unwrap();
    }

    #[test]
    fn the_read_data_subset_rounds_up_and_wraps_around() {
        let ids: Vec<PackId> = (0..5u8).map(|n| PackId([n; 32])).collect();
        assert_eq!(choose_packs(&ids, 0.5, 3), [ids[3], ids[4], ids[0]]);
        assert_eq!(choose_packs(&ids, 0.01, 4), [ids[4]]);
        assert_eq!(choose_packs(&ids, 1.0, 2).len(), 5);
        assert_eq!(choose_packs(&ids, 7.0, 0), ids);
        assert!(choose_packs(&[], 1.0, 0).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_data_subset_reads_that_fraction_of_the_packs() {
        let repo = three_files("check-subset").await;
        let packs = packs(&repo).await.len();
        assert!(packs >= 2);
        let half = CheckOptions { read_data_fraction: 0.5 };
        let r = check(&repo, &half).await.unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.packs_read, packs.div_ceil(2));
        // A pack whose header is bad is not read again.
        let key = pack_of(&repo, "a").await;
        repo.store().put_overwrite(&key, bytes::Bytes::from_static(b"short")).await.unwrap();
        let r = check(&repo, &ALL).await.unwrap();
        assert_eq!(r.packs_read, packs - 1);
        assert_eq!(kinds(&r), ["pack"]);
        assert!(r.problems[0].detail.contains("truncated"), "{:?}", r.problems);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sound_repository_passes() {
        let repo = three_files("check-sound").await;
        let r = check(&repo, &ALL).await.unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.snapshots, 1);
        assert_eq!(r.packs, packs(&repo).await.len());
        assert_eq!(r.packs_read, r.packs);
        assert!(r.index_objects >= 1);
        // Three data blobs, the root's listing and `d`'s.
        assert_eq!(r.blobs, 5);
        assert!(r.unindexed_packs.is_empty() && r.affected.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_pack_names_the_files_it_held() {
        let repo = three_files("check-missing-pack").await;
        let key = pack_of(&repo, "a").await;
        repo.store().delete(&key).await.unwrap();
        let r = check(&repo, &NO_DATA).await.unwrap();
        assert!(r.problems.contains(&problem("pack", &key, "missing")), "{:?}", r.problems);
        assert!(kinds(&r).iter().all(|k| *k == "pack"), "{:?}", r.problems);
        assert!(paths(&r).contains(&"/a"), "{:?}", r.affected);
        assert_eq!(r.affected[0].snapshot, latest(&repo).await.id.to_hex());
        assert_eq!(r.affected[0].source, "src");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_data_blob_is_found_by_reading_data_only() {
        let repo = three_files("check-bad-blob").await;
        let snapshot = latest(&repo).await.snapshot;
        let c = repo.lookup(&snapshot, "d/c").await.unwrap().content[0].id.unwrap();
        corrupt_blob(&repo, &c).await;
        let r = check(&repo, &NO_DATA).await.unwrap();
        assert!(r.ok(), "headers are intact: {:?}", r.problems);
        let r = check(&repo, &ALL).await.unwrap();
        assert_eq!(kinds(&r), ["blob"], "{:?}", r.problems);
        assert_eq!(r.problems[0].object, format!("{} in {}", c, pack_of(&repo, "d/c").await));
        assert_eq!(paths(&r), ["/d/c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_tree_is_reported_once_and_marks_its_directory() {
        let repo = three_files("check-bad-tree").await;
        let root = latest(&repo).await.snapshot.root;
        let dir = repo.read_dir(&root.subtree).await.unwrap();
        let d = dir.iter().find(|n| n.name.as_bytes() == b"d").unwrap().subtree[0];
        corrupt_blob(&repo, &d).await;
        // A second snapshot sharing the tree: one problem, both snapshots affected.
        let mut again = latest(&repo).await.snapshot;
        again.source = "again".into();
        repo.save_snapshot(&again).await.unwrap();
        let r = check(&repo, &NO_DATA).await.unwrap();
        assert_eq!(kinds(&r), ["tree"], "{:?}", r.problems);
        assert_eq!(r.problems[0].object, d.to_hex());
        assert_eq!(paths(&r), ["/d", "/d"]);
        // Read first, the blob is damage of its pack's data; the tree is not read again.
        let r = check(&repo, &ALL).await.unwrap();
        assert_eq!(kinds(&r), ["blob"], "{:?}", r.problems);
        assert_eq!(paths(&r), ["/d", "/d"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_records_and_leftovers() {
        let repo = three_files("check-records").await;
        let store = repo.store();
        let index_objects = store.list("index/").await.unwrap().len();
        let junk = bytes::Bytes::from_static(b"junk");
        let bad_index = format!("index/{}", IndexId::random());
        store.create(&bad_index, junk.clone()).await.unwrap();
        store.create("index/not-an-id", junk.clone()).await.unwrap();
        let bad_snapshot = format!("snapshots/{}", SnapshotId::random());
        store.create(&bad_snapshot, junk.clone()).await.unwrap();
        let leftover = pack_key(&PackId::random());
        store.create(&leftover, junk).await.unwrap();
        let mut dangling: Snapshot = latest(&repo).await.snapshot;
        dangling.root.subtree = vec![BlobId::random()];
        repo.save_snapshot(&dangling).await.unwrap();

        let r = check(&repo, &ALL).await.unwrap();
        assert_eq!(r.unindexed_packs, [leftover]);
        assert_eq!(r.index_objects, index_objects + 2);
        assert_eq!(r.snapshots, 2);
        let found: Vec<(&str, &str)> =
            r.problems.iter().map(|p| (p.kind.as_str(), p.object.as_str())).collect();
        let missing = dangling.root.subtree[0].to_hex();
        let mut want = vec![
            ("index", bad_index.as_str()),
            ("missing-blob", missing.as_str()),
            ("snapshot", bad_snapshot.as_str()),
            ("stray-object", "index/not-an-id"),
        ];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(paths(&r), ["/"]);
    }
}
