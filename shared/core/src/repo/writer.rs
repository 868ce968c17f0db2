//! A writing session: blobs in, packs and index objects out.
//!
//! Callers on blocking threads (rayon, `spawn_blocking`) call [`Writer::add_blob`]; compression
//! and sealing happen on the caller's thread into a packer it holds exclusively, so threads
//! never wait on each other for CPU work. Full packs are uploaded by tasks on the Tokio
//! runtime, at most `max_uploads` at once: a caller that would exceed it waits, which bounds
//! memory to (threads + max_uploads) × pack size.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::crypto::{SymKey, wrap_key};
use super::ids::{BlobId, IndexId, PackId};
use super::index::{IndexFile, MasterIndex};
use super::lock::LeaseGuard;
use super::pack::{BlobKind, PackBuilder, PackHeader, compress};
use super::relied::Relied;
use super::{Repository, pack_key};
use crate::{Error, Result};

/// Write an index object after this many packs, so a crash loses little.
const INDEX_EVERY_PACKS: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct AddedBlob {
    pub id: BlobId,
    /// Bytes this blob added to the repository (0 when it was already there).
    pub stored: u64,
}

#[derive(Debug, Default)]
pub struct WriterStats {
    pub new_blobs: AtomicU64,
    pub new_bytes: AtomicU64,
    pub packs: AtomicU64,
}

pub struct Writer {
    repo: Arc<Repository>,
    handle: tokio::runtime::Handle,
    /// The index as loaded when the session began; marked packs are not offered for dedup.
    index: Arc<MasterIndex>,
    /// Blobs (bit per position in `index`) this session reused: a mark written during the
    /// session naming their pack forbids the commit unless another copy exists.
    relied: Vec<AtomicU64>,
    guard: Option<LeaseGuard>,
    known: Mutex<HashSet<BlobId>>,
    idle: Mutex<Vec<PackBuilder>>,
    uploads: Arc<Semaphore>,
    max_uploads: u32,
    done: Arc<Mutex<Vec<(PackId, PackHeader)>>>,
    failed: Arc<Mutex<Option<Error>>>,
    in_flight: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({:?})", self.repo)
    }
}

