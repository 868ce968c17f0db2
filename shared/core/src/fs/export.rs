//! Sinks besides a local directory: a tar stream (for `kubectl exec`, CI pipelines) and an
//! object-store prefix (files as plain objects, paths as keys, metadata as object metadata
//! where the store keeps it). Both walk the snapshot's tree depth first in name order and
//! stream each file's chunks: memory holds one chunk (or one multipart part), never a file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload, WriteMultipart};

use super::backup::os_name;
use crate::repo::{Extents, Node, NodeKind, Repository};
use crate::{Error, Result};

/// Which paths of the tree to export (globs on the path relative to the exported node).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl Selection {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection> {
        let build = |pats: &[String]| crate::filter::optional_glob_set("glob", pats);
        Ok(Selection { include: build(include)?, exclude: build(exclude)? })
    }

    /// Files must match an include (when any is given) and no exclude; directories are
    /// entered unless excluded themselves.
    fn wants(&self, path: &Path, is_dir: bool) -> bool {
        if self.exclude.as_ref().is_some_and(|g| g.is_match(path)) {
            return false;
        }
        is_dir || self.include.as_ref().is_none_or(|g| g.is_match(path))
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Entries the sink cannot hold (sockets; symlinks and devices in an object store).
    pub skipped: Vec<String>,
    pub duration_ms: u64,
}

/// A file's content as a `Read`: chunks fetched one at a time, holes as zeros.
pub struct NodeReader<'a> {
    repo: &'a Repository,
    handle: tokio::runtime::Handle,
    extents: Extents<'a>,
    chunk: Vec<u8>,
    pos: usize,
    zeros_left: u64,
}

impl<'a> NodeReader<'a> {
    pub fn new(repo: &'a Repository, handle: tokio::runtime::Handle, node: &'a Node) -> Self {
        NodeReader {
            repo,
            handle,
            extents: Extents::new(repo, node),
            chunk: Vec::new(),
            pos: 0,
            zeros_left: 0,
        }
    }
}

impl Read for NodeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.zeros_left > 0 {
                let n = (self.zeros_left.min(buf.len() as u64)) as usize;
                buf[..n].fill(0);
                self.zeros_left -= n as u64;
                return Ok(n);
            }
            if self.pos < self.chunk.len() {
                let n = (self.chunk.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let Some(extent) =
                self.extents.next_blocking(&self.handle).map_err(std::io::Error::other)?
            else {
                return Ok(0);
            };
            match &extent.id {
                None => self.zeros_left = extent.len,
                Some(id) => {
                    let data = self
                        .handle
                        .block_on(self.repo.read_blob(id))
                        .map_err(std::io::Error::other)?;
                    if data.len() as u64 != extent.len {
                        return Err(std::io::Error::other(Error::Integrity(format!(
                            "blob {} has {} bytes, tree says {}",
                            id.short(),
                            data.len(),
                            extent.len
                        ))));
                    }
                    self.chunk = data;
                    self.pos = 0;
                }
            }
        }
    }
}

/// Depth-first, name-ordered walk below `node`; `f` sees each entry with its path relative
/// to `node` (a file node is its own single entry, named by itself). Names are bytes: a
/// non-UTF-8 name stays what it is.
fn walk(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    node: &Node,
    selection: &Selection,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    fn inner(
        repo: &Repository,
        handle: &tokio::runtime::Handle,
        dir: &Node,
        prefix: &Path,
        selection: &Selection,
        f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
    ) -> Result<()> {
        let mut children = handle.block_on(repo.read_dir(&dir.subtree))?;
        children.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for child in &children {
            let path = prefix.join(os_name(&child.name));
            let is_dir = child.kind == NodeKind::Dir;
            if !selection.wants(&path, is_dir) {
                continue;
            }
            f(&path, child)?;
            if is_dir {
                inner(repo, handle, child, &path, selection, f)?;
            }
        }
        Ok(())
    }
    if node.kind == NodeKind::Dir {
        inner(repo, handle, node, Path::new(""), selection, f)
    } else {
        let name = PathBuf::from(os_name(&node.name));
        if selection.wants(&name, false) { f(&name, node) } else { Ok(()) }
    }
}

/// Write `node` (a directory's contents, or one file) as a tar stream (POSIX/GNU: long
/// names, modes, owners, times, symlinks, hard links, FIFOs and devices).
pub async fn export_tar<W: Write + Send + 'static>(
    repo: Arc<Repository>,
    node: Node,
    selection: Selection,
    out: W,
) -> Result<ExportReport> {
    repo.load_index().await?;
    let handle = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || -> Result<ExportReport> {
        let mut report = ExportReport::default();
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Complete);
        let mut links: std::collections::HashMap<u64, PathBuf> = std::collections::HashMap::new();
        fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
            move |e| Error::Retryable(format!("tar {}: {e}", path.display()))
        }
        walk(&repo, &handle, &node, &selection, &mut |path, n| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(n.mode);
            h.set_uid(n.uid as u64);
            h.set_gid(n.gid as u64);
            h.set_mtime((n.mtime_ns.max(0) / 1_000_000_000) as u64);
            h.set_size(0);
            match n.kind {
                NodeKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut h, path, std::io::empty()).map_err(io(path))?;
                    report.dirs += 1;
                }
                NodeKind::File => {
                    if let Some(first) = n.link_group.and_then(|g| links.get(&g)) {
                        h.set_entry_type(tar::EntryType::Link);
                        tar.append_link(&mut h, path, first).map_err(io(path))?;
                        return Ok(());
                    }
                    if let Some(g) = n.link_group {
                        links.insert(g, path.to_path_buf());
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(n.size);
                    let reader = NodeReader::new(&repo, handle.clone(), n);
                    tar.append_data(&mut h, path, reader).map_err(|e| read_error(path, e))?;
                    report.files += 1;
                    report.bytes += n.size;
                }
                NodeKind::Symlink => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    let target = n.target.as_ref().map(os_name).unwrap_or_default();
                    tar.append_link(&mut h, path, target).map_err(io(path))?;
                }
                NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                    h.set_entry_type(match n.kind {
                        NodeKind::Fifo => tar::EntryType::Fifo,
                        NodeKind::Chardev => tar::EntryType::Char,
                        _ => tar::EntryType::Block,
                    });
                    if let Some(rdev) = n.rdev {
                        let dev = rdev as nix::libc::dev_t;
                        h.set_device_major(nix::sys::stat::major(dev) as u32).map_err(io(path))?;
                        h.set_device_minor(nix::sys::stat::minor(dev) as u32).map_err(io(path))?;
                    }
                    tar.append_data(&mut h, path, std::io::empty()).map_err(io(path))?;
                }
                NodeKind::Socket => report.skipped.push(format!("{}: a socket", path.display())),
            }
            Ok(())
        })?;
        tar.into_inner().and_then(|mut w| w.flush()).map_err(io(Path::new("end of archive")))?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    })
    .await
    .map_err(|e| Error::Retryable(format!("tar writer: {e}")))?
}

