//! The repository: deduplicated, compressed, encrypted packs on object storage.
//!
//! Layout of objects (see `shared/FORMAT.md`, the normative spec):
//! `config`, `keys/<id>`, `packs/<xx>/<id>`, `index/<id>`, `snapshots/<id>`, `locks/…`.

pub mod blob_table;
pub mod check;
pub mod chunker;
pub mod crypto;
pub mod diff;
pub mod forget;
pub mod ids;
pub mod index;
pub mod lineage;
pub mod lock;
pub mod mark;
pub mod pack;
pub mod prune;
mod relied;
pub mod repair;
pub mod snapshot;
pub mod storage;
#[cfg(test)]
mod testutil;
pub mod tree;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use blob_table::IndexBudget;
pub use chunker::{Chunker, ChunkerParams};
pub use crypto::{DataIdentity, KeyMaterial, KeyRecipient, SymKey, Unlock, WriteKey};
pub use ids::{BlobId, IndexId, KeyId, PackId, RepoId, SnapshotId, short_id};
pub use index::{IndexFile, Location, MasterIndex};
pub use lineage::{Lineage, ParentSpec, SnapshotFilter};
pub use pack::BlobKind;
pub use relied::Relied;
pub use snapshot::{Failure, Snapshot, SnapshotEntry, Summary};
pub use storage::{RetryPolicy, Store};
pub use tree::{Extent, ExtentList, Name, Node, NodeKind, TreeBlob};
pub use writer::{AddedBlob, Writer, WriterStats};

use crate::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;

/// The `config` object: plaintext JSON, written once at `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: RepoId,
    pub chunker: ChunkerParams,
    /// zstd level for blobs.
    pub compression: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// The age recipient pack data keys are wrapped to (public half of the data identity).
    pub data_recipient: String,
    pub created: String,
}

/// Options for [`Repository::init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression: i32,
    pub pack_size: u32,
    /// Skip the conditional-write probe (stores without `If-None-Match`; unsafe with
    /// concurrent writers, see FORMAT.md).
    pub unsafe_no_conditional_writes: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::DATA,
            compression: 3,
            pack_size: 16 << 20,
            unsafe_no_conditional_writes: false,
        }
    }
}

/// How the caller proves access: a write credential, or an operator's identity.
#[derive(Debug)]
pub enum Access {
    Write(WriteKey),
    Unlock(Unlock),
}

pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}", &h[..2], h)
}

/// Index objects fetched at once while loading the index. A writer closes one every 32
/// packs or 32k blobs (~3 MB sealed), and each fetched one is held sealed, opened and decoded
/// (~3× its size) until merged: 4 keep that near ~40 MB whatever the bucket's size, and
/// still overlap the GETs' latency. (Objects written before the 32k cap, and prune's
/// compacted ones, can be larger.)
const INDEX_FETCHES: usize = 4;

pub struct Repository {
    store: Store,
    config: Config,
    write: WriteKey,
    data: Option<DataIdentity>,
    data_recipient: age::x25519::Recipient,
    chunker: Chunker,
    /// `None` until the first index load. Reached only through [`Repository::index`],
    /// which loads it on first use: no read can run against an index never loaded.
    index: RwLock<Option<Arc<MasterIndex>>>,
    /// One index load at a time when several readers ask for it first.
    index_loading: tokio::sync::Mutex<()>,
    /// Memory the index's entries may take before they go to local disk, and where.
    index_budget: IndexBudget,
    pack_keys: Mutex<HashMap<u32, SymKey>>,
    windows: Mutex<WindowCache>,
    /// Mark objects seen by the last index load: a commit checks for marks written since.
    marks_seen: Mutex<std::collections::HashSet<String>>,
    /// Index objects loaded by the last index load: one gone at commit time means a prune
    /// compacted the index, and may be about to delete packs the session reused.
    index_seen: Mutex<std::collections::HashSet<String>>,
}

