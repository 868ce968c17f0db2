//! The merged index's entries: every (blob id, location) of the repository, sorted by id.
//!
//! While the entries fit the index's share of the memory budget they stay in memory (a
//! sorted array with a 64k fan-out table, as before). Past it they go to local disk: the
//! builder sorts budget-sized runs and writes each to a file, and `finish` merges the runs
//! into one table file of fixed-size records. In memory then stay only the fence pointers,
//! 8 bytes per block of [`BLOCK`] records (~0.1 B per blob), so a job's memory no longer
//! grows with the bucket: 20M blobs keep 2 MB of fences, 1B blobs 98 MB (ARCHITECTURE.md
//! has the arithmetic). A lookup reads one block (one 4 KiB page) with `pread`; the kernel's
//! page cache keeps the hot blocks, and it is reclaimable, unlike the heap.
//!
//! Every file is unlinked as soon as it is created: nothing is left behind by a crash or a
//! SIGKILL, no other process can open it, and a stale file can never be trusted, because
//! there is none. (The table is rebuilt from the index objects each run: one GET per index
//! object, as before.)
//!
//! ```text
//! record = id:[32] pack:u32le offset:u32le length:u32le raw_len:u32le flags:u8 kind:u8
//! table  = (record{81} zero:[46])* record{1..81}      (run files: record*, no padding)
//! ```

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ids::BlobId;
use super::index::Location;
use super::pack::BlobKind;
use crate::{Error, Result};

/// Bytes of one record in a run or table file.
pub const RECORD: usize = 32 + 4 * 4 + 1 + 1;
/// Records per block: one block, one page of the table file, is read per lookup.
pub const BLOCK: usize = 81;
/// Bytes per block in the table file: 81 records and 46 bytes of zero padding, so that a
/// lookup touches one page of the page cache, not two.
pub const BLOCK_BYTES: usize = 4096;

/// Where record `i` starts in a table file.
fn offset(i: usize) -> u64 {
    (i / BLOCK * BLOCK_BYTES + i % BLOCK * RECORD) as u64
}

/// Bytes of a table file of `len` records (no padding after the last).
fn table_bytes(len: usize) -> u64 {
    if len == 0 { 0 } else { offset(len - 1) + RECORD as u64 }
}
/// Bytes one entry takes in memory (id and location, as laid out in the array).
pub const IN_MEMORY: usize = std::mem::size_of::<(BlobId, Location)>();
/// Read buffer per run while merging: many runs merge in little memory.
const MERGE_BUFFER: usize = 64 << 10;

const FANOUT_LEN: usize = (1 << 16) + 1;

/// How much memory the index's entries may take before they go to disk, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBudget {
    /// Bytes of entries kept in memory; past this, sorted runs go to `dir`.
    pub memory: usize,
    /// Directory for run and table files (the pod's `emptyDir`, `--cache-dir`).
    pub dir: PathBuf,
    /// `dir` is a default nobody chose: if it cannot be written (a read-only root
    /// filesystem without an `emptyDir`), keep the entries in memory, with a warning, as
    /// before budgets existed. A directory given explicitly that fails is an error.
    pub fallback_to_memory: bool,
}

/// The index's entries get this fraction (1/N) of a run's memory budget; the rest of the
/// budget is split from the same figure ([`IndexBudget::run_budget`]).
pub const INDEX_SHARE: usize = 4;

impl IndexBudget {
    /// The run's whole memory budget, which pack buffers, the writer's session ids and the
    /// read windows are sized from.
    pub fn run_budget(&self) -> usize {
        self.memory.saturating_mul(INDEX_SHARE)
    }
}

impl Default for IndexBudget {
    fn default() -> Self {
        // 128 MiB: ~2.5M blobs in memory, the index of a 10 GiB volume in 4 KiB pages.
        IndexBudget { memory: 128 << 20, dir: std::env::temp_dir(), fallback_to_memory: true }
    }
}

/// The sorted, deduplicated entries.
#[derive(Debug, Clone)]
pub enum Table {
    Memory {
        entries: Vec<(BlobId, Location)>,
        /// `fanout[p]..fanout[p + 1]`: the entries whose id starts with the two bytes `p`.
        fanout: Vec<u32>,
    },
    Disk(DiskTable),
}

#[derive(Debug, Clone)]
pub struct DiskTable {
    file: Arc<File>,
    len: usize,
    /// The first 8 bytes (big-endian) of each block's first id.
    fences: Vec<u64>,
    dir: PathBuf,
}

