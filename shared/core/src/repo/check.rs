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
use super::tree::{NodeKind, TreeBlob};
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
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let store = repo.store();
    // Blob reads below go through the repository's own index; a damaged index object is
    // reported by the pass that follows, so a failure to load here is not fatal.
    repo.load_index_lenient().await?;
    let mut problems = BTreeSet::new();
    let mut bad_blobs: HashSet<BlobId> = HashSet::new();

    // 1. Index objects.
    let index_keys = store.list("index/").await?;
    report.index_objects = index_keys.len();
    let mut master = MasterIndex::default();
    let mut headers: HashMap<PackId, PackHeader> = HashMap::new();
    for (key, _) in &index_keys {
        let id = match IndexId::parse(key.trim_start_matches("index/")) {
            Ok(id) => id,
            Err(_) => {
                problems.insert(problem("stray-object", key, "not a valid index name"));
                continue;
            }
        };
        let opened = match store.get(key).await {
            Ok(b) => IndexFile::open(repo.meta_key(), &id, &b),
            Err(e) => Err(e),
        };
        match opened {
            Ok(file) => {
                for (pack, header) in file.packs {
                    master.add_pack(pack, &header);
                    headers.insert(pack, header);
                }
            }
            Err(e) => {
                problems.insert(problem("index", key, &e.to_string()));
            }
        }
    }
    master.finish();
    report.blobs = master.len();

    // 2. Packs: present, sound header, agreeing with the index.
    let listed: HashMap<PackId, u64> = store
        .list("packs/")
        .await?
        .into_iter()
        .filter_map(|(k, size)| PackId::parse(k.rsplit('/').next()?).ok().map(|id| (id, size)))
        .collect();
    report.packs = headers.len();
    let mut bad_packs: HashSet<PackId> = HashSet::new();
    let results: Vec<(PackId, Option<String>)> = futures::stream::iter(headers.iter())
        .map(|(id, indexed)| {
            let size = listed.get(id).copied();
            async move {
                let Some(size) = size else { return (*id, Some("missing".to_string())) };
                match verify_pack_header(repo, id, size, indexed).await {
                    Ok(()) => (*id, None),
                    Err(e) => (*id, Some(e.to_string())),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (id, err) in results {
        if let Some(err) = err {
            problems.insert(problem("pack", &pack_key(&id), &err));
            bad_packs.insert(id);
        }
    }
    report.unindexed_packs = listed
        .keys()
        .filter(|id| !headers.contains_key(id))
        .map(pack_key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // 4 (before walking trees, so affected paths include data damage): read data.
    if opts.read_data_fraction > 0.0 {
        let mut ids: Vec<&PackId> = headers.keys().filter(|id| !bad_packs.contains(id)).collect();
        ids.sort();
        let take = ((ids.len() as f64) * opts.read_data_fraction.min(1.0)).ceil() as usize;
        // A different subset each run: start at a random point of the sorted list.
        let start = if ids.is_empty() { 0 } else { rand::random::<u64>() as usize % ids.len() };
        let chosen: Vec<PackId> =
            (0..take.min(ids.len())).map(|i| *ids[(start + i) % ids.len()]).collect();
        report.packs_read = chosen.len();
        let master_ref = &master;
        let results: Vec<(PackId, Vec<BlobFailure>)> = futures::stream::iter(chosen)
            .map(|id| async move { (id, read_pack_blobs(repo, master_ref, &id).await) })
            .buffer_unordered(4)
            .collect()
            .await;
        for (id, failures) in results {
            for (blob, err) in failures {
                match blob {
                    Some(blob) => {
                        problems.insert(problem(
                            "blob",
                            &format!("{} in {}", blob, pack_key(&id)),
                            &err,
                        ));
                        bad_blobs.insert(blob);
                    }
                    None => {
                        problems.insert(problem("pack", &pack_key(&id), &err));
                        bad_packs.insert(id);
                    }
                }
            }
        }
    }
    for id in &bad_packs {
        if let Some(h) = headers.get(id) {
            bad_blobs.extend(h.entries.iter().map(|e| e.id));
        }
    }

    // 3. Snapshots and their trees (tree reads go through the repository's index, loaded
    // leniently above).
    let (snaps, bad_snapshots) = repo.snapshots_lenient().await?;
    for (key, e) in bad_snapshots {
        problems.insert(problem("snapshot", &key, &e.to_string()));
    }
    report.snapshots = snaps.len();
    let mut affected: BTreeMap<SnapshotId, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    for entry in &snaps {
        let mut stack = vec![(String::new(), entry.snapshot.root.clone())];
        while let Some((path, node)) = stack.pop() {
            let mut damaged = || {
                affected
                    .entry(entry.id)
                    .or_insert_with(|| (entry.snapshot.source.clone(), BTreeSet::new()))
                    .1
                    .insert(if path.is_empty() { "/".to_string() } else { path.clone() });
            };
            match node.kind {
                NodeKind::Dir => {
                    for tree_id in &node.subtree {
                        if !master.contains(tree_id) {
                            problems.insert(problem(
                                "missing-blob",
                                &tree_id.to_hex(),
                                "tree blob is in no index",
                            ));
                            damaged();
                            continue;
                        }
                        if bad_blobs.contains(tree_id) {
                            damaged();
                            continue;
                        }
                        let first_visit = seen_trees.insert(*tree_id);
                        match repo.read_blob(tree_id).await.and_then(|b| TreeBlob::decode(&b)) {
                            Ok(t) => {
                                for child in t.nodes {
                                    let child_path = format!("{path}/{}", child.name.display());
                                    stack.push((child_path, child));
                                }
                            }
                            Err(e) => {
                                if first_visit {
                                    problems.insert(problem(
                                        "tree",
                                        &tree_id.to_hex(),
                                        &e.to_string(),
                                    ));
                                }
                                bad_blobs.insert(*tree_id);
                                damaged();
                            }
                        }
                    }
                }
                NodeKind::File => {
                    for ext in &node.content {
                        if let Some(id) = &ext.id {
                            if !master.contains(id) {
                                problems.insert(problem(
                                    "missing-blob",
                                    &id.to_hex(),
                                    "data blob is in no index",
                                ));
                                damaged();
                            } else if bad_blobs.contains(id) {
                                damaged();
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    report.affected = affected
        .into_iter()
        .map(|(id, (source, paths))| Affected {
            snapshot: id.to_hex(),
            source,
            paths: paths.into_iter().collect(),
        })
        .collect();
    report.problems = problems.into_iter().collect();
    Ok(report)
}

/// A blob that failed to open (or, with no id, the whole pack), and why.
type BlobFailure = (Option<BlobId>, String);

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
    indexed: &PackHeader,
) -> Result<()> {
    let header = read_pack_header(repo, id, size).await?;
    if &header != indexed {
        return Err(Error::Integrity("pack header disagrees with the index".into()));
    }
    Ok(())
}

/// Fetch a whole pack and open each of its blobs. Returns the failures.
async fn read_pack_blobs(repo: &Repository, master: &MasterIndex, id: &PackId) -> Vec<BlobFailure> {
    // Pack keys are found through the repository's own index (its slots, not `master`'s).
    let repo_index = match repo.index().await {
        Ok(i) => i,
        Err(e) => return vec![(None, e.to_string())],
    };
    let bytes = match repo.store().get(&pack_key(id)).await {
        Ok(b) => b,
        Err(e) => return vec![(None, e.to_string())],
    };
    let header = match read_header(id, &bytes, repo.meta_key()) {
        Ok(h) => h,
        Err(e) => return vec![(None, e.to_string())],
    };
    let mut failures = Vec::new();
    for e in &header.entries {
        let Some(loc) = master.get(&e.id) else { continue };
        let mut loc = loc;
        // The blob may be indexed in another pack too; check this copy.
        if let Some(slot) = repo_index.pack_slot(id) {
            loc.pack = slot;
        }
        loc.offset = e.offset;
        loc.length = e.length;
        let (start, end) = (e.offset as usize, e.offset as usize + e.length as usize);
        let Some(sealed) = bytes.get(start..end) else {
            failures.push((Some(e.id), "lies outside the pack".into()));
            continue;
        };
        if let Err(err) = repo.open_blob(&e.id, &loc, sealed) {
            failures.push((Some(e.id), err.to_string()));
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
        let loc = index.get(blob).unwrap();
        let key = pack_key(&index.pack(loc.pack).id);
        let mut bytes = repo.store().get(&key).await.unwrap().to_vec();
        bytes[loc.offset as usize + 20] ^= 0x55;
        repo.store().put_overwrite(&key, bytes.into()).await.unwrap();
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