/// Reads of small blobs fetch a whole window of their pack and keep the last few windows:
/// blobs written together are read together, so a restore of many small files makes one
/// request per window instead of one per file. Bounded: at most `WINDOWS` × `WINDOW` bytes,
/// fewer under a small budget ([`Repository::window_limit`]).
const WINDOW: u64 = 4 << 20;
/// The longest a snapshot record's write may take before the commit check runs again:
/// below prune's settle wait (5 s at most, FORMAT.md §15.6).
const COMMIT_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(4);
const WINDOWS: usize = 16;
const MIN_WINDOWS: usize = 8;

/// A window being fetched or fetched: readers that want the same window at the same time
/// (a restore decrypting a file's small blobs on every core) wait for one request.
type WindowCell = Arc<tokio::sync::OnceCell<Bytes>>;

#[derive(Default)]
struct WindowCache {
    map: HashMap<(u32, u64), WindowCell>,
    order: std::collections::VecDeque<(u32, u64)>,
}

impl WindowCache {
    /// The cell of a window, made (and the oldest window dropped) if it is not cached.
    fn cell(&mut self, key: (u32, u64), limit: usize) -> WindowCell {
        if let Some(cell) = self.map.get(&key) {
            return cell.clone();
        }
        let cell = WindowCell::default();
        self.map.insert(key, cell.clone());
        self.order.push_back(key);
        while self.order.len() > limit {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        cell
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({}, {})", self.store.url(), self.config.id.short())
    }
}

impl Repository {
    /// Create a repository: `config`, one `keys/` object per recipient. Returns the opened
    /// repository (with full access) whose [`Repository::write_key`] is the write credential.
    pub async fn init(
        store: Store,
        recipients: &[KeyRecipient],
        opts: InitOptions,
    ) -> Result<Repository> {
        if recipients.is_empty() {
            return Err(Error::Invalid("init needs at least one recipient or a passphrase".into()));
        }
        opts.chunker.validate()?;
        validate_limits(opts.compression, opts.pack_size)?;
        match store.get("config").await {
            Ok(_) => {
                return Err(Error::AlreadyExists(format!(
                    "a repository already exists at {}",
                    store.url()
                )));
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if !opts.unsafe_no_conditional_writes {
            probe_conditional_writes(&store).await?;
        }
        let repo_id = RepoId::random();
        let material =
            KeyMaterial { write: WriteKey::generate(repo_id), data: DataIdentity::generate() };
        let config = Config {
            version: FORMAT_VERSION,
            id: repo_id,
            chunker: opts.chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
            data_recipient: material.data.recipient().to_string(),
            created: now_rfc3339(),
        };
        let encoded = material.encode();
        for r in recipients {
            let sealed = r.encrypt(&encoded)?;
            store.create(&format!("keys/{}", KeyId::random()), Bytes::from(sealed)).await?;
        }
        // The config goes last: a repository without it is not a repository yet.
        store
            .create("config", Bytes::from(serde_json::to_vec_pretty(&config).expect("json")))
            .await?;
        Self::from_parts(store, config, material.write, Some(material.data))
    }

    /// Open an existing repository.
    pub async fn open(store: Store, access: Access) -> Result<Repository> {
        let config = read_config(&store).await?;
        match access {
            Access::Write(write) => {
                if write.repo != config.id {
                    return Err(Error::Denied(format!(
                        "the write key belongs to repository {}, this is {}",
                        write.repo.short(),
                        config.id.short()
                    )));
                }
                Self::from_parts(store, config, write, None)
            }
            Access::Unlock(unlock) => {
                let keys = store.list("keys/").await?;
                let fetched =
                    store.get_existing(keys.into_iter().map(|(k, _)| k).collect(), 8).await?;
                for (_, sealed) in fetched {
                    if let Some(plain) = unlock.open_key_object(&sealed) {
                        let material = KeyMaterial::decode(&plain)?;
                        // A crashed or concurrent init can leave key objects of another
                        // repository id behind: skip them rather than lock the operator out.
                        if material.write.repo != config.id {
                            tracing::warn!(
                                "skipping a key object of repository {}",
                                material.write.repo.short()
                            );
                            continue;
                        }
                        return Self::from_parts(
                            store,
                            config,
                            material.write,
                            Some(material.data),
                        );
                    }
                }
                Err(Error::Denied(format!(
                    "no key object of {} opens with the given identity or passphrase",
                    store.url()
                )))
            }
        }
    }

    fn from_parts(
        store: Store,
        config: Config,
        write: WriteKey,
        data: Option<DataIdentity>,
    ) -> Result<Repository> {
        use std::str::FromStr;
        let data_recipient = age::x25519::Recipient::from_str(&config.data_recipient)
            .map_err(|e| Error::Integrity(format!("config: bad data recipient: {e}")))?;
        if let Some(d) = &data
            && d.recipient().to_string() != config.data_recipient
        {
            return Err(Error::Integrity(
                "config: data recipient does not match the key object".into(),
            ));
        }
        config.chunker.validate()?;
        validate_limits(config.compression, config.pack_size)?;
        let chunker = Chunker::new(config.chunker, write.gear_table());
        Ok(Repository {
            store,
            config,
            write,
            data,
            data_recipient,
            chunker,
            index: RwLock::new(None),
            index_loading: tokio::sync::Mutex::new(()),
            index_budget: IndexBudget::default(),
            pack_keys: Mutex::new(HashMap::new()),
            windows: Mutex::new(WindowCache::default()),
            marks_seen: Mutex::new(Default::default()),
            index_seen: Mutex::new(Default::default()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn write_key(&self) -> &WriteKey {
        &self.write
    }
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }
    pub fn meta_key(&self) -> &SymKey {
        &self.write.meta
    }
    pub fn data_recipient(&self) -> &age::x25519::Recipient {
        &self.data_recipient
    }
    /// True when file contents can be read (an identity opened the repository).
    pub fn can_read_data(&self) -> bool {
        self.data.is_some()
    }

    /// Load (or reload) and merge every index object. Returns the number of blobs known. A
    /// damaged index object is an error: operations must not act on a partial view.
    /// Readers need not call it: [`Repository::index`] loads on first use; call it to see
    /// index objects written since.
    pub async fn load_index(&self) -> Result<usize> {
        if let Some((_, e)) = self.load_index_lenient().await?.into_iter().next() {
            return Err(e);
        }
        Ok(self.loaded_index().map_or(0, |i| i.len()))
    }

    /// Load every index object that opens; return the ones that did not (for `check`).
    /// Marks are loaded first: a pack marked by prune is never offered to writers for dedup.
    pub async fn load_index_lenient(&self) -> Result<Vec<(String, Error)>> {
        let mut failures = Vec::new();
        let marks = match mark::load_marks(self).await {
            Ok(m) => m,
            Err(e) => {
                failures.push(("gc/".to_string(), e));
                Vec::new()
            }
        };
        let keys = self.store.list("index/").await?;
        let mut master = MasterIndex::new(self.index_budget.clone());
        let meta = self.meta_key();
        // Each object is decoded and merged as it arrives and then dropped: the sealed
        // objects are never all held at once (their size grows with the bucket).
        let seen = self
            .for_each_index_object(keys.into_iter().map(|(k, _)| k).collect(), |key, sealed| {
                let opened = IndexId::parse(key.trim_start_matches("index/"))
                    .and_then(|id| IndexFile::open(meta, &id, &sealed));
                match opened {
                    Ok(file) => {
                        for (pack, header) in &file.packs {
                            master.add_pack(*pack, header)?;
                        }
                    }
                    Err(e) => failures.push((key.to_string(), e)),
                }
                Ok(())
            })
            .await?;
        *self.index_seen.lock() = seen;
        master.set_marked(&mark::marked_packs(&marks));
        master.finish()?;
        tracing::debug!(
            blobs = master.len(),
            on_disk = master.on_disk(),
            memory = master.memory(),
            "index loaded"
        );
        *self.marks_seen.lock() = marks.into_iter().map(|m| m.key).collect();
        *self.index.write() = Some(Arc::new(master));
        self.pack_keys.lock().clear();
        *self.windows.lock() = WindowCache::default();
        Ok(failures)
    }

    /// Fetch index objects [`INDEX_FETCHES`] at a time and hand each to `each` as it arrives; one deleted
    /// between listing and fetching (a prune compacted it, after writing its replacement)
    /// is skipped and the listing is refreshed for the replacement. Returns the keys seen.
    pub(crate) async fn for_each_index_object(
        &self,
        keys: Vec<String>,
        mut each: impl FnMut(&str, Bytes) -> Result<()>,
    ) -> Result<std::collections::HashSet<String>> {
        let mut wanted: std::collections::BTreeSet<String> = keys.into_iter().collect();
        let mut seen: std::collections::HashSet<String> = Default::default();
        for _round in 0..5 {
            let batch: Vec<String> =
                wanted.iter().filter(|k| !seen.contains(*k)).cloned().collect();
            let mut results = futures::stream::iter(batch)
                .map(|k| async move {
                    let r = self.store.get(&k).await;
                    (k, r)
                })
                .buffer_unordered(INDEX_FETCHES);
            let mut vanished = false;
            while let Some((k, r)) = results.next().await {
                match r {
                    Ok(b) => each(&k, b)?,
                    Err(Error::NotFound(_)) => vanished = true,
                    Err(e) => return Err(e),
                }
                seen.insert(k);
            }
            if !vanished {
                return Ok(seen);
            }
            wanted = self.store.list("index/").await?.into_iter().map(|(k, _)| k).collect();
            if wanted.iter().all(|k| seen.contains(k)) {
                return Ok(seen);
            }
        }
        Err(Error::Retryable("index objects keep changing under us (a prune is compacting)".into()))
    }

    /// The memory the index's entries may take before they go to local disk, and where.
    pub fn index_budget(&self) -> &IndexBudget {
        &self.index_budget
    }

    /// Pack windows cached for reads of small blobs: 16 (64 MiB), or an eighth of the run's
    /// budget when that is less, at least 8: with 2, a restore of a
    /// page-chunked file whose changed pages sit in other packs took 5× as long (scale
    /// benchmark, 250k blobs).
    fn window_limit(&self) -> usize {
        (self.index_budget.run_budget() / 8 / WINDOW as usize).clamp(MIN_WINDOWS, WINDOWS)
    }

    /// Set the index's memory budget and cache directory (from the job's flags).
    pub fn set_index_budget(&mut self, budget: IndexBudget) {
        self.index_budget = budget;
    }

    /// Fetch index objects, all held at once (for the callers that need them together), as
    /// [`Repository::for_each_index_object`] does.
    pub(crate) async fn get_index_objects(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Bytes)>> {
        let mut got = Vec::new();
        self.for_each_index_object(keys, |k, b| {
            got.push((k.to_string(), b));
            Ok(())
        })
        .await?;
        Ok(got)
    }

    /// Replace the in-memory index (prune builds its own from the objects it loaded).
    pub(crate) fn install_index(&self, master: MasterIndex) -> Arc<MasterIndex> {
        let master = Arc::new(master);
        *self.index.write() = Some(master.clone());
        self.pack_keys.lock().clear();
        *self.windows.lock() = WindowCache::default();
        master
    }

    /// The index as last loaded, loading it first if nothing has yet.
    pub async fn index(&self) -> Result<Arc<MasterIndex>> {
        if let Some(index) = self.loaded_index() {
            return Ok(index);
        }
        let _one_load = self.index_loading.lock().await;
        if let Some(index) = self.loaded_index() {
            return Ok(index);
        }
        self.load_index().await?;
        self.loaded_index().ok_or_else(|| Error::Retryable("the index did not load".into()))
    }

    /// The index if one was loaded: for code that holds a [`Location`] taken from it.
    fn loaded_index(&self) -> Option<Arc<MasterIndex>> {
        self.index.read().clone()
    }

    /// Read and verify one blob.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let index = self.index().await?;
        let loc = index
            .get(id)?
            // A snapshot refers to it, so the repository promised it: damage, not a typo.
            .ok_or_else(|| {
                Error::Integrity(format!(
                    "blob {} is in no index (run `cairn check`; `cairn repair index` rebuilds \
                     the index from the packs)",
                    id.short()
                ))
            })?;
        let record = index.pack(loc.pack);
        let range = u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.length);
        let window = range.start / WINDOW;
        let (w_start, w_end) = (window * WINDOW, ((window + 1) * WINDOW).min(record.body_end));
        let sealed = if range.end - range.start < WINDOW / 4 && range.end <= w_end {
            let cell = self.windows.lock().cell((loc.pack, window), self.window_limit());
            // A failed fetch leaves the cell empty: the next reader tries again.
            let data =
                cell.get_or_try_init(|| self.fetch(&record.id, w_start..w_end, id)).await?.clone();
            data.slice((range.start - w_start) as usize..(range.end - w_start) as usize)
        } else {
            self.fetch(&record.id, range, id).await?
        };
        self.open_blob(id, &loc, &sealed)
    }

    /// Fetch a byte range of a pack; a missing pack or a range past its end is damage.
    async fn fetch(
        &self,
        pack: &PackId,
        range: std::ops::Range<u64>,
        id: &BlobId,
    ) -> Result<Bytes> {
        let key = pack_key(pack);
        match self.store.get_range(&key, range.clone()).await {
            Ok(b) if b.len() as u64 == range.end - range.start => Ok(b),
            Ok(_) => Err(Error::Integrity(format!("pack {} is truncated", pack.short()))),
            Err(Error::NotFound(_)) => Err(Error::Integrity(format!(
                "pack {} holding blob {} is missing",
                pack.short(),
                id.short()
            ))),
            Err(e) => {
                // A range past the end is damage, not a network problem.
                if let Ok(size) = self.store.size(&key).await
                    && size < range.end
                {
                    return Err(Error::Integrity(format!(
                        "pack {} is truncated ({size} bytes, blob {} ends at {})",
                        pack.short(),
                        id.short(),
                        range.end
                    )));
                }
                Err(e)
            }
        }
    }

    /// Decrypt, decompress and verify a blob already fetched.
    pub fn open_blob(&self, id: &BlobId, loc: &Location, sealed: &[u8]) -> Result<Vec<u8>> {
        let what = format!("blob {}", id.short());
        let key = match loc.kind {
            BlobKind::Tree => self.write.meta.clone(),
            BlobKind::Data => self.pack_data_key(loc.pack)?,
        };
        let payload = key.open(loc.kind.domain(), &id.0, sealed, &what)?;
        let plain = pack::decompress(loc.flags, payload, loc.raw_len, &what)?;
        if self.write.id_for(loc.kind, &plain) != *id {
            return Err(Error::Integrity(format!("{what}: content does not hash to its id")));
        }
        Ok(plain)
    }

    fn pack_data_key(&self, slot: u32) -> Result<SymKey> {
        if let Some(k) = self.pack_keys.lock().get(&slot) {
            return Ok(k.clone());
        }
        let data = self.data.as_ref().ok_or_else(|| {
            Error::Denied("reading file contents needs an age identity or passphrase; a write key cannot decrypt data".into())
        })?;
        // The location came from a loaded index: the slot is in it.
        let index = self
            .loaded_index()
            .ok_or_else(|| Error::Integrity(format!("pack slot {slot}: no index loaded")))?;
        let record = index.pack(slot);
        let key = data.unwrap_key(&record.wrapped_key, &format!("pack {}", record.id.short()))?;
        self.pack_keys.lock().insert(slot, key.clone());
        Ok(key)
    }

    /// Read a directory listing (all its blobs, in order).
    pub async fn read_dir(&self, subtree: &[BlobId]) -> Result<Vec<Node>> {
        let mut nodes = Vec::new();
        for id in subtree {
            let blob = self.read_blob(id).await?;
            nodes.extend(TreeBlob::decode(&blob)?.nodes);
        }
        Ok(nodes)
    }

    /// The commit point of a backup (FORMAT.md §15.4). Refuses if the lease is in doubt, or
    /// if a prune may delete data the session reused: a mark written since the index was
    /// loaded names its pack, or an index object loaded then is gone (a prune compacted the
    /// index, which it does before deleting packs). Then the index is reloaded and every
    /// such blob must have a copy in an unmarked, indexed pack (a repack writes copies
    /// before marking). Otherwise no snapshot is saved.
    pub async fn commit_snapshot(
        &self,
        snapshot: &Snapshot,
        mut relied: Relied,
        guard: Option<&lock::LeaseGuard>,
    ) -> Result<SnapshotId> {
        if let Some(g) = guard {
            g.check()?;
        }
        // The record's id and bytes stay the same across attempts, so that an attempt whose
        // answer was lost is recognised by the next one (FORMAT.md §15.7).
        let id = SnapshotId::random();
        let sealed = Bytes::from(snapshot.seal(self.meta_key(), &id));
        let key = format!("snapshots/{id}");
        let started = std::time::Instant::now();
        let (mut changes, mut failures) = (0u32, 0u32);
        while changes < 3 {
            let marks_seen = self.marks_seen.lock().clone();
            let mut condemned = std::collections::HashSet::new();
            let mut compacted = false;
            for info in self.store.list_info("gc/").await? {
                if marks_seen.contains(&info.key) {
                    continue;
                }
                let id = IndexId::parse(info.key.trim_start_matches("gc/"))?;
                match self.store.get(&info.key).await {
                    Ok(sealed) => {
                        condemned.extend(mark::Mark::open(self.meta_key(), &id, &sealed)?.packs)
                    }
                    // A mark acted on and removed meanwhile: its packs may be gone.
                    Err(Error::NotFound(_)) => compacted = true,
                    Err(e) => return Err(e),
                }
            }
            let listed: std::collections::HashSet<String> =
                self.store.list("index/").await?.into_iter().map(|(k, _)| k).collect();
            compacted |= self.index_seen.lock().iter().any(|k| !listed.contains(k));
            let at_risk = if compacted {
                relied.len()
            } else if condemned.is_empty() {
                0
            } else {
                let r = relied.clone();
                blocking(move || r.in_packs(&condemned)).await?
            };
            if at_risk == 0 {
                if let Some(g) = guard {
                    g.check()?;
                }
                // One attempt, bounded well below prune's settle wait (§15.6): a write that
                // fails is retried only after the check above has run again.
                let store = self.store.under_lease(guard.cloned());
                match store.create_once(&key, sealed.clone(), COMMIT_WRITE_LIMIT).await {
                    Ok(()) => return Ok(id),
                    Err(Error::Retryable(msg)) => {
                        failures += 1;
                        let policy = self.store.retry_policy();
                        let delay = policy.delay(failures, &msg);
                        if started.elapsed() + delay > policy.budget {
                            return Err(Error::Retryable(format!(
                                "saving the snapshot record: {msg} (gave up after {failures} \
                                 attempts)"
                            )));
                        }
                        tracing::warn!(attempt = failures, error = %msg, "snapshot record not saved; checking again and retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            changes += 1;
            self.load_index().await?;
            let index = self.index().await?;
            // Follow the copies: a later mark must be judged against where they are now.
            let (rebased, lost) = blocking(move || relied.rebase(index)).await?;
            if lost > 0 {
                return Err(Error::Retryable(format!(
                    "a prune running beside this backup condemned the only copy of {lost} \
                     blob(s) the backup reused; no snapshot was saved. Run the backup again: \
                     it will store that data anew"
                )));
            }
            relied = rebased;
            tracing::debug!(blobs = at_risk, "reused blobs still have live copies");
        }
        Err(Error::Retryable(
            "a prune keeps changing the index while committing; run the backup again".into(),
        ))
    }

    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        let id = SnapshotId::random();
        self.store
            .create(&format!("snapshots/{id}"), Bytes::from(snapshot.seal(self.meta_key(), &id)))
            .await?;
        Ok(id)
    }

    /// All snapshots that open, oldest first. A damaged record is logged and left out, so
    /// one bad object never stops new backups; `check` reports it.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (entries, failures) = self.snapshots_lenient().await?;
        for (key, e) in failures {
            tracing::warn!(object = %key, error = %e, "snapshot record does not open; left out");
        }
        Ok(entries)
    }

    /// All snapshots, oldest first, and the records that did not open.
    pub async fn snapshots_lenient(&self) -> Result<(Vec<SnapshotEntry>, Vec<(String, Error)>)> {
        self.snapshots_refresh(&[]).await
    }

    /// Like [`Repository::snapshots_lenient`], reusing records already opened (a record never
    /// changes): only names missing from `known` are fetched, and records gone from the store
    /// (forgotten) drop out. A long-running reader lists a large repository for the price
    /// of one listing plus the new records.
    pub async fn snapshots_refresh(
        &self,
        known: &[SnapshotEntry],
    ) -> Result<(Vec<SnapshotEntry>, Vec<(String, Error)>)> {
        let keys = self.store.list("snapshots/").await?;
        let by_id: HashMap<SnapshotId, &SnapshotEntry> = known.iter().map(|e| (e.id, e)).collect();
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (key, _) in keys {
            let id = SnapshotId::parse(key.trim_start_matches("snapshots/")).ok();
            match id.and_then(|id| by_id.get(&id)) {
                Some(entry) => out.push((*entry).clone()),
                None => missing.push(key),
            }
        }
        // A record forgotten between the listing and its fetch is simply gone.
        let fetched = self.store.get_existing(missing, 16).await?;
        let mut failures = Vec::new();
        for (key, sealed) in fetched {
            let opened = SnapshotId::parse(key.trim_start_matches("snapshots/"))
                .and_then(|id| Snapshot::open(self.meta_key(), &id, &sealed).map(|s| (id, s)));
            match opened {
                Ok((id, snapshot)) => out.push(SnapshotEntry { id, snapshot }),
                Err(e) => failures.push((key, e)),
            }
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok((out, failures))
    }

    /// Resolve `latest`, a full id or a unique prefix, optionally within one source.
    pub async fn find_snapshot(&self, spec: &str, source: Option<&str>) -> Result<SnapshotEntry> {
        self.find_snapshot_in(spec, SnapshotFilter::source(source)).await
    }

    /// Resolve `latest`, a full id or a unique prefix among the snapshots `filter` selects.
    pub async fn find_snapshot_in(
        &self,
        spec: &str,
        filter: SnapshotFilter<'_>,
    ) -> Result<SnapshotEntry> {
        let all = self.snapshots().await?;
        let candidates: Vec<SnapshotEntry> =
            all.into_iter().filter(|s| filter.matches(&s.snapshot)).collect();
        if spec == "latest" {
            return candidates.into_iter().next_back().ok_or_else(|| {
                Error::NotFound(match (filter.source, filter.cluster) {
                    (Some(s), Some(c)) => format!("no snapshot of source {s:?} in cluster {c:?}"),
                    (Some(s), None) => format!("no snapshot of source {s:?}"),
                    (None, Some(c)) => format!("no snapshot in cluster {c:?}"),
                    (None, None) => "the repository has no snapshot".into(),
                })
            });
        }
        let spec_lc = spec.to_ascii_lowercase();
        if spec_lc.is_empty() || !spec_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "snapshot {spec:?}: expected `latest`, an id or an id prefix"
            )));
        }
        let mut hits: Vec<SnapshotEntry> =
            candidates.into_iter().filter(|s| s.id.to_hex().starts_with(&spec_lc)).collect();
        match hits.len() {
            0 => Err(Error::NotFound(format!("snapshot {spec}"))),
            1 => Ok(hits.remove(0)),
            n => Err(Error::Invalid(format!("snapshot prefix {spec} is ambiguous ({n} matches)"))),
        }
    }

    /// The whole content of a small file node (manifests, records): holes read as zeros.
    /// Large files go through [`crate::fs::write_file_to`] instead.
    pub async fn read_file(&self, node: &Node) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(node.size as usize);
        let mut extents = Extents::new(self, node);
        while let Some(extent) = extents.next().await? {
            match &extent.id {
                Some(id) => out.extend_from_slice(&self.read_blob(id).await?),
                None => out.resize(out.len() + extent.len as usize, 0),
            }
        }
        Ok(out)
    }

    /// Read one extent-list blob (FORMAT.md §9.10).
    pub async fn read_extent_list(&self, id: &BlobId) -> Result<Vec<Extent>> {
        ExtentList::decode(&self.read_blob(id).await?)
    }

    /// Find the node at `path` ("" or "/" is the root) in a snapshot.
    pub async fn lookup(&self, snapshot: &Snapshot, path: &str) -> Result<Node> {
        let mut node = snapshot.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if node.kind != NodeKind::Dir {
                return Err(Error::NotFound(format!(
                    "{path}: {} is not a directory",
                    node.name.display()
                )));
            }
            let children = self.read_dir(&node.subtree).await?;
            node = children
                .into_iter()
                .find(|n| n.name.as_bytes() == part.as_bytes())
                .ok_or_else(|| Error::NotFound(format!("{path} in snapshot")))?;
        }
        Ok(node)
    }

