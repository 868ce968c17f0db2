//! Back up a directory tree (or one file) into the repository.
//!
//! The walk runs on a rayon pool: entries of a directory are processed in parallel, and a
//! large file's chunks are hashed, compressed and sealed in parallel batches, so both cores
//! work whether the tree holds a million small files or one etcd database. Nothing here runs
//! on the async runtime; I/O to the store goes through the [`Writer`]'s bounded uploads.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use rayon::prelude::*;

use super::pages::{Chooser, ChunkingPolicy, MIN_PAGE_FILE, SNIFF_LEN};
use crate::progress::Progress;
use crate::repo::chunker::{Chunking, PageStream};
use crate::repo::tree::{MAX_EXTENTS_PER_LIST, MAX_INLINE_EXTENTS, MAX_NODES_PER_BLOB, Xattr};
use crate::repo::{
    BlobId, BlobKind, Extent, ExtentList, Failure, Lineage, Name, Node, NodeKind, ParentSpec,
    Repository, Snapshot, SnapshotEntry, SnapshotId, Summary, TreeBlob, Writer,
};
use crate::{Error, Result};

/// Options for [`backup_dir`].
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Snapshot source name (`pvc/<ns>/<name>`, `etcd`, ...).
    pub source: String,
    pub tags: BTreeMap<String, String>,
    pub host: Option<String>,
    pub cluster: Option<String>,
    /// The snapshot to build on, resolved within this backup's (source, cluster) by
    /// [`BackupOptions::resolve_parent`]; `ParentSpec::None` (the default) reads everything.
    pub parent: ParentSpec,
    /// Also require unchanged inode and ctime to reuse a file (off by default: volumes
    /// cloned from CSI snapshots get new inodes every time).
    pub use_inode: bool,
    /// Glob patterns (relative paths) to leave out.
    pub exclude: Vec<String>,
    /// Source-specific facts recorded in the snapshot.
    pub meta: serde_json::Value,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// The lease of the lock the backup runs under: writing stops when it is in doubt.
    pub guard: Option<crate::repo::lock::LeaseGuard>,
    /// Which files are cut into pages (databases, volume images) instead of content-defined
    /// chunks.
    pub chunking: ChunkingPolicy,
}

impl BackupOptions {
    /// The line of snapshots this backup continues.
    pub fn lineage(&self) -> Lineage<'_> {
        Lineage { source: &self.source, cluster: self.cluster.as_deref() }
    }

    /// The parent snapshot, never one of another source or cluster unless named by id.
    pub async fn resolve_parent(&self, repo: &Repository) -> Result<Option<SnapshotEntry>> {
        repo.resolve_parent(&self.parent, self.lineage()).await
    }
}

#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
}

pub(crate) struct Ctx<'a> {
    writer: &'a Writer,
    repo: &'a Repository,
    handle: tokio::runtime::Handle,
    root: PathBuf,
    use_inode: bool,
    exclude: globset::GlobSet,
    chooser: Chooser,
    failures: Mutex<Vec<Failure>>,
    progress: Arc<Progress>,
    files_read: std::sync::atomic::AtomicU64,
    bytes_read: std::sync::atomic::AtomicU64,
    dirs: std::sync::atomic::AtomicU64,
    /// (dev, inode) of multiply-linked files already stored: their content.
    hardlinks: Mutex<HashMap<(u64, u64), FileContent>>,
}

/// A file's stored content as its node records it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileContent {
    pages: Option<u32>,
    content: Vec<Extent>,
    extent_lists: Vec<BlobId>,
    /// Bytes the extents cover.
    pub(crate) len: u64,
}

impl FileContent {
    fn of(node: &Node, len: u64) -> FileContent {
        FileContent {
            pages: node.pages,
            content: node.content.clone(),
            extent_lists: node.extent_lists.clone(),
            len,
        }
    }

    pub(crate) fn set_on(self, node: &mut Node) {
        node.pages = self.pages;
        node.content = self.content;
        node.extent_lists = self.extent_lists;
    }
}

