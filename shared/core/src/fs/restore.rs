//! Restore a snapshot (or a subtree, or one file) into a directory, in parallel, keeping
//! mode, owner (when running as root), times, xattrs, symlinks, hard links and holes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use rayon::prelude::*;

use super::backup::os_name;
use crate::progress::Progress;
use crate::repo::{Extent, Node, NodeKind, Repository};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore uid/gid (default: when running as root).
    pub owner: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { owner: nix::unistd::geteuid().is_root(), threads: 0 }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// (path, error) for everything that could not be restored.
    pub failures: Vec<(String, String)>,
    /// True when a failure was an integrity error (damaged repository data).
    pub integrity_failure: bool,
}

struct Ctx<'a> {
    repo: &'a Repository,
    handle: tokio::runtime::Handle,
    opts: RestoreOptions,
    progress: Arc<Progress>,
    dirs: std::sync::atomic::AtomicU64,
    failures: Mutex<Vec<(String, String)>>,
    integrity: std::sync::atomic::AtomicBool,
    /// First restored path of each hard-link group.
    links: Mutex<HashMap<u64, PathBuf>>,
    target: PathBuf,
}

/// Restore `node` under `target`: a directory's contents land directly in `target`; any
/// other node lands as `target/<name>`.
pub async fn restore(
    repo: Arc<Repository>,
    node: Node,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreReport> {
    repo.load_index().await?;
    let handle = tokio::runtime::Handle::current();
    let target = target.to_path_buf();
    let progress = Progress::new("restore");
    let reporter = progress.spawn_reporter(std::time::Duration::from_secs(5));
    let p2 = progress.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<RestoreReport> {
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
        } else {
            opts.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cairn-restore-{i}"))
            .build()
            .map_err(|e| Error::Retryable(format!("thread pool: {e}")))?;
        let ctx = Ctx {
            repo: &repo,
            handle,
            opts,
            progress: p2,
            dirs: 0.into(),
            failures: Mutex::new(Vec::new()),
            integrity: false.into(),
            links: Mutex::new(HashMap::new()),
            target: target.clone(),
        };
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::local_io(&e, format!("{}: {e}", target.display())))?;
        pool.install(|| {
            if node.kind == NodeKind::Dir {
                restore_dir_contents(&ctx, &node, &target)?;
                apply_metadata(&ctx, &node, &target);
                Ok(())
            } else {
                restore_node(&ctx, &node, &target.join(os_name(&node.name)))
            }
        })?;
        Ok(RestoreReport {
            files: ctx.progress.files.load(Ordering::Relaxed),
            dirs: ctx.dirs.load(Ordering::Relaxed),
            bytes: ctx.progress.bytes.load(Ordering::Relaxed),
            duration_ms: ctx.progress.elapsed().as_millis() as u64,
            failures: ctx.failures.into_inner(),
            integrity_failure: ctx.integrity.load(Ordering::Relaxed),
        })
    })
    .await
    .map_err(|e| Error::Retryable(format!("restore worker: {e}")))?;
    progress.finish();
    let _ = reporter.join();
    report
}

fn restore_dir_contents(ctx: &Ctx<'_>, dir: &Node, path: &Path) -> Result<()> {
    ctx.dirs.fetch_add(1, Ordering::Relaxed);
    let children = ctx.handle.block_on(ctx.repo.read_dir(&dir.subtree))?;
    children
        .par_iter()
        .try_for_each(|child| restore_node(ctx, child, &path.join(os_name(&child.name))))
}

