//! A writing session: blobs in, packs and index objects out.
//!
//! Callers on blocking threads (rayon, `spawn_blocking`) call [`Writer::add_blob`]; compression
//! and sealing happen on the caller's thread into a packer it holds exclusively, so threads
//! never wait on each other for CPU work. Full packs are uploaded by tasks on the Tokio
//! runtime, at most `max_uploads` at once: a caller that would exceed it waits. Data packers
//! open at once are capped too, so that memory is (open packers + uploads) × pack size within
//! half the run's memory budget, however many cores the node has (see [`PackSlots`]).

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

/// Write an index object after this many packs, so a crash loses little...
const INDEX_EVERY_PACKS: usize = 32;
/// ...or this many blobs, so that a reader holds small objects: 32 packs of 4 KiB pages
/// would be 131k entries, ~12 MB sealed.
const INDEX_EVERY_BLOBS: usize = 32 << 10;

/// How many pack buffers a session may hold: data packers being filled, and packs uploading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSlots {
    pub packers: usize,
    pub uploads: usize,
}

impl PackSlots {
    /// Half the run's budget in buffers of a pack's size, at least 2: a third of them (at
    /// most 3) uploading, the rest filled by the threads.
    pub fn for_budget(run_budget: usize, pack_size: usize) -> PackSlots {
        let slots = (run_budget / 2 / (pack_size + (1 << 20))).max(2);
        let uploads = (slots / 3).clamp(1, 3);
        PackSlots { packers: slots - uploads, uploads }
    }
}

/// Blobs this session stored, so that a blob met twice is stored once. Bounded: two
/// generations of at most `cap` ids each; when the newer is full the older is dropped. A
/// blob forgotten that way and met again is stored again: a duplicate copy (prune drops it
/// later), never a lost one, since "known" only ever means "skip storing". Only a first
/// backup larger than the window (at the default budget, millions of blobs) can pay it; the
/// next session dedups against the index.
struct SessionBlobs {
    newer: HashSet<BlobId>,
    older: HashSet<BlobId>,
    cap: usize,
}

impl SessionBlobs {
    /// An eighth of the run's budget for both generations, ~48 B per id.
    fn new(run_budget: usize) -> SessionBlobs {
        let cap = (run_budget / 8 / 2 / 48).max(1024);
        SessionBlobs { newer: HashSet::new(), older: HashSet::new(), cap }
    }

    fn contains(&self, id: &BlobId) -> bool {
        self.newer.contains(id) || self.older.contains(id)
    }

    /// False when the id was known already.
    fn insert(&mut self, id: BlobId) -> bool {
        if self.contains(&id) {
            return false;
        }
        if self.newer.len() >= self.cap {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(id)
    }
}

#[derive(Default)]
struct Packers {
    idle: Vec<PackBuilder>,
    /// Data packers in existence (idle or being filled), not yet handed to an upload.
    open_data: usize,
}

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
    known: Mutex<SessionBlobs>,
    packers: Mutex<Packers>,
    /// Signalled when a packer goes idle or a data packer is handed to an upload.
    freed: parking_lot::Condvar,
    max_packers: usize,
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
        let run_budget = repo.index_budget().run_budget();
        let slots = PackSlots::for_budget(run_budget, repo.config().pack_size as usize);
        let max_uploads = slots.uploads as u32;
        let known = SessionBlobs::new(run_budget);
        let relied = (0..index.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Writer {
            repo,
            handle,
            index,
            relied,
            guard: None,
            known: Mutex::new(known),
            packers: Mutex::new(Packers::default()),
            freed: parking_lot::Condvar::new(),
            max_packers: slots.packers,
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
            self.packers.lock().idle.push(packer);
            self.freed.notify_one();
        }
        Ok(AddedBlob { id, stored })
    }

    fn take_packer(&self, kind: BlobKind) -> Result<PackBuilder> {
        {
            let mut packers = self.packers.lock();
            loop {
                if let Some(i) = packers.idle.iter().position(|p| p.kind == kind) {
                    return Ok(packers.idle.swap_remove(i));
                }
                if kind == BlobKind::Tree {
                    break;
                }
                if packers.open_data < self.max_packers {
                    packers.open_data += 1;
                    break;
                }
                // Every packer is being filled by another thread, which returns it or
                // hands it to an upload without waiting on us. The timeout only re-checks.
                self.freed.wait_for(&mut packers, std::time::Duration::from_secs(1));
                if let Some(e) = self.failed.lock().as_ref() {
                    return Err(e.in_context("an earlier pack upload failed"));
                }
            }
        }
        let capacity = self.repo.config().pack_size as usize + (1 << 20);
        Ok(match kind {
            BlobKind::Data => {
                let key = SymKey::random();
                let wrapped = wrap_key(self.repo.data_recipient(), &key)
                    .inspect_err(|_| self.data_packer_gone())?;
                PackBuilder::new(kind, key, wrapped, capacity)
            }
            BlobKind::Tree => {
                PackBuilder::new(kind, self.repo.meta_key().clone(), Vec::new(), 1 << 20)
            }
        })
    }