/// A file's extents as chunks are stored (FORMAT.md §8.5, §9.10): holes merged; kept in the
/// node while there are at most [`MAX_INLINE_EXTENTS`], else stored as extent-list blobs of
/// [`MAX_EXTENTS_PER_LIST`], each as soon as it is full (one more extent is held back so a
/// hole can still merge into its last), so memory stays bounded for any file size.
pub(crate) struct ExtentSink {
    pages: Option<u32>,
    pending: Vec<Extent>,
    lists: Vec<BlobId>,
    len: u64,
}

impl ExtentSink {
    pub(crate) fn new(chunking: Chunking) -> Self {
        ExtentSink { pages: chunking.pages(), pending: Vec::new(), lists: Vec::new(), len: 0 }
    }

    pub(crate) fn push(&mut self, ctx: &Ctx<'_>, e: Extent) -> Result<()> {
        if e.len == 0 {
            return Ok(());
        }
        self.len += e.len;
        match (self.pending.last_mut(), e.id) {
            (Some(last), None) if last.id.is_none() => last.len += e.len,
            _ => self.pending.push(e),
        }
        if self.pending.len() > MAX_EXTENTS_PER_LIST {
            let rest = self.pending.split_off(MAX_EXTENTS_PER_LIST);
            let full = std::mem::replace(&mut self.pending, rest);
            self.store_list(ctx, &full)?;
        }
        Ok(())
    }

    fn store_list(&mut self, ctx: &Ctx<'_>, extents: &[Extent]) -> Result<()> {
        let id = ctx.writer.add_blob(BlobKind::Tree, &ExtentList::encode(extents))?.id;
        self.lists.push(id);
        Ok(())
    }

    pub(crate) fn finish(mut self, ctx: &Ctx<'_>) -> Result<FileContent> {
        if self.lists.is_empty() && self.pending.len() <= MAX_INLINE_EXTENTS {
            return Ok(FileContent {
                pages: self.pages,
                content: self.pending,
                extent_lists: Vec::new(),
                len: self.len,
            });
        }
        let last = std::mem::take(&mut self.pending);
        if !last.is_empty() {
            self.store_list(ctx, &last)?;
        }
        Ok(FileContent {
            pages: self.pages,
            content: Vec::new(),
            extent_lists: self.lists,
            len: self.len,
        })
    }
}

/// Back up `path` and save a snapshot. A directory becomes the snapshot's root; a single
/// file is stored as the only entry of the root.
pub async fn backup_dir(
    repo: Arc<Repository>,
    path: &Path,
    opts: BackupOptions,
) -> Result<BackupOutcome> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let parent = opts.resolve_parent(&repo).await?;
    let parent_id = parent.as_ref().map(|p| p.id);
    let parent = parent.map(|p| p.snapshot);
    let exclude = super::exclude_set(&opts.exclude)?;
    let total = parent.as_ref().map_or(0, |p| p.summary.bytes);
    let path = path.to_path_buf();
    let root = path.clone();
    let guard = opts.guard.clone();
    let prepared = run_backup(repo.clone(), opts, parent_id, root, exclude, total, move |ctx| {
        if meta.is_dir() {
            let parent_root = parent.as_ref().map(|p| p.root.clone());
            dir_node(ctx, &path, Name(Vec::new()), &meta, parent_root.as_ref())
        } else {
            // One file: the root is a directory holding just it.
            let name = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            let parent_child = match &parent {
                Some(p) => children_by_name(ctx, Some(&p.root))?.remove(&name),
                None => None,
            };
            let node = entry_node(ctx, &path, Name(name), &meta, parent_child.as_ref())?;
            single_file_root(ctx, node)
        }
    })
    .await?;
    prepared.commit(&repo, guard.as_ref()).await
}