impl Writer {
    pub(super) fn new(
        repo: Arc<Repository>,
        index: Arc<MasterIndex>,
        handle: tokio::runtime::Handle,
    ) -> Writer {
        let max_uploads = 3;
        let relied = (0..index.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Writer {
            repo,
            handle,
            index,
            relied,
            guard: None,
            known: Mutex::new(HashSet::new()),
            idle: Mutex::new(Vec::new()),
            uploads: Arc::new(Semaphore::new(max_uploads as usize)),
            max_uploads,
            done: Arc::new(Mutex::new(Vec::new())),
            failed: Arc::new(Mutex::new(None)),
            in_flight: Mutex::new(Vec::new()),
            stats: Arc::new(WriterStats::default()),
        }
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Stop writing (every write fails) once this lease can no longer be vouched for.
    pub fn with_guard(mut self, guard: Option<LeaseGuard>) -> Writer {
        self.guard = guard;
        self
    }

    fn check_lease(&self) -> Result<()> {
        self.guard.as_ref().map_or(Ok(()), |g| g.check())
    }

    /// Reuse a stored blob if a live (unmarked) copy exists, and remember that we did.
    fn reuse(&self, id: &BlobId) -> Result<bool> {
        Ok(match self.index.find_live(id)? {
            Some((pos, _)) => {
                self.relied[pos / 64].fetch_or(1 << (pos % 64), Ordering::Relaxed);
                true
            }
            None => false,
        })
    }

    /// The stored blobs this session reused, for the commit's check (FORMAT.md §15.4).
    pub fn relied(&self) -> Relied {
        let bits = self.relied.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        Relied::from_bits(self.index.clone(), bits)
    }

    /// Is this blob already stored, or being stored by this session?
    pub fn is_known(&self, id: &BlobId) -> Result<bool> {
        Ok(self.reuse(id)? || self.known.lock().contains(id))
    }

    /// Store a blob unless the repository has it. Blocking: call from a blocking thread.
    pub fn add_blob(&self, kind: BlobKind, plaintext: &[u8]) -> Result<AddedBlob> {
        let id = self.repo.write_key().id_for(kind, plaintext);
        self.add_blob_with_id(kind, id, plaintext)
    }

    pub fn add_blob_with_id(
        &self,
        kind: BlobKind,
        id: BlobId,
        plaintext: &[u8],
    ) -> Result<AddedBlob> {
        self.add_inner(kind, id, plaintext, false)
    }

    /// Store a blob even if the index has it (prune copying live blobs out of a pack it is
    /// about to condemn). Still stored once per session.
    pub fn add_blob_forced(
        &self,
        kind: BlobKind,
        id: BlobId,
        plaintext: &[u8],
    ) -> Result<AddedBlob> {
        self.add_inner(kind, id, plaintext, true)
    }

    fn add_inner(
        &self,
        kind: BlobKind,
        id: BlobId,
        plaintext: &[u8],
        forced: bool,
    ) -> Result<AddedBlob> {
        if let Some(e) = self.failed.lock().as_ref() {
            return Err(e.in_context("an earlier pack upload failed"));
        }
        self.check_lease()?;
        if (!forced && self.reuse(&id)?) || !self.known.lock().insert(id) {
            return Ok(AddedBlob { id, stored: 0 });
        }
        let (flags, payload) = compress(plaintext, self.repo.config().compression);
        let mut packer = self.take_packer(kind)?;
        let before = packer.len();
        packer.add(id, flags, plaintext.len() as u32, &payload);
        let stored = (packer.len() - before) as u64;
        self.stats.new_blobs.fetch_add(1, Ordering::Relaxed);
        self.stats.new_bytes.fetch_add(stored, Ordering::Relaxed);
        if packer.len() >= self.repo.config().pack_size as usize {
            self.upload(packer)?;
        } else {
            self.idle.lock().push(packer);
        }
        Ok(AddedBlob { id, stored })
    }

    fn take_packer(&self, kind: BlobKind) -> Result<PackBuilder> {
        {
            let mut idle = self.idle.lock();
            if let Some(i) = idle.iter().position(|p| p.kind == kind) {
                return Ok(idle.swap_remove(i));
            }
        }
        let capacity = self.repo.config().pack_size as usize + (1 << 20);
        Ok(match kind {
            BlobKind::Data => {
                let key = SymKey::random();
                let wrapped = wrap_key(self.repo.data_recipient(), &key)?;
                PackBuilder::new(kind, key, wrapped, capacity)
            }
            BlobKind::Tree => {
                PackBuilder::new(kind, self.repo.meta_key().clone(), Vec::new(), 1 << 20)
            }
        })
    }

    /// Hand a full pack to an upload task; waits while `max_uploads` are in flight.
    fn upload(&self, packer: PackBuilder) -> Result<()> {
        let (id, bytes, header) = packer.finish(self.repo.meta_key());
        let permit = self
            .handle
            .block_on(self.uploads.clone().acquire_owned())
            .map_err(|_| Error::Retryable("upload queue closed".into()))?;
        let store = self.repo.store().clone();
        let done = self.done.clone();
        let failed = self.failed.clone();
        let stats = self.stats.clone();
        let task = self.handle.spawn(async move {
            let _permit = permit;
            let key = pack_key(&id);
            match store.create(&key, Bytes::from(bytes)).await {
                Ok(()) => {
                    stats.packs.fetch_add(1, Ordering::Relaxed);
                    done.lock().push((id, header));
                }
                Err(e) => {
                    tracing::error!(pack = %id.short(), error = %e, "pack upload failed");
                    failed.lock().get_or_insert(e);
                }
            }
        });
        let mut in_flight = self.in_flight.lock();
        in_flight.retain(|t| !t.is_finished());
        in_flight.push(task);
        drop(in_flight);
        if self.done.lock().len() >= INDEX_EVERY_PACKS {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&self) -> Result<()> {
        let packs = std::mem::take(&mut *self.done.lock());
        if packs.is_empty() {
            return Ok(());
        }
        // An index written after the lease may have lapsed could name packs a prune has
        // meanwhile deleted as unindexed leftovers.
        self.check_lease()?;
        let file = IndexFile { packs };
        let id = IndexId::random();
        let sealed = file.seal(self.repo.meta_key(), &id);
        // Under the lease: an index object landing after it could name packs a prune has
        // meanwhile deleted as unindexed leftovers.
        let store = self.repo.store().under_lease(self.guard.clone());
        self.handle.block_on(async move {
            store.create(&format!("index/{id}"), Bytes::from(sealed)).await
        })
    }

    /// Close every open pack, wait for all uploads, write the index for them. After this
    /// returns Ok, every blob added so far is durable and findable: a snapshot may refer to
    /// it. Blocking.
    pub fn flush(&self) -> Result<()> {
        let open: Vec<PackBuilder> = std::mem::take(&mut *self.idle.lock());
        for p in open.into_iter().filter(|p| !p.is_empty()) {
            self.upload(p)?;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.in_flight.lock());
        for t in tasks {
            self.handle.block_on(t).map_err(|e| Error::Retryable(format!("upload task: {e}")))?;
        }
        // All permits back: nothing is uploading.
        let _all = self
            .handle
            .block_on(self.uploads.acquire_many(self.max_uploads))
            .map_err(|_| Error::Retryable("upload queue closed".into()))?;
        if let Some(e) = self.failed.lock().take() {
            return Err(e);
        }
        self.write_index()
    }
}
