//! Reading the objects of a manifest snapshot back: walk the tree (listing blobs only), keep
//! the files a path filter accepts, then read and parse those with bounded concurrency.

use futures::StreamExt;
use serde_json::Value;

use super::from_yaml;
use super::layout::{CLUSTER_DIR, NAMESPACES_DIR, ObjectPath};
use cairn_core::repo::{Node, NodeKind, Repository, Snapshot};
use cairn_core::{Error, Result};

/// Is this a manifest snapshot? (Made by `cairn-manifest-export`, whatever its source name.)
pub fn is_manifest_snapshot(s: &Snapshot) -> bool {
    cairn_core::records::is_manifests(s)
}

/// Every object file of the snapshot that `keep` accepts, with its node, in path order.
pub async fn object_files(
    repo: &Repository,
    snapshot: &Snapshot,
    keep: &(dyn Fn(&ObjectPath) -> bool + Sync),
) -> Result<Vec<(ObjectPath, Node)>> {
    let mut out = Vec::new();
    let top = repo.read_dir(&snapshot.root.subtree).await?;
    // A stack of (path so far, directory node) keeps the walk iterative.
    let mut stack: Vec<(String, Node)> = top
        .into_iter()
        .filter(|n| n.kind == NodeKind::Dir)
        .filter(|n| {
            n.name.as_bytes() == CLUSTER_DIR.as_bytes()
                || n.name.as_bytes() == NAMESPACES_DIR.as_bytes()
        })
        .map(|n| (n.name.display(), n))
        .collect();
    while let Some((path, dir)) = stack.pop() {
        for child in repo.read_dir(&dir.subtree).await? {
            let p = format!("{path}/{}", child.name.display());
            match child.kind {
                NodeKind::Dir => stack.push((p, child)),
                NodeKind::File => {
                    if let Some(op) = ObjectPath::parse(&p)
                        && keep(&op)
                    {
                        out.push((op, child));
                    }
                }
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Read and parse object files, `concurrency` at a time, keeping the order.
pub async fn read_objects(
    repo: &Repository,
    files: Vec<(ObjectPath, Node)>,
    concurrency: usize,
) -> Result<Vec<(ObjectPath, Value)>> {
    futures::stream::iter(files)
        .map(|(path, node)| async move {
            let bytes = repo.read_file(&node).await?;
            let value = from_yaml(&bytes, &path.path())?;
            if !value.is_object() {
                return Err(Error::Integrity(format!("{}: not an object", path.path())));
            }
            Ok((path, value))
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect()
}

/// Objects of a manifest snapshot that `keep` accepts, by path.
pub async fn load_objects(
    repo: &Repository,
    snapshot: &Snapshot,
    keep: &(dyn Fn(&ObjectPath) -> bool + Sync),
) -> Result<std::collections::BTreeMap<ObjectPath, Value>> {
    let files = object_files(repo, snapshot, keep).await?;
    Ok(read_objects(repo, files, 16).await?.into_iter().collect())
}

/// Objects of two manifest snapshots, leaving out pairs whose stored bytes are the same
/// (unchanged objects dedup to the same blobs: no need to read them).
pub async fn load_changed_pair(
    repo: &Repository,
    a: &Snapshot,
    b: &Snapshot,
    keep: &(dyn Fn(&ObjectPath) -> bool + Sync),
) -> Result<(
    std::collections::BTreeMap<ObjectPath, Value>,
    std::collections::BTreeMap<ObjectPath, Value>,
)> {
    let fa = object_files(repo, a, keep).await?;
    let fb = object_files(repo, b, keep).await?;
    let mb: std::collections::HashMap<ObjectPath, Node> = fb.into_iter().collect();
    let mut same = std::collections::HashSet::new();
    for (p, n) in &fa {
        if mb.get(p).is_some_and(|m| m.same_content(n)) {
            same.insert(p.clone());
        }
    }
    let fa: Vec<_> = fa.into_iter().filter(|(p, _)| !same.contains(p)).collect();
    let fb: Vec<_> = mb.into_iter().filter(|(p, _)| !same.contains(p)).collect();
    let ra = read_objects(repo, fa, 16).await?.into_iter().collect();
    let rb = read_objects(repo, fb, 16).await?.into_iter().collect();
    Ok((ra, rb))
}