/// Back up a byte stream (an etcd snapshot, a database dump) as the single file `name` of
/// a new snapshot, without a local copy: it is chunked as it arrives. A read error, including
/// one the producer raises at the end (a failed checksum), fails it. Returns the snapshot
/// ready to commit: the caller adds what it learnt from the stream to `meta`, then commits.
pub async fn backup_stream(
    repo: Arc<Repository>,
    reader: Box<dyn Read + Send>,
    name: &str,
    opts: BackupOptions,
) -> Result<Prepared> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::Invalid(format!("stream file name {name:?}")));
    }
    let parent = opts.resolve_parent(&repo).await?.map(|p| p.id);
    let name = name.as_bytes().to_vec();
    let empty = globset::GlobSet::empty();
    run_backup(repo, opts, parent, PathBuf::new(), empty, 0, move |ctx| {
        let counted = CountingReader { inner: reader, progress: &ctx.progress };
        let content = store_sniffed(ctx, Path::new(OsStr::from_bytes(&name)), None, counted)?;
        ctx.files_read.fetch_add(1, Ordering::Relaxed);
        ctx.bytes_read.fetch_add(content.len, Ordering::Relaxed);
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        let mut node = Node::new(Name(name), NodeKind::File);
        node.mode = 0o600;
        node.size = content.len;
        node.mtime_ns = now_ns();
        content.set_on(&mut node);
        single_file_root(ctx, node)
    })
    .await
}

/// One file of a synthetic tree for [`backup_files`]: a relative `/`-separated path, its
/// content and modification time.
#[derive(Debug, Clone)]
pub struct VirtualFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mtime_ns: i128,
}

/// Back up files that exist only in memory (exported manifests). Items arrive on `items`
/// (a bounded channel: the producer waits while the repository catches up); `render` turns
/// each into a file on the backup's thread pool (serialisation is CPU work, kept off the
/// async runtime), and it is chunked and stored at once: only its node stays until the end,
/// so memory grows by a node per file, never by content. Directories come from the paths
/// (mode 0755), files get mode 0600. A path that repeats replaces the earlier file. Returns
/// the snapshot ready to commit.
pub async fn backup_files<T, F>(
    repo: Arc<Repository>,
    items: tokio::sync::mpsc::Receiver<T>,
    render: F,
    opts: BackupOptions,
) -> Result<Prepared>
where
    T: Send + 'static,
    F: Fn(T) -> Result<VirtualFile> + Send + Sync + 'static,
{
    let parent = opts.resolve_parent(&repo).await?.map(|p| p.id);
    let node_of = move |ctx: &Ctx<'_>, item| virtual_file_node(ctx, render(item)?);
    backup_nodes(repo, items, node_of, opts, parent).await
}

/// [`backup_files`] with the caller making each file's node (its directory and the node):
/// for sources whose files stream (objects of a bucket) or are reused from a parent.
pub(crate) async fn backup_nodes<T, F>(
    repo: Arc<Repository>,
    mut items: tokio::sync::mpsc::Receiver<T>,
    node_of: F,
    opts: BackupOptions,
    parent: Option<SnapshotId>,
) -> Result<Prepared>
where
    T: Send + 'static,
    F: Fn(&Ctx<'_>, T) -> Result<(String, Node)> + Send + Sync + 'static,
{
    let empty = globset::GlobSet::empty();
    run_backup(repo, opts, parent, PathBuf::new(), empty, 0, move |ctx| {
        let mut root = VirtualDir::default();
        let batch_len = rayon::current_num_threads().max(2) * 16;
        let mut batch: Vec<T> = Vec::with_capacity(batch_len);
        loop {
            // Take what is queued; block only when nothing is.
            let mut done = false;
            while batch.len() < batch_len {
                match items.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) if !batch.is_empty() => {
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                        match items.blocking_recv() {
                            Some(item) => batch.push(item),
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        done = true;
                        break;
                    }
                }
            }
            let nodes: Vec<(String, Node)> =
                batch.par_drain(..).map(|item| node_of(ctx, item)).collect::<Result<_>>()?;
            for (dir, node) in nodes {
                root.insert(&dir, node);
            }
            if done {
                break;
            }
        }
        let mut node = root.store(ctx, Name(Vec::new()))?;
        node.mtime_ns = now_ns();
        Ok(node)
    })
    .await
}

/// Store one virtual file's content; returns its directory and node.
fn virtual_file_node(ctx: &Ctx<'_>, f: VirtualFile) -> Result<(String, Node)> {
    let (dir, name) = split_virtual_path(&f.path)?;
    let mut node = Node::new(Name(name.as_bytes().to_vec()), NodeKind::File);
    node.mode = 0o600;
    node.mtime_ns = f.mtime_ns;
    let size = f.content.len() as u64;
    let chunking = ctx.chooser.choose(Path::new(&f.path), Some(size), &f.content);
    let content = store_content(ctx, f.content.as_slice(), chunking)?;
    node.size = content.len;
    content.set_on(&mut node);
    ctx.count_read(node.size);
    Ok((dir, node))
}