/// Parts of a multipart upload; smaller files go up in one request.
const PART: usize = 8 << 20;

/// Write the files below `node` as objects under `store` (already at the target prefix):
/// key = relative path. With `metadata`, mode, owner and mtime go along as object metadata
/// (`cairn-mode`, `cairn-uid`, `cairn-gid`, `cairn-mtime-ns`); a local-disk store has no
/// such thing. Directories are implied by keys; symlinks, devices and FIFOs are reported as
/// skipped.
pub async fn export_objects(
    repo: Arc<Repository>,
    node: Node,
    selection: Selection,
    store: Arc<dyn ObjectStore>,
    metadata: bool,
) -> Result<ExportReport> {
    repo.load_index().await?;
    let handle = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || -> Result<ExportReport> {
        let mut report = ExportReport::default();
        walk(&repo, &handle, &node, &selection, &mut |path, n| {
            match n.kind {
                NodeKind::Dir => {
                    report.dirs += 1;
                    return Ok(());
                }
                NodeKind::File => {}
                _ => {
                    report.skipped.push(format!("{}: a {:?}, not a file", path.display(), n.kind));
                    return Ok(());
                }
            }
            let Some(path) = path.to_str() else {
                report.skipped.push(format!("{}: the name is not UTF-8", path.display()));
                return Ok(());
            };
            // The key is the path as it is (`Path::from` would percent-encode non-ASCII).
            let Ok(key) = object_store::path::Path::parse(path) else {
                report.skipped.push(format!("{path}: not a valid object key"));
                return Ok(());
            };
            let mut attributes = Attributes::new();
            if metadata {
                for (k, v) in [
                    ("cairn-mode", format!("{:o}", n.mode)),
                    ("cairn-uid", n.uid.to_string()),
                    ("cairn-gid", n.gid.to_string()),
                    ("cairn-mtime-ns", n.mtime_ns.to_string()),
                ] {
                    attributes.insert(Attribute::Metadata(k.into()), v.into());
                }
            }

            let err = |e: object_store::Error| crate::repo::storage::map_err(e, path);
            let mut reader = NodeReader::new(&repo, handle.clone(), n);
            if n.size as usize <= PART {
                let mut data = Vec::with_capacity(n.size as usize);
                reader.read_to_end(&mut data).map_err(|e| read_error(path, e))?;
                let opts = PutOptions { attributes, ..Default::default() };
                handle.block_on(store.put_opts(&key, PutPayload::from(data), opts)).map_err(err)?;
            } else {
                let upload = handle
                    .block_on(store.put_multipart_opts(&key, attributes.into()))
                    .map_err(err)?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
                let mut buf = vec![0u8; 1 << 20];
                let done = loop {
                    let got = match reader.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => n,
                        Err(e) => break Err(read_error(path, e)),
                    };
                    if let Err(e) = handle.block_on(w.wait_for_capacity(4)) {
                        break Err(err(e));
                    }
                    w.write(&buf[..got]);
                };
                match done {
                    Ok(()) => {
                        handle.block_on(w.finish()).map_err(err)?;
                    }
                    Err(e) => {
                        let _ = handle.block_on(w.abort());
                        return Err(e);
                    }
                }
            }
            report.files += 1;
            report.bytes += n.size;
            Ok(())
        })?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    })
    .await
    .map_err(|e| Error::Retryable(format!("object writer: {e}")))?
}

/// A read error of a file's content keeps its cairn class (integrity stays integrity).
fn read_error(path: impl AsRef<Path>, e: std::io::Error) -> Error {
    super::wrapped_error(e)
        .unwrap_or_else(|e| Error::Retryable(format!("{}: {e}", path.as_ref().display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_filters_files_and_prunes_excluded_directories() {
        let s =
            Selection::new(&["**/*.yaml".into()], &["secret/**".into(), "secret".into()]).unwrap();
        let p = Path::new;
        assert!(s.wants(p("a/b.yaml"), false));
        assert!(!s.wants(p("a/b.json"), false));
        assert!(s.wants(p("a"), true), "directories are entered to find included files");
        assert!(!s.wants(p("secret"), true));
        assert!(!s.wants(p("secret/x.yaml"), false));
        let all = Selection::default();
        assert!(all.wants(p("anything"), false));
    }
}