    /// Start a writing session that deduplicates against `index` (from
    /// [`Repository::index`]).
    pub fn writer(
        self: &Arc<Self>,
        index: Arc<MasterIndex>,
        handle: tokio::runtime::Handle,
    ) -> Writer {
        Writer::new(self.clone(), index, handle)
    }
}

/// Index lookups off the async runtime: on a disk table each is a read.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Retryable(format!("index lookup task: {e}")))?
}

/// A file node's extents in file order: its inline `content`, then those of each extent-list
/// blob, one list in memory at a time (a multi-TB volume image has millions of extents).
pub struct Extents<'a> {
    repo: &'a Repository,
    batch: std::vec::IntoIter<Extent>,
    lists: std::slice::Iter<'a, BlobId>,
}

impl<'a> Extents<'a> {
    pub fn new(repo: &'a Repository, node: &'a Node) -> Self {
        Extents { repo, batch: node.content.clone().into_iter(), lists: node.extent_lists.iter() }
    }

    pub async fn next(&mut self) -> Result<Option<Extent>> {
        loop {
            if let Some(e) = self.batch.next() {
                return Ok(Some(e));
            }
            if !self.refill().await? {
                return Ok(None);
            }
        }
    }

    /// For blocking callers: the next extent, reading a list blob on `handle` only when the
    /// one in memory is used up.
    pub fn next_blocking(&mut self, handle: &tokio::runtime::Handle) -> Result<Option<Extent>> {
        loop {
            if let Some(e) = self.batch.next() {
                return Ok(Some(e));
            }
            if !handle.block_on(self.refill())? {
                return Ok(None);
            }
        }
    }