    /// A data packer no longer counts against `max_packers`: its bytes are uploading (and
    /// count against `max_uploads`), or it was never made.
    fn data_packer_gone(&self) {
        self.packers.lock().open_data -= 1;
        self.freed.notify_one();
    }

    /// Hand a full pack to an upload task; waits while `max_uploads` are in flight.
    fn upload(&self, packer: PackBuilder) -> Result<()> {
        let kind = packer.kind;
        let (id, bytes, header) = packer.finish(self.repo.meta_key());
        let permit = self
            .handle
            .block_on(self.uploads.clone().acquire_owned())
            .map_err(|_| Error::Retryable("upload queue closed".into()));
        if kind == BlobKind::Data {
            self.data_packer_gone();
        }
        let permit = permit?;
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
        let due = {
            let done = self.done.lock();
            done.len() >= INDEX_EVERY_PACKS
                || done.iter().map(|(_, h)| h.entries.len()).sum::<usize>() >= INDEX_EVERY_BLOBS
        };
        if due {
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
        let open: Vec<PackBuilder> = std::mem::take(&mut self.packers.lock().idle);
        for p in open {
            if !p.is_empty() {
                self.upload(p)?;
            } else if p.kind == BlobKind::Data {
                self.data_packer_gone();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob_table::IndexBudget;
    use crate::repo::testutil::{memory_repo_budgeted, noise};

    #[test]
    fn pack_buffers_follow_the_budget() {
        let mib = 1usize << 20;
        // A 512 MiB limit: budget 384 MiB, 192 MiB of 17 MiB buffers.
        assert_eq!(
            PackSlots::for_budget(384 * mib, 16 * mib),
            PackSlots { packers: 8, uploads: 3 }
        );
        // The 64 MiB floor: one packer being filled, one uploading.
        assert_eq!(PackSlots::for_budget(64 * mib, 16 * mib), PackSlots { packers: 1, uploads: 1 });
        assert_eq!(PackSlots::for_budget(0, 1 << 30), PackSlots { packers: 1, uploads: 1 });
        assert_eq!(PackSlots::for_budget(usize::MAX, mib).uploads, 3);
    }

    #[test]
    fn session_blobs_forget_only_past_two_generations() {
        let mut known = SessionBlobs::new(0);
        let id = |n: u32| BlobId(*blake3::hash(&n.to_le_bytes()).as_bytes());
        let cap = known.cap as u32;
        assert!(known.insert(id(0)));
        assert!(!known.insert(id(0)), "met twice: stored once");
        for n in 1..=cap {
            known.insert(id(n));
        }
        assert!(known.contains(&id(0)), "in the older generation");
        for n in cap + 1..=2 * cap {
            known.insert(id(n));
        }
        assert!(!known.contains(&id(0)), "forgotten: stored again if met again");
        assert!(known.contains(&id(2 * cap)));
        assert!(known.newer.len() + known.older.len() <= 2 * known.cap);
    }

    /// Eight threads writing through a writer allowed one packer and one upload: nobody
    /// waits forever, no pack goes over its buffer count, and every blob is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_threads_share_few_packers() {
        let budget = IndexBudget { memory: 1 << 20, ..IndexBudget::default() };
        let repo = memory_repo_budgeted("packers", budget).await;
        repo.load_index().await.unwrap();
        let index = repo.index().await.unwrap();
        let writer = Arc::new(repo.writer(index, tokio::runtime::Handle::current()));
        assert_eq!(writer.max_packers, 1);
        let w = writer.clone();
        let ids = tokio::task::spawn_blocking(move || {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..8)
                    .map(|_| {
                        let w = &w;
                        scope.spawn(move || {
                            (0..40)
                                .map(|_| w.add_blob(BlobKind::Data, &noise(64 << 10)).unwrap().id)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let ids: Vec<BlobId> =
                    threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
                w.flush().unwrap();
                ids
            })
        })
        .await
        .unwrap();
        assert_eq!(writer.packers.lock().open_data, 0, "every packer uploaded");
        assert!(writer.stats.packs.load(Ordering::Relaxed) >= 15, "20 MiB in 1 MiB packs");
        repo.load_index().await.unwrap();
        let index = repo.index().await.unwrap();
        for id in &ids {
            assert!(index.contains(id).unwrap());
        }
    }
}