impl Ctx<'_> {
    /// A file whose content was read (not reused from the parent).
    pub(crate) fn count_read(&self, bytes: u64) {
        self.progress.add_file(bytes);
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A file reused from the parent without reading.
    pub(crate) fn count_reused(&self, bytes: u64) {
        self.progress.add_file(bytes);
    }
}

/// Split a relative `a/b/c` path into its directory and its name, refusing empty names and
/// `.`/`..` components.
pub(crate) fn split_virtual_path(path: &str) -> Result<(String, &str)> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n),
        None => (String::new(), path),
    };
    if name.is_empty() || path.split('/').any(|c| c == "." || c == "..") {
        return Err(Error::Invalid(format!("file path {path:?}")));
    }
    Ok((dir, name))
}

/// The directory skeleton [`backup_files`] builds as files arrive.
#[derive(Default)]
struct VirtualDir {
    dirs: BTreeMap<Vec<u8>, VirtualDir>,
    files: BTreeMap<Vec<u8>, Node>,
}

impl VirtualDir {
    fn insert(&mut self, dir: &str, node: Node) {
        let mut at = self;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            at = at.dirs.entry(part.as_bytes().to_vec()).or_default();
        }
        at.files.insert(node.name.0.clone(), node);
    }

    /// Store the listings bottom-up; a name that is both a file and a directory keeps the
    /// directory (paths come from the caller's layout, which never makes both).
    fn store(self, ctx: &Ctx<'_>, name: Name) -> Result<Node> {
        ctx.dirs.fetch_add(1, Ordering::Relaxed);
        let mut node = Node::new(name, NodeKind::Dir);
        node.mode = 0o755;
        let mut children: BTreeMap<Vec<u8>, Node> = self.files;
        for (n, d) in self.dirs {
            let child = d.store(ctx, Name(n.clone()))?;
            node.mtime_ns = node.mtime_ns.max(child.mtime_ns);
            children.insert(n, child);
        }
        for f in children.values() {
            node.mtime_ns = node.mtime_ns.max(f.mtime_ns);
        }
        let nodes: Vec<Node> = children.into_values().collect();
        node.subtree = store_listing(ctx, &nodes)?;
        Ok(node)
    }
}

fn now_ns() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos()
}

/// The synthetic root directory holding one file.
fn single_file_root(ctx: &Ctx<'_>, node: Node) -> Result<Node> {
    let mut root = Node::new(Name(Vec::new()), NodeKind::Dir);
    root.mode = 0o755;
    root.mtime_ns = node.mtime_ns;
    root.subtree = store_listing(ctx, &[node])?;
    Ok(root)
}

struct CountingReader<'a> {
    inner: Box<dyn Read + Send>,
    progress: &'a Progress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

/// Store a stream as one file's content, chunked as its first bytes, its path (relative)
/// and its size (`None`: unknown) call for: an etcd snapshot is a bbolt database.
pub(crate) fn store_sniffed(
    ctx: &Ctx<'_>,
    rel: &Path,
    size: Option<u64>,
    mut reader: impl Read + Send,
) -> Result<FileContent> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut reader).take(SNIFF_LEN as u64).read_to_end(&mut head).map_err(read_failure)?;
    let chunking = ctx.chooser.choose(rel, size, &head);
    store_content(ctx, std::io::Cursor::new(head).chain(reader), chunking)
}

/// A backup whose data is stored and indexed, not yet committed: no snapshot record yet.
#[derive(Debug)]
pub struct Prepared {
    pub snapshot: Snapshot,
    relied: crate::repo::Relied,
}