    /// Load the next list blob; false when there is none.
    async fn refill(&mut self) -> Result<bool> {
        match self.lists.next() {
            Some(id) => {
                self.batch = self.repo.read_extent_list(id).await?.into_iter();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The local clock as RFC 3339, for informative timestamps.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn validate_limits(compression: i32, pack_size: u32) -> Result<()> {
    if !(1..=22).contains(&compression) {
        return Err(Error::Invalid(format!("compression level {compression} (use 1..=22)")));
    }
    // Offsets inside a pack are u32; stay far from the limit.
    if !((1 << 20)..=(1 << 30)).contains(&pack_size) {
        return Err(Error::Invalid(format!("pack size {pack_size} bytes (use 1 MiB to 1 GiB)")));
    }
    Ok(())
}

async fn read_config(store: &Store) -> Result<Config> {
    let bytes = store.get("config").await.map_err(|e| match e {
        Error::NotFound(_) => {
            Error::NotFound(format!("no repository at {} (run `cairn init`)", store.url()))
        }
        other => other,
    })?;
    let config: Config = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Integrity(format!("config of {}: {e}", store.url())))?;
    if config.version != FORMAT_VERSION {
        return Err(Error::Invalid(format!(
            "repository format {} is not supported (this cairn reads {FORMAT_VERSION})",
            config.version
        )));
    }
    Ok(config)
}

/// Refuse stores that silently overwrite on `If-None-Match: *`: locks and write-once
/// objects depend on it.
async fn probe_conditional_writes(store: &Store) -> Result<()> {
    let key = format!("locks/probe-{}", RepoId::random().short());
    store.create(&key, Bytes::from_static(b"first")).await?;
    let second = store.create(&key, Bytes::from_static(b"second")).await;
    let kept = store.get(&key).await;
    let _ = store.delete(&key).await;
    match (second, kept) {
        (Err(Error::AlreadyExists(_)), Ok(b)) if b.as_ref() == b"first" => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{} does not honour conditional writes (If-None-Match: *); cairn needs them for locks and \
             write-once objects. Use --unsafe-no-conditional-writes only with a single writer.",
            store.url()
        ))),
    }
}