fn restore_node(ctx: &Ctx<'_>, node: &Node, path: &Path) -> Result<()> {
    match restore_node_inner(ctx, node, path) {
        Ok(()) => Ok(()),
        // The store being unreachable ends the restore; damage to one file does not.
        Err(e @ (Error::Retryable(_) | Error::Denied(_) | Error::StorageFull(_))) => Err(e),
        Err(e) => {
            if matches!(e, Error::Integrity(_)) {
                ctx.integrity.store(true, Ordering::Relaxed);
            }
            let rel = path.strip_prefix(&ctx.target).unwrap_or(path).display().to_string();
            tracing::error!(path = %rel, error = %e, "not restored");
            ctx.failures.lock().push((rel, e.to_string()));
            Ok(())
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::local_io(&e, format!("{}: {e}", path.display()))
}

/// A name from a tree must be one plain path component: anyone holding the write key can
/// write trees, so a restore (often as root) must never be steered outside its target.
fn check_name(node: &Node) -> Result<()> {
    let n = node.name.as_bytes();
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(Error::Integrity(format!(
            "unsafe name {:?} in a tree: refusing to restore it",
            node.name.display()
        )));
    }
    Ok(())
}

/// Open for writing without following a symlink planted at `path`.
fn create_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn restore_node_inner(ctx: &Ctx<'_>, node: &Node, path: &Path) -> Result<()> {
    check_name(node)?;
    match node.kind {
        NodeKind::Dir => {
            match std::fs::create_dir(path) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && path.symlink_metadata().is_ok_and(|m| m.file_type().is_dir()) => {}
                Err(e) => return Err(io(path)(e)),
            }
            restore_dir_contents(ctx, node, path)?;
        }
        NodeKind::File => {
            if let Some(group) = node.link_group {
                let mut links = ctx.links.lock();
                if let Some(first) = links.get(&group) {
                    let _ = std::fs::remove_file(path);
                    std::fs::hard_link(first, path).map_err(io(path))?;
                    ctx.progress.add_file(0);
                    return Ok(());
                }
                let _ = std::fs::remove_file(path);
                create_nofollow(path).map_err(io(path))?;
                links.insert(group, path.to_path_buf());
            }
            let mut file = create_nofollow(path).map_err(io(path))?;
            write_file_to(ctx.repo, &ctx.handle, node, &mut file, true, |n| {
                ctx.progress.add_bytes(n)
            })?;
            file.set_len(node.size).map_err(io(path))?;
            ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        }
        NodeKind::Symlink => {
            let target = node
                .target
                .as_ref()
                .ok_or_else(|| Error::Integrity("symlink without target".into()))?;
            let _ = std::fs::remove_file(path);
            std::os::unix::fs::symlink(os_name(target), path).map_err(io(path))?;
        }
        NodeKind::Fifo => {
            let _ = std::fs::remove_file(path);
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(node.mode))
                .map_err(|e| Error::Invalid(format!("{}: mkfifo: {e}", path.display())))?;
        }
        NodeKind::Chardev | NodeKind::Blockdev => {
            let kind = if node.kind == NodeKind::Chardev {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            let _ = std::fs::remove_file(path);
            nix::sys::stat::mknod(
                path,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(node.mode),
                node.rdev.unwrap_or(0),
            )
            .map_err(|e| {
                Error::Invalid(format!("{}: mknod: {e} (devices need root)", path.display()))
            })?;
        }
        NodeKind::Socket => return Ok(()), // a socket is recreated by its server, not restored
    }
    apply_metadata(ctx, node, path);
    Ok(())
}

/// Owner, xattrs, mode, times. Best effort: a filesystem that refuses xattrs or a non-root
/// restore that cannot chown still gets the file.
fn apply_metadata(ctx: &Ctx<'_>, node: &Node, path: &Path) {
    let is_link = node.kind == NodeKind::Symlink;
    if ctx.opts.owner {
        let _ = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid));
    }
    if !is_link {
        for x in &node.xattrs {
            if let Ok(v) = x.value_bytes() {
                let _ = xattr::set(path, os_name(&x.name), &v);
            }
        }
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode));
    }
    let secs = node.mtime_ns.div_euclid(1_000_000_000) as i64;
    let nanos = node.mtime_ns.rem_euclid(1_000_000_000) as u32;
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    // utimensat(AT_SYMLINK_NOFOLLOW) for every kind: it never opens the path (opening a
    // FIFO would block until a reader appears) and never follows a link.
    let _ = filetime::set_symlink_file_times(path, t, t);
}