impl Default for Table {
    fn default() -> Self {
        Table::Memory { entries: Vec::new(), fanout: Vec::new() }
    }
}

fn prefix(id: &BlobId) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().unwrap_or_default())
}

fn encode(id: &BlobId, loc: &Location, out: &mut [u8]) {
    out[..32].copy_from_slice(&id.0);
    out[32..36].copy_from_slice(&loc.pack.to_le_bytes());
    out[36..40].copy_from_slice(&loc.offset.to_le_bytes());
    out[40..44].copy_from_slice(&loc.length.to_le_bytes());
    out[44..48].copy_from_slice(&loc.raw_len.to_le_bytes());
    out[48] = loc.flags;
    out[49] = loc.kind as u8;
}

fn decode(rec: &[u8]) -> (BlobId, Location) {
    let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&rec[..32]);
    let loc = Location {
        pack: u32_at(32),
        offset: u32_at(36),
        length: u32_at(40),
        raw_len: u32_at(44),
        flags: rec[48],
        // Only this process wrote the file, from valid kinds.
        kind: if rec[49] == BlobKind::Tree as u8 { BlobKind::Tree } else { BlobKind::Data },
    };
    (BlobId(id), loc)
}

/// A full disk is `StorageFull` (exit 1); a directory that is missing, not ours or
/// read-only is the operator's to fix (`Invalid`, exit 2); anything else (EIO, EMFILE)
/// is `Retryable`, so that `check` calls it unreadable, not damage.
fn io_error(dir: &Path, e: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let msg = format!("index cache in {}: {e}", dir.display());
    match e.kind() {
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Error::StorageFull(msg),
        K::NotFound | K::PermissionDenied | K::ReadOnlyFilesystem | K::NotADirectory => {
            Error::Invalid(msg)
        }
        _ => Error::Retryable(msg),
    }
}

/// A file in `dir` that nobody else can open and that vanishes with its last handle.
fn anonymous_file(dir: &Path) -> Result<File> {
    let name = format!("cairn-index-{}-{:016x}.run", std::process::id(), rand::random::<u64>());
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(dir, &e))?;
    std::fs::remove_file(&path).map_err(|e| io_error(dir, &e))?;
    Ok(file)
}

/// Collects entries, spilling sorted runs to disk past the budget.
#[derive(Debug, Default)]
pub struct Builder {
    budget: IndexBudget,
    buffer: Vec<(BlobId, Location)>,
    runs: Vec<File>,
    /// A finished disk table being extended: merged as one more run.
    base: Option<DiskTable>,
}

impl Builder {
    pub fn new(budget: IndexBudget) -> Builder {
        Builder { budget, ..Default::default() }
    }

    /// Start from a finished table (more packs are being added to it).
    pub fn from_table(budget: IndexBudget, table: Table) -> Builder {
        match table {
            Table::Memory { entries, .. } => {
                Builder { budget, buffer: entries, ..Default::default() }
            }
            Table::Disk(disk) => Builder { budget, base: Some(disk), ..Default::default() },
        }
    }