impl Prepared {
    /// Save the snapshot record: the commit point (FORMAT.md §15.4).
    pub async fn commit(
        self,
        repo: &Repository,
        guard: Option<&crate::repo::lock::LeaseGuard>,
    ) -> Result<BackupOutcome> {
        let snapshot = self.snapshot;
        let id = repo.commit_snapshot(&snapshot, self.relied, guard).await?;
        tracing::info!(snapshot = %id.short(), source = %snapshot.source, files = snapshot.summary.files,
            bytes = snapshot.summary.bytes, new_bytes = snapshot.summary.new_bytes, partial = snapshot.partial, "snapshot saved");
        Ok(BackupOutcome { id, snapshot })
    }
}

/// The common part of every backup: a rayon pool and a writer on a blocking thread build
/// the root with `build`; then flush. The caller commits.
async fn run_backup<F>(
    repo: Arc<Repository>,
    opts: BackupOptions,
    parent: Option<SnapshotId>,
    root_path: PathBuf,
    exclude: globset::GlobSet,
    total_bytes: u64,
    build: F,
) -> Result<Prepared>
where
    F: for<'c> FnOnce(&'c Ctx<'c>) -> Result<Node> + Send + 'static,
{
    let started = std::time::Instant::now();
    let progress = Progress::new("backup");
    progress.total_bytes.store(total_bytes, Ordering::Relaxed);
    let handle = tokio::runtime::Handle::current();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let repo2 = repo.clone();
    let progress2 = progress.clone();
    let use_inode = opts.use_inode;
    let chooser = opts.chunking.chooser()?;
    let guard = opts.guard.clone();
    let reporter = progress.spawn_reporter(std::time::Duration::from_secs(5));
    // A backup dedups against (and its commit judges prunes by) the index as it is now.
    repo.load_index().await?;
    let index = repo.index().await?;

    let (root, failures, counts, stats) = tokio::task::spawn_blocking(move || -> Result<_> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cairn-backup-{i}"))
            .build()
            .map_err(|e| Error::Retryable(format!("thread pool: {e}")))?;
        let writer = repo2.writer(index, handle.clone()).with_guard(guard);
        let ctx = Ctx {
            writer: &writer,
            repo: &repo2,
            handle,
            root: root_path,
            use_inode,
            exclude,
            chooser,
            failures: Mutex::new(Vec::new()),
            progress: progress2,
            files_read: 0.into(),
            bytes_read: 0.into(),
            dirs: 0.into(),
            hardlinks: Mutex::new(HashMap::new()),
        };
        let root = pool.install(|| build(&ctx))?;
        writer.flush()?;
        let failures = ctx.failures.into_inner();
        let counts = (
            ctx.files_read.load(Ordering::Relaxed),
            ctx.bytes_read.load(Ordering::Relaxed),
            ctx.dirs.load(Ordering::Relaxed),
        );
        let stats = (
            writer.stats.new_blobs.load(Ordering::Relaxed),
            writer.stats.new_bytes.load(Ordering::Relaxed),
            writer.relied(),
        );
        Ok((root, failures, counts, stats))
    })
    .await
    .map_err(|e| Error::Retryable(format!("backup worker: {e}")))??;
    progress.finish();
    let _ = reporter.join();

    let summary = Summary {
        files: progress.files.load(Ordering::Relaxed),
        dirs: counts.2,
        bytes: progress.bytes.load(Ordering::Relaxed),
        files_read: counts.0,
        bytes_read: counts.1,
        new_blobs: stats.0,
        new_bytes: stats.1,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot {
        version: crate::repo::snapshot::SNAPSHOT_VERSION,
        time: time::OffsetDateTime::now_utc(),
        host: opts.host.clone().unwrap_or_else(hostname),
        source: opts.source.clone(),
        cluster: opts.cluster.clone(),
        tags: opts.tags.clone(),
        parent,
        root,
        summary,
        partial: !failures.is_empty(),
        failures,
        meta: opts.meta.clone(),
    };
    Ok(Prepared { snapshot, relied: stats.2 })
}

pub use crate::host::hostname;

fn children_by_name(ctx: &Ctx<'_>, parent: Option<&Node>) -> Result<HashMap<Vec<u8>, Node>> {
    match parent {
        Some(p) if p.kind == NodeKind::Dir => Ok(ctx
            .handle
            .block_on(ctx.repo.read_dir(&p.subtree))?
            .into_iter()
            .map(|n| (n.name.0.clone(), n))
            .collect()),
        _ => Ok(HashMap::new()),
    }
}