/// Write a file node's content to `out`. With `sparse`, holes are skipped with a seek
/// (the caller sets the final length); without, zeros are written (for stdout and tar).
///
/// Extents are taken in batches of up to [`BATCH_BYTES`] of data (or [`BATCH_EXTENTS`]
/// extents). A batch's blobs are read, decrypted and verified on the other cores while this
/// thread writes the batch before it: a database in 4 KiB pages restores as fast as one in
/// 2 MiB chunks, and a large file in either keeps every core busy.
pub fn write_file_to<W: Write + Seek>(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    node: &Node,
    out: &mut W,
    sparse: bool,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let zeros = vec![0u8; 1 << 16];
    let mut extents = crate::repo::Extents::new(repo, node);
    let mut ready: Option<(Vec<Extent>, Blobs)> = None;
    loop {
        let mut next: Vec<Extent> = Vec::new();
        let mut bytes = 0u64;
        while bytes < BATCH_BYTES && next.len() < BATCH_EXTENTS {
            let Some(e) = extents.next_blocking(handle)? else { break };
            if e.id.is_some() {
                bytes += e.len;
            }
            next.push(e);
        }
        if next.is_empty() && ready.is_none() {
            return Ok(());
        }
        let mut decoded: Option<Result<Blobs>> = None;
        let written = rayon::in_place_scope(|scope| {
            let (next, decoded) = (&next, &mut decoded);
            scope.spawn(move |_| *decoded = Some(read_extents(repo, handle, next)));
            match ready.take() {
                Some((batch, blobs)) => {
                    write_extents(out, &batch, blobs, sparse, &zeros, &mut progress)
                }
                None => Ok(()),
            }
        });
        written?;
        // The scope waits for its task, so the result is always there.
        let blobs = decoded.unwrap_or_else(|| {
            Err(Error::Retryable("restore: a read task ended without a result".into()))
        })?;
        if !next.is_empty() {
            ready = Some((next, blobs));
        }
    }
}

/// The plaintexts of a batch's extents, `None` for holes.
type Blobs = Vec<Option<Vec<u8>>>;

/// The blobs of a batch's data extents (`None` for holes), read on every core: each core
/// takes a contiguous part and reads it in one pass on the runtime.
fn read_extents(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    batch: &[Extent],
) -> Result<Blobs> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let part = batch.len().div_ceil(rayon::current_num_threads().max(1));
    let parts: Vec<Blobs> = batch
        .par_chunks(part)
        .map(|extents| {
            handle.block_on(async {
                let mut out = Vec::with_capacity(extents.len());
                for e in extents {
                    out.push(match &e.id {
                        Some(id) => Some(repo.read_blob(id).await?),
                        None => None,
                    });
                }
                Ok(out)
            })
        })
        .collect::<Result<_>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Write a batch read by [`read_extents`], in file order.
fn write_extents<W: Write + Seek>(
    out: &mut W,
    batch: &[Extent],
    blobs: Blobs,
    sparse: bool,
    zeros: &[u8],
    progress: &mut impl FnMut(u64),
) -> Result<()> {
    for (extent, blob) in batch.iter().zip(blobs) {
        match blob {
            Some(data) => {
                if data.len() as u64 != extent.len {
                    return Err(Error::Integrity(format!(
                        "blob {} has {} bytes, tree says {}",
                        extent.id.map(|id| id.short()).unwrap_or_default(),
                        data.len(),
                        extent.len
                    )));
                }
                out.write_all(&data).map_err(|e| Error::local_io(&e, format!("write: {e}")))?;
            }
            None if sparse => {
                out.seek(SeekFrom::Current(extent.len as i64))
                    .map_err(|e| Error::local_io(&e, format!("seek: {e}")))?;
            }
            None => {
                let mut left = extent.len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..n])
                        .map_err(|e| Error::local_io(&e, format!("write: {e}")))?;
                    left -= n as u64;
                }
            }
        }
        progress(extent.len);
    }
    Ok(())
}

/// Data read ahead per file in [`write_file_to`] (plus at most one chunk of 8 MiB), for
/// the batch being read and the one being written.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_EXTENTS: usize = 1024;