    pub fn push(&mut self, id: BlobId, loc: Location) -> Result<()> {
        self.buffer.push((id, loc));
        if self.buffer.len() * IN_MEMORY > self.budget.memory.max(IN_MEMORY * BLOCK) {
            match self.spill() {
                Err(Error::Invalid(e)) if self.budget.fallback_to_memory => {
                    tracing::warn!(
                        error = %e,
                        "the index outgrew its memory budget and the default cache directory \
                         cannot be written: keeping it in memory (mount an emptyDir and set \
                         --cache-dir / CAIRN_CACHE_DIR)"
                    );
                    self.budget.memory = usize::MAX;
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buffer.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.pack.cmp(&b.1.pack)));
        let file = anonymous_file(&self.budget.dir)?;
        let mut w = BufWriter::with_capacity(MERGE_BUFFER, file);
        let mut rec = [0u8; RECORD];
        for (id, loc) in &self.buffer {
            encode(id, loc, &mut rec);
            w.write_all(&rec).map_err(|e| io_error(&self.budget.dir, &e))?;
        }
        let file = w.into_inner().map_err(|e| io_error(&self.budget.dir, e.error()))?;
        self.runs.push(file);
        self.buffer.clear();
        Ok(())
    }

    /// Sort and deduplicate. Of several copies of a blob the one `rank` orders first is
    /// kept (prune's marked packs rank last).
    pub fn finish(mut self, rank: impl Fn(u32) -> (bool, u32)) -> Result<Table> {
        let by = |a: &(BlobId, Location), b: &(BlobId, Location)| {
            a.0.cmp(&b.0).then_with(|| rank(a.1.pack).cmp(&rank(b.1.pack)))
        };
        if self.runs.is_empty() && self.base.is_none() {
            let mut entries = std::mem::take(&mut self.buffer);
            entries.sort_unstable_by(by);
            entries.dedup_by(|a, b| a.0 == b.0);
            entries.shrink_to_fit();
            let fanout = fanout(&entries);
            return Ok(Table::Memory { entries, fanout });
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        self.merge(rank)
    }

    fn merge(self, rank: impl Fn(u32) -> (bool, u32)) -> Result<Table> {
        let dir = self.budget.dir.clone();
        let open_run = |mut f: File| -> Result<Source> {
            f.seek(SeekFrom::Start(0)).map_err(|e| io_error(&dir, &e))?;
            Ok(RunReader::new(Box::new(BufReader::with_capacity(MERGE_BUFFER, f)), false))
        };
        // At most MAX_FAN_IN runs merge at once (open files and read buffers are per run):
        // more are first merged in groups into longer runs.
        let mut runs = self.runs;
        while runs.len() + usize::from(self.base.is_some()) > MAX_FAN_IN {
            let group: Vec<File> = runs.drain(..MAX_FAN_IN.min(runs.len())).collect();
            let sources = group.into_iter().map(open_run).collect::<Result<Vec<_>>>()?;
            let mut w = BufWriter::with_capacity(MERGE_BUFFER, anonymous_file(&dir)?);
            let mut rec = [0u8; RECORD];
            merge_sources(sources, &rank, &dir, |id, loc| {
                encode(id, loc, &mut rec);
                w.write_all(&rec)
            })?;
            runs.push(w.into_inner().map_err(|e| io_error(&dir, e.error()))?);
        }
        let mut sources = runs.into_iter().map(open_run).collect::<Result<Vec<_>>>()?;
        if let Some(base) = &self.base {
            let mut f = base.file.try_clone().map_err(|e| io_error(&dir, &e))?;
            f.seek(SeekFrom::Start(0)).map_err(|e| io_error(&dir, &e))?;
            let limited = Read::take(f, table_bytes(base.len));
            let reader = BufReader::with_capacity(MERGE_BUFFER, limited);
            sources.push(RunReader::new(Box::new(reader), true));
        }
        let mut w = BufWriter::with_capacity(MERGE_BUFFER, anonymous_file(&dir)?);
        let mut fences = Vec::new();
        let mut len = 0usize;
        let mut rec = [0u8; RECORD];
        merge_sources(sources, &rank, &dir, |id, loc| {
            if len.is_multiple_of(BLOCK) {
                if len > 0 {
                    w.write_all(&[0u8; BLOCK_BYTES - BLOCK * RECORD])?;
                }
                fences.push(prefix(id));
            }
            encode(id, loc, &mut rec);
            len += 1;
            w.write_all(&rec)
        })?;
        let file = w.into_inner().map_err(|e| io_error(&dir, e.error()))?;
        fences.shrink_to_fit();
        Ok(Table::Disk(DiskTable { file: Arc::new(file), len, fences, dir }))
    }
}

type Source = RunReader<Box<dyn Read>>;

/// Runs merged at once: 64 files and 4 MiB of read buffers.
const MAX_FAN_IN: usize = 64;

/// K-way merge of sorted sources, each id once: of its copies, the best-ranked.
fn merge_sources(
    mut sources: Vec<Source>,
    rank: &impl Fn(u32) -> (bool, u32),
    dir: &Path,
    mut emit: impl FnMut(&BlobId, &Location) -> std::io::Result<()>,
) -> Result<()> {
    // Min-heap on (id, rank, source).
    let mut heap = BinaryHeap::new();
    for (i, s) in sources.iter_mut().enumerate() {
        if let Some((id, loc)) = s.next(dir)? {
            heap.push(std::cmp::Reverse((id, rank(loc.pack), i, Key(loc))));
        }
    }
    while let Some(std::cmp::Reverse((id, mut best, i, Key(mut loc)))) = heap.pop() {
        if let Some((nid, nloc)) = sources[i].next(dir)? {
            heap.push(std::cmp::Reverse((nid, rank(nloc.pack), i, Key(nloc))));
        }
        // Every copy of this id, from every run (a run sorted before the marks were known
        // holds its copies in pack order): keep the best-ranked one.
        while let Some(std::cmp::Reverse((next, r, j, Key(l)))) = heap.peek().copied() {
            if next != id {
                break;
            }
            heap.pop();
            if r < best {
                (best, loc) = (r, l);
            }
            if let Some((nid, nloc)) = sources[j].next(dir)? {
                heap.push(std::cmp::Reverse((nid, rank(nloc.pack), j, Key(nloc))));
            }
        }
        emit(&id, &loc).map_err(|e| io_error(dir, &e))?;
    }
    Ok(())
}

/// A location carried through the heap; ordering is decided by the fields before it.
#[derive(Debug, Clone, Copy)]
struct Key(Location);
impl PartialEq for Key {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Reads a run file, or a table file (`padded`: blocks of [`BLOCK`] records).
struct RunReader<R> {
    inner: R,
    padded: bool,
    read: usize,
}

impl<R: Read> RunReader<R> {
    fn new(inner: R, padded: bool) -> Self {
        RunReader { inner, padded, read: 0 }
    }

    fn next(&mut self, dir: &Path) -> Result<Option<(BlobId, Location)>> {
        if self.padded && self.read > 0 && self.read.is_multiple_of(BLOCK) {
            let mut pad = [0u8; BLOCK_BYTES - BLOCK * RECORD];
            match self.inner.read_exact(&mut pad) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(io_error(dir, &e)),
            }
        }
        self.read += 1;
        let mut rec = [0u8; RECORD];
        match self.inner.read_exact(&mut rec) {
            Ok(()) => Ok(Some(decode(&rec))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_error(dir, &e)),
        }
    }
}

/// The fan-out table of sorted entries.
fn fanout(entries: &[(BlobId, Location)]) -> Vec<u32> {
    let mut table = vec![0u32; FANOUT_LEN];
    for (id, _) in entries {
        table[usize::from(u16::from_be_bytes([id.0[0], id.0[1]])) + 1] += 1;
    }
    for p in 1..FANOUT_LEN {
        table[p] += table[p - 1];
    }
    table
}

impl Table {
    pub fn len(&self) -> usize {
        match self {
            Table::Memory { entries, .. } => entries.len(),
            Table::Disk(d) => d.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the entries live on local disk.
    pub fn on_disk(&self) -> bool {
        matches!(self, Table::Disk(_))
    }

    /// Bytes of memory the table holds (entries or fences).
    pub fn memory(&self) -> usize {
        match self {
            Table::Memory { entries, fanout } => entries.capacity() * IN_MEMORY + fanout.len() * 4,
            Table::Disk(d) => d.fences.capacity() * 8,
        }
    }

    /// Position and location of a blob.
    pub fn find(&self, id: &BlobId) -> Result<Option<(usize, Location)>> {
        match self {
            Table::Memory { entries, fanout } => {
                let (start, end) = match fanout.len() {
                    FANOUT_LEN => {
                        let p = usize::from(u16::from_be_bytes([id.0[0], id.0[1]]));
                        (fanout[p] as usize, fanout[p + 1] as usize)
                    }
                    _ => (0, entries.len()),
                };
                Ok(entries[start..end]
                    .binary_search_by(|e| e.0.cmp(id))
                    .ok()
                    .map(|i| (start + i, entries[start + i].1)))
            }
            Table::Disk(d) => d.find(id),
        }
    }

    /// The entry at a position.
    pub fn at(&self, i: usize) -> Result<(BlobId, Location)> {
        match self {
            Table::Memory { entries, .. } => Ok(entries[i]),
            Table::Disk(d) => {
                let mut rec = [0u8; RECORD];
                d.file.read_exact_at(&mut rec, offset(i)).map_err(|e| io_error(&d.dir, &e))?;
                Ok(decode(&rec))
            }
        }
    }

    /// Every entry in id order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(BlobId, Location)>> + '_ {
        let mut pos = 0usize;
        let mut buf: Vec<u8> = Vec::new();
        let (mut at, mut chunk) = (0usize, 0usize);
        std::iter::from_fn(move || {
            if pos >= self.len() {
                return None;
            }
            let item = match self {
                Table::Memory { entries, .. } => Ok(entries[pos]),
                Table::Disk(d) => {
                    // Whole blocks at a time: `pos` is at a block's start when refilling.
                    if at == chunk {
                        chunk = (MERGE_BUFFER / BLOCK_BYTES * BLOCK).min(d.len - pos);
                        let bytes = table_bytes(pos + chunk) - offset(pos);
                        buf.resize(bytes as usize, 0);
                        if let Err(e) = d.file.read_exact_at(&mut buf, offset(pos)) {
                            pos = usize::MAX;
                            return Some(Err(io_error(&d.dir, &e)));
                        }
                        at = 0;
                    }
                    let o = offset(at) as usize;
                    let r = decode(&buf[o..o + RECORD]);
                    at += 1;
                    Ok(r)
                }
            };
            pos += 1;
            Some(item)
        })
    }
}

impl DiskTable {
    fn find(&self, id: &BlobId) -> Result<Option<(usize, Location)>> {
        let p = prefix(id);
        // Blocks [0, hi) start at or below the id. It lies in the last of them, unless
        // first ids share its 8-byte prefix: then it may end the block before those.
        let hi = self.fences.partition_point(|f| *f <= p);
        if hi == 0 {
            return Ok(None);
        }
        let lo = self.fences[..hi].partition_point(|f| *f < p).saturating_sub(1);
        let mut buf = [0u8; BLOCK * RECORD];
        for b in (lo..hi).rev() {
            let first = b * BLOCK;
            let n = BLOCK.min(self.len - first);
            let block = &mut buf[..n * RECORD];
            self.file.read_exact_at(block, offset(first)).map_err(|e| io_error(&self.dir, &e))?;
            let (mut a, mut z) = (0, n);
            while a < z {
                let mid = (a + z) / 2;
                match block[mid * RECORD..mid * RECORD + 32].cmp(&id.0[..]) {
                    std::cmp::Ordering::Less => a = mid + 1,
                    std::cmp::Ordering::Greater => z = mid,
                    std::cmp::Ordering::Equal => {
                        let (_, loc) = decode(&block[mid * RECORD..(mid + 1) * RECORD]);
                        return Ok(Some((first + mid, loc)));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: u32, offset: u32) -> Location {
        Location { pack, offset, length: 7, raw_len: 9, flags: 1, kind: BlobKind::Data }
    }

    fn id(i: u64) -> BlobId {
        BlobId(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn build(budget_entries: usize, items: &[(BlobId, Location)], marked: &[u32]) -> Table {
        let dir = std::env::temp_dir();
        let budget =
            IndexBudget { memory: budget_entries * IN_MEMORY, dir, fallback_to_memory: false };
        let mut b = Builder::new(budget);
        for (i, l) in items {
            b.push(*i, *l).unwrap();
        }
        b.finish(|p| (marked.contains(&p), p)).unwrap()
    }

    /// The disk table finds exactly what the memory table finds, at the same positions,
    /// with the same copy chosen among duplicates (unmarked first, then lowest pack).
    #[test]
    fn disk_and_memory_tables_agree() {
        let mut items = Vec::new();
        for i in 0..20_000u64 {
            // Pack 3 holds only second copies: the first copy is in an unmarked pack.
            items.push((id(i), loc([0, 1, 2, 4, 5, 6, 7][(i % 7) as usize], i as u32)));
            if i % 5 == 0 {
                // A second copy in another pack: pack 3 is marked, so it loses when in 3.
                items.push((id(i), loc(3, i as u32 + 1)));
            }
        }
        // Ids sharing a long prefix straddle block boundaries.
        for i in 0..300u64 {
            let mut b = [0xabu8; 32];
            b[24..].copy_from_slice(&i.to_be_bytes());
            items.push((BlobId(b), loc(1, 1_000_000 + i as u32)));
        }
        let memory = build(usize::MAX / IN_MEMORY, &items, &[3]);
        let disk = build(1000, &items, &[3]);
        assert!(!memory.on_disk());
        assert!(disk.on_disk());
        assert_eq!(memory.len(), disk.len());
        assert_eq!(memory.len(), 20_300);
        for (i, (m, d)) in memory.iter().zip(disk.iter()).enumerate() {
            let (m, d) = (m.unwrap(), d.unwrap());
            assert_eq!(m, d, "entry {i}");
            assert_eq!(disk.find(&m.0).unwrap(), Some((i, m.1)), "lookup of entry {i}");
            assert_eq!(disk.at(i).unwrap(), m);
            assert_ne!(m.1.pack, 3, "the copy in the unmarked pack is kept");
        }
        for i in 20_000..21_000u64 {
            assert_eq!(disk.find(&id(i)).unwrap(), None, "blob {i} is not indexed");
        }
        assert_eq!(disk.find(&BlobId([0; 32])).unwrap(), None);
        assert_eq!(disk.find(&BlobId([0xff; 32])).unwrap(), None);
        assert!(disk.memory() * 50 < memory.memory(), "fences are a fraction of the entries");
        // ~250 runs of 82 entries: more than MAX_FAN_IN, merged in two passes.
        let many_runs = build(0, &items, &[3]);
        assert_eq!(many_runs.len(), memory.len());
        for (m, d) in memory.iter().zip(many_runs.iter()) {
            assert_eq!(m.unwrap(), d.unwrap());
        }
    }

    /// A finished disk table extended with more entries merges into a new one.
    #[test]
    fn disk_table_extends() {
        let items: Vec<_> = (0..5_000u64).map(|i| (id(i), loc(1, i as u32))).collect();
        let table = build(500, &items, &[]);
        let budget = IndexBudget {
            memory: 500 * IN_MEMORY,
            dir: std::env::temp_dir(),
            fallback_to_memory: false,
        };
        let mut b = Builder::from_table(budget, table);
        for i in 5_000..6_000u64 {
            b.push(id(i), loc(2, i as u32)).unwrap();
        }
        let t = b.finish(|p| (false, p)).unwrap();
        assert_eq!(t.len(), 6_000);
        for i in (0..6_000u64).step_by(13) {
            assert_eq!(t.find(&id(i)).unwrap().map(|(_, l)| l.offset), Some(i as u32));
        }
    }

    /// No file is left in the cache directory, even while the table is in use.
    #[test]
    fn leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(IndexBudget {
            memory: 100 * IN_MEMORY,
            dir: dir.path().into(),
            fallback_to_memory: false,
        });
        for i in 0..2_000u64 {
            b.push(id(i), loc(0, 0)).unwrap();
        }
        let t = b.finish(|p| (false, p)).unwrap();
        assert!(t.on_disk());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(t.find(&id(7)).unwrap().is_some());
    }

    /// A cache directory given that cannot be written is one error naming it; the default
    /// one falls back to memory.
    #[test]
    fn unwritable_cache_dir_is_named() {
        let budget = IndexBudget {
            memory: 10 * IN_MEMORY,
            dir: "/nonexistent/cairn-cache".into(),
            fallback_to_memory: false,
        };
        let mut b = Builder::new(budget.clone());
        let err = (0..2_000u64).try_for_each(|i| b.push(id(i), loc(0, 0))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cairn-cache"), "{err}");
        assert_eq!(err.exit(), crate::Exit::Usage);
        let mut b = Builder::new(IndexBudget { fallback_to_memory: true, ..budget });
        (0..2_000u64).try_for_each(|i| b.push(id(i), loc(0, 0))).unwrap();
        let t = b.finish(|p| (false, p)).unwrap();
        assert!(!t.on_disk());
        assert_eq!(t.len(), 2_000);
    }

    /// A repository whose index does not fit its budget works as one whose index does:
    /// a second backup of the same files dedups against the disk table, files restore
    /// through it, and check and prune (which walk it) find nothing wrong.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repository_works_with_its_index_on_disk() {
        use crate::repo::check::{CheckOptions, check};
        use crate::repo::prune::{PruneOptions, prune};
        use crate::repo::testutil::{backup, memory_repo_budgeted, noise, packs, read_latest};
        let cache = tempfile::tempdir().unwrap();
        let budget = IndexBudget { memory: 0, dir: cache.path().into(), fallback_to_memory: false };
        let repo = memory_repo_budgeted("index-on-disk", budget).await;
        let files: Vec<(String, Vec<u8>)> =
            (0..600).map(|i| (format!("d{}/f{i}", i % 7), noise(1500))).collect();
        let refs: Vec<(&str, &[u8])> =
            files.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
        backup(&repo, "src", &refs).await;
        let index = repo.index().await.unwrap();
        assert!(index.on_disk(), "600 blobs do not fit a budget of 0");
        assert!(index.len() >= 600);
        let stored = |p: Vec<(String, u64)>| p.iter().map(|(_, s)| s).sum::<u64>();
        let before = stored(packs(&repo).await);
        backup(&repo, "src", &refs).await;
        let added = stored(packs(&repo).await) - before;
        assert!(added < before / 10, "the second backup stored {added} of {before} bytes again");
        for (path, content) in files.iter().step_by(37) {
            assert_eq!(&read_latest(&repo, path).await.unwrap(), content, "{path}");
        }
        let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        prune(repo.clone(), &PruneOptions::default()).await.unwrap();
        let report = check(&repo, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(&read_latest(&repo, &files[5].0).await.unwrap(), &files[5].1);
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "no file left behind");
    }
}
