//! Back up a bucket prefix: every object below an object-store URL becomes a file at its
//! key, with the object's last-modified time as mtime and its ETag kept as the xattr
//! `user.cairn.etag`. With a parent snapshot, an object whose key, size and ETag are
//! unchanged reuses the parent's chunk list without being fetched: a nightly backup of an
//! unchanged prefix lists the bucket and reads nothing.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::backup::{
    BackupOptions, BackupOutcome, backup_nodes, split_virtual_path, store_sniffed,
};
use crate::repo::tree::Xattr;
use crate::repo::{Name, Node, NodeKind, Repository, Store};
use crate::{Error, Result};

/// The xattr a bucket backup keeps each object's ETag in.
pub const ETAG_XATTR: &[u8] = b"user.cairn.etag";
/// Bytes fetched per ranged GET while chunking a large object.
const RANGE: u64 = 8 << 20;

/// Back up every object below `url` (but keys matching `opts.exclude`) and save a snapshot.
pub async fn backup_objects(
    repo: Arc<Repository>,
    url: &str,
    opts: BackupOptions,
) -> Result<BackupOutcome> {
    let store = Store::open(url)?;
    let objects = store.object_store().clone();
    let parent = opts.resolve_parent(&repo).await?;
    let parent_id = parent.as_ref().map(|p| p.id);
    let parent_files = match parent {
        Some(p) => flatten(&repo, &p.snapshot.root).await?,
        None => HashMap::new(),
    };
    let exclude = super::exclude_set(&opts.exclude)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<object_store::ObjectMeta>(256);
    let lister = objects.clone();
    let url_owned = url.to_string();
    // Owns the sender: the backup sees the end of input however listing ends.
    let produce = async move {
        let mut list = lister.list(None);
        while let Some(meta) = list.next().await {
            let meta = meta.map_err(|e| crate::repo::storage::map_err(e, &url_owned))?;
            if exclude.is_match(meta.location.as_ref()) {
                continue;
            }
            if tx.send(meta).await.is_err() {
                break;
            }
        }
        Ok::<(), Error>(())
    };
    let handle = tokio::runtime::Handle::current();
    let guard = opts.guard.clone();
    let node_of = move |ctx: &super::backup::Ctx<'_>, meta: object_store::ObjectMeta| {
        let key = meta.location.as_ref().to_string();
        let (dir, name) = split_virtual_path(&key)?;
        let etag = meta.e_tag.clone().unwrap_or_default();
        if let Some(old) = parent_files.get(&key)
            && old.size == meta.size
            && !etag.is_empty()
            && etag_of(old).as_deref() == Some(etag.as_bytes())
        {
            ctx.count_reused(old.size);
            return Ok((dir, old.clone()));
        }
        let mut node = Node::new(Name(name.as_bytes().to_vec()), NodeKind::File);
        node.mode = 0o644;
        node.mtime_ns = meta.last_modified.timestamp_nanos_opt().unwrap_or(0) as i128;
        if !etag.is_empty() {
            node.xattrs = vec![Xattr::new(ETAG_XATTR.to_vec(), etag.as_bytes())];
        }
        let reader = ObjectReader {
            store: objects.clone(),
            handle: handle.clone(),
            key: meta.location.clone(),
            size: meta.size,
            pos: 0,
            buf: bytes::Bytes::new(),
        };
        let content = store_sniffed(ctx, std::path::Path::new(&key), Some(meta.size), reader)?;
        node.size = content.len;
        if node.size != meta.size {
            return Err(Error::Retryable(format!(
                "{key}: read {} bytes of {} (changed while read?)",
                node.size, meta.size
            )));
        }
        content.set_on(&mut node);
        ctx.count_read(node.size);
        Ok((dir, node))
    };
    let (listed, prepared) =
        tokio::join!(produce, backup_nodes(repo.clone(), rx, node_of, opts, parent_id));
    listed?;
    prepared?.commit(&repo, guard.as_ref()).await
}

fn etag_of(node: &Node) -> Option<Vec<u8>> {
    node.xattrs.iter().find(|x| x.name.as_bytes() == ETAG_XATTR).and_then(|x| x.value_bytes().ok())
}

/// Every file below `root`, by path.
async fn flatten(repo: &Repository, root: &Node) -> Result<HashMap<String, Node>> {
    let mut out = HashMap::new();
    let mut stack = vec![(String::new(), root.subtree.clone())];
    while let Some((prefix, subtree)) = stack.pop() {
        for node in repo.read_dir(&subtree).await? {
            let name = String::from_utf8_lossy(node.name.as_bytes()).into_owned();
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            match node.kind {
                NodeKind::Dir => stack.push((path, node.subtree.clone())),
                NodeKind::File => {
                    out.insert(path, node);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// An object as a `Read`: ranged GETs of [`RANGE`] bytes, one at a time.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    handle: tokio::runtime::Handle,
    key: ObjectPath,
    size: u64,
    pos: u64,
    buf: bytes::Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + RANGE).min(self.size);
            let range = self.pos..end;
            self.buf = self
                .handle
                .block_on(self.store.get_range(&self.key, range))
                // Keep the store's judgement (retryable, missing, denied) for the backup.
                .map_err(|e| {
                    std::io::Error::other(crate::repo::storage::map_err(e, self.key.as_ref()))
                })?;
            if self.buf.is_empty() {
                return Ok(0);
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}
