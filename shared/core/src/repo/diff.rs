//! Path-level difference between two snapshots' trees. Unchanged subtrees share blob ids
//! and are skipped without being read.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Repository;
use super::tree::{Node, NodeKind};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    pub change: Change,
    pub path: String,
    pub kind: NodeKind,
}

pub async fn diff_trees(repo: &Repository, a: &Node, b: &Node) -> Result<Vec<DiffEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), a.clone(), b.clone())];
    while let Some((path, a, b)) = stack.pop() {
        if a.subtree == b.subtree {
            continue;
        }
        let left: BTreeMap<Vec<u8>, Node> =
            repo.read_dir(&a.subtree).await?.into_iter().map(|n| (n.name.0.clone(), n)).collect();
        let right: BTreeMap<Vec<u8>, Node> =
            repo.read_dir(&b.subtree).await?.into_iter().map(|n| (n.name.0.clone(), n)).collect();
        for (name, l) in &left {
            let p = format!("{path}/{}", l.name.display());
            match right.get(name) {
                None => out.push(DiffEntry { change: Change::Removed, path: p, kind: l.kind }),
                Some(r) if l.kind == NodeKind::Dir && r.kind == NodeKind::Dir => {
                    if node_meta_differs(l, r) {
                        out.push(DiffEntry {
                            change: Change::Changed,
                            path: p.clone(),
                            kind: r.kind,
                        });
                    }
                    stack.push((p, l.clone(), r.clone()));
                }
                Some(r) => {
                    if l.kind != r.kind
                        || !l.same_content(r)
                        || l.target != r.target
                        || node_meta_differs(l, r)
                    {
                        out.push(DiffEntry { change: Change::Changed, path: p, kind: r.kind });
                    }
                }
            }
        }
        for (name, r) in &right {
            if !left.contains_key(name) {
                out.push(DiffEntry {
                    change: Change::Added,
                    path: format!("{path}/{}", r.name.display()),
                    kind: r.kind,
                });
            }
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(out)
}

fn node_meta_differs(a: &Node, b: &Node) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.xattrs != b.xattrs
        || (a.kind != NodeKind::Dir && a.mtime_ns != b.mtime_ns)
}