fn dir_node(
    ctx: &Ctx<'_>,
    path: &Path,
    name: Name,
    meta: &Metadata,
    parent: Option<&Node>,
) -> Result<Node> {
    ctx.dirs.fetch_add(1, Ordering::Relaxed);
    let mut node = base_node(path, name, NodeKind::Dir, meta);
    if !ctx.use_inode {
        // Cloned volumes get new inode numbers: recording them would defeat listing dedup.
        node.inode = None;
        node.ctime_ns = None;
    }
    let mut entries: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for entry in
        std::fs::read_dir(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
    {
        match entry {
            Ok(e) => {
                let p = e.path();
                if !ctx.exclude.is_empty()
                    && ctx.exclude.is_match(p.strip_prefix(&ctx.root).unwrap_or(&p))
                {
                    continue;
                }
                entries.push((e.file_name().as_bytes().to_vec(), p));
            }
            Err(e) => fail(ctx, path, &e.to_string()),
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let previous = children_by_name(ctx, parent)?;
    let nodes: Vec<Option<Node>> = entries
        .par_iter()
        .map(|(name, p)| {
            let result = std::fs::symlink_metadata(p)
                .map_err(|e| Error::Invalid(e.to_string()))
                .and_then(|m| entry_node(ctx, p, Name(name.clone()), &m, previous.get(name)));
            match result {
                Ok(n) => Ok(Some(n)),
                // Losing the repository is fatal; an unreadable file is not.
                Err(
                    e @ (Error::Retryable(_)
                    | Error::StorageFull(_)
                    | Error::Denied(_)
                    | Error::Integrity(_)),
                ) => Err(e),
                Err(e) => {
                    fail(ctx, p, &e.to_string());
                    Ok(None)
                }
            }
        })
        .collect::<Result<_>>()?;
    let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    node.subtree = store_listing(ctx, &nodes)?;
    Ok(node)
}

fn store_listing(ctx: &Ctx<'_>, nodes: &[Node]) -> Result<Vec<crate::repo::BlobId>> {
    let mut ids = Vec::with_capacity(nodes.len() / MAX_NODES_PER_BLOB + 1);
    for part in nodes.chunks(MAX_NODES_PER_BLOB) {
        ids.push(ctx.writer.add_blob(BlobKind::Tree, &TreeBlob::encode(part))?.id);
    }
    Ok(ids)
}

fn fail(ctx: &Ctx<'_>, path: &Path, error: &str) {
    tracing::warn!(path = %path.display(), error, "skipped");
    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
    let rel = path.strip_prefix(&ctx.root).unwrap_or(path);
    ctx.failures.lock().push(Failure { path: rel.display().to_string(), error: error.to_string() });
}

fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn ctime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())
}

fn base_node(path: &Path, name: Name, kind: NodeKind, meta: &Metadata) -> Node {
    let mut node = Node::new(name, kind);
    node.mode = meta.mode() & 0o7777;
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.mtime_ns = mtime_ns(meta);
    node.inode = Some(meta.ino());
    node.ctime_ns = Some(ctime_ns(meta));
    if let Ok(names) = xattr::list(path) {
        let mut xs: Vec<Xattr> = names
            .filter_map(|n| {
                let value = xattr::get(path, &n).ok().flatten()?;
                Some(Xattr::new(n.as_bytes().to_vec(), &value))
            })
            .collect();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        node.xattrs = xs;
    }
    node
}

fn entry_node(
    ctx: &Ctx<'_>,
    path: &Path,
    name: Name,
    meta: &Metadata,
    previous: Option<&Node>,
) -> Result<Node> {
    let ft = meta.file_type();
    if ft.is_dir() {
        return dir_node(ctx, path, name, meta, previous.filter(|p| p.kind == NodeKind::Dir));
    }
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else {
        NodeKind::Socket
    };
    let mut node = base_node(path, name, kind, meta);
    match kind {
        NodeKind::File => {
            node.size = meta.len();
            if meta.nlink() > 1 {
                node.link_group = Some(meta.dev().rotate_left(32) ^ meta.ino());
            }
            let content = file_content(ctx, path, meta, previous)?;
            let read = content.len;
            content.set_on(&mut node);
            if read != node.size {
                fail(
                    ctx,
                    path,
                    &format!(
                        "changed size while being read ({} then {read} bytes); stored what was read",
                        node.size
                    ),
                );
                node.size = read;
            }
            ctx.progress.add_file(node.size);
        }
        NodeKind::Symlink => {
            let target = std::fs::read_link(path).map_err(|e| Error::Invalid(e.to_string()))?;
            node.target = Some(Name(target.as_os_str().as_bytes().to_vec()));
        }
        NodeKind::Chardev | NodeKind::Blockdev => node.rdev = Some(meta.rdev()),
        _ => {}
    }
    if !ctx.use_inode {
        node.inode = None;
        node.ctime_ns = None;
    }
    Ok(node)
}

/// Content of a regular file: reuse the parent's chunk list when unchanged, else read it.
fn file_content(
    ctx: &Ctx<'_>,
    path: &Path,
    meta: &Metadata,
    previous: Option<&Node>,
) -> Result<FileContent> {
    let mtime_ns = mtime_ns(meta);
    if let Some(p) = previous
        && p.kind == NodeKind::File
        && p.size == meta.len()
        && p.mtime_ns == mtime_ns
        && (!ctx.use_inode || (p.inode == Some(meta.ino()) && p.ctime_ns == Some(ctime_ns(meta))))
        && all_known(ctx, p)?
    {
        // Kept as it was cut, even if this run would cut it otherwise: the bytes are the same.
        return Ok(FileContent::of(p, meta.len()));
    }
    let link_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
    if let Some(k) = link_key
        && let Some(content) = ctx.hardlinks.lock().get(&k)
    {
        return Ok(content.clone());
    }
    let file = File::open(path).map_err(|e| Error::Invalid(format!("open: {e}")))?;
    // Only files that may be cut into pages are sniffed: no extra read per small file.
    let mut head = Vec::new();
    if meta.len() >= MIN_PAGE_FILE {
        head.resize(SNIFF_LEN, 0);
        let n = file.read_at(&mut head, 0).map_err(|e| Error::Invalid(format!("read: {e}")))?;
        head.truncate(n);
    }
    // Relative to the backup's root; a single file backed up is its own root: its name.
    let rel = match path.strip_prefix(&ctx.root) {
        Ok(r) if !r.as_os_str().is_empty() => r,
        _ => Path::new(path.file_name().unwrap_or_default()),
    };
    let chunking = ctx.chooser.choose(rel, Some(meta.len()), &head);
    let content = read_content(ctx, &file, meta.len(), chunking)?;
    ctx.files_read.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_read.fetch_add(meta.len(), Ordering::Relaxed);
    if let Some(k) = link_key {
        ctx.hardlinks.lock().insert(k, content.clone());
    }
    Ok(content)
}

/// Are all blobs of a parent's file node still stored (its extent lists read to see)?
fn all_known(ctx: &Ctx<'_>, node: &Node) -> Result<bool> {
    let known = |extents: &[Extent]| -> Result<bool> {
        for id in extents.iter().filter_map(|e| e.id.as_ref()) {
            if !ctx.writer.is_known(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if !known(&node.content)? {
        return Ok(false);
    }
    for id in &node.extent_lists {
        if !ctx.writer.is_known(id)?
            || !known(&ctx.handle.block_on(ctx.repo.read_extent_list(id))?)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_content(ctx: &Ctx<'_>, file: &File, size: u64, chunking: Chunking) -> Result<FileContent> {
    let mut sink = ExtentSink::new(chunking);
    let mut pos = 0u64;
    for (start, end) in data_regions(file, size) {
        sink.push(ctx, Extent { id: None, len: start - pos })?;
        chunk_into(ctx, RegionReader { file, pos: start, end }, chunking, start, &mut sink)?;
        pos = end;
    }
    sink.push(ctx, Extent { id: None, len: size.saturating_sub(pos) })?;
    sink.finish(ctx)
}

/// Chunk and store everything `reader` yields as one file's content.
pub(crate) fn store_content(
    ctx: &Ctx<'_>,
    reader: impl Read + Send,
    chunking: Chunking,
) -> Result<FileContent> {
    let mut sink = ExtentSink::new(chunking);
    chunk_into(ctx, reader, chunking, 0, &mut sink)?;
    sink.finish(ctx)
}

/// Chunk everything `reader` yields into blobs, hashing, compressing and sealing a batch of
/// chunks in parallel; all-zero chunks become holes. `offset` is where in the file the
/// reader starts (pages are cut at file offsets). Returns the bytes read.
///
/// Cutting chunks is sequential (each cut depends on the last) and sealing is parallel: the
/// next batch is cut while the previous one is sealed (`rayon::join`), so a large file keeps
/// every core busy instead of leaving them idle while one thread reads and cuts. A batch is
/// one chunk per thread, or 4 MiB of pages: at most two batches are in memory per file.
pub(crate) fn chunk_into(
    ctx: &Ctx<'_>,
    reader: impl Read + Send,
    chunking: Chunking,
    offset: u64,
    sink: &mut ExtentSink,
) -> Result<u64> {
    type Chunks<'r> = Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send + 'r>;
    let threads = rayon::current_num_threads().max(2);
    let (mut chunks, batch): (Chunks<'_>, usize) = match chunking {
        Chunking::Cdc => (Box::new(ctx.repo.chunker().stream(reader)), threads),
        Chunking::Pages(page) => (
            Box::new(PageStream::new(reader, page, offset)),
            ((4 << 20) / page as usize).max(threads),
        ),
    };
    let mut total = 0u64;
    let mut sealing: Vec<Vec<u8>> = Vec::new();
    loop {
        let (cut, sealed) = rayon::join(
            || -> Result<Vec<Vec<u8>>> {
                let mut next = Vec::with_capacity(batch);
                while next.len() < batch {
                    match chunks.next().transpose() {
                        Ok(Some(c)) => next.push(c),
                        Ok(None) => break,
                        Err(e) => return Err(read_failure(e)),
                    }
                }
                Ok(next)
            },
            || seal_batch(ctx, &sealing),
        );
        for e in sealed? {
            sink.push(ctx, e)?;
        }
        let cut = cut?;
        if cut.is_empty() {
            return Ok(total);
        }
        total += cut.iter().map(|c| c.len() as u64).sum::<u64>();
        sealing = cut;
    }
}

/// A read error as the backup reports it. A reader backed by a store (bucket backups) wraps
/// the store's own error, whose class (a retryable network failure, a missing object, a
/// denied read) must survive; any other read error is the source's problem.
fn read_failure(e: std::io::Error) -> Error {
    super::wrapped_error(e).unwrap_or_else(|e| Error::Invalid(format!("read: {e}")))
}

fn seal_batch(ctx: &Ctx<'_>, chunks: &[Vec<u8>]) -> Result<Vec<Extent>> {
    chunks
        .par_iter()
        .map(|c| -> Result<Extent> {
            let len = c.len() as u64;
            if is_zero(c) {
                return Ok(Extent { id: None, len });
            }
            let added = ctx.writer.add_blob(BlobKind::Data, c)?;
            Ok(Extent { id: Some(added.id), len })
        })
        .collect()
}

fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &b| a | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Data regions of a file (start, end), skipping holes. Falls back to one region where the
/// filesystem does not report holes.
fn data_regions(file: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    let size_i = size as i64;
    while pos < size_i {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let hole = lseek(file, data, Whence::SeekHole).unwrap_or(size_i).min(size_i);
        if hole <= data {
            break;
        }
        regions.push((data as u64, hole as u64));
        pos = hole;
    }
    regions
}

struct RegionReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Name helper for callers that build paths from snapshot nodes.
pub fn os_name(name: &Name) -> &OsStr {
    OsStr::from_bytes(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_class_through_a_reader() {
        let e = std::io::Error::other(Error::Retryable("timed out".into()));
        assert!(matches!(read_failure(e), Error::Retryable(m) if m == "timed out"));
        let e = std::io::Error::other(Error::Denied("403".into()));
        assert!(matches!(read_failure(e), Error::Denied(_)));
        let e = std::io::Error::from_raw_os_error(5);
        assert!(matches!(read_failure(e), Error::Invalid(m) if m.starts_with("read: ")));
    }
}
