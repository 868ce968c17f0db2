//! Index objects (which pack holds which blob) and the in-memory index readers merge them into.
//!
//! ```text
//! index  = version:u8 count:u32le (pack_id:[32] header_len:u32le header)*     (then sealed)
//! ```
//! `header` is a pack header (see `pack.rs`), so an index can be rebuilt from packs alone.

use std::collections::HashMap;

use super::blob_table::{Builder, IndexBudget, Table};
use super::crypto::{SymKey, domain};
use super::ids::{BlobId, IndexId, PackId};
use super::pack::{BlobKind, PackHeader, Reader};
use crate::{Error, Result};

pub const INDEX_VERSION: u8 = 1;

/// One index object's content: the packs it describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub packs: Vec<(PackId, PackHeader)>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![INDEX_VERSION];
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for (id, header) in &self.packs {
            out.extend_from_slice(&id.0);
            let mut h = Vec::new();
            header.encode(&mut h);
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
            out.extend_from_slice(&h);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<IndexFile> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != INDEX_VERSION {
            return Err(Error::Integrity(format!("index version {version} is not supported")));
        }
        let count = r.u32()? as usize;
        if count > r.remaining() / 36 {
            return Err(Error::Integrity(format!(
                "index claims {count} packs, too many for its size"
            )));
        }
        let mut packs = Vec::with_capacity(count);
        for _ in 0..count {
            let id = PackId(r.bytes(32)?.try_into().expect("32 bytes"));
            let len = r.u32()? as usize;
            let mut hr = Reader::new(r.bytes(len)?);
            let header = PackHeader::decode(&mut hr)?;
            if hr.remaining() != 0 {
                return Err(Error::Integrity(format!(
                    "index: trailing bytes after pack {}",
                    id.short()
                )));
            }
            packs.push((id, header));
        }
        if r.remaining() != 0 {
            return Err(Error::Integrity("index: trailing bytes".into()));
        }
        Ok(IndexFile { packs })
    }

    pub fn seal(&self, meta: &SymKey, id: &IndexId) -> Vec<u8> {
        meta.seal(domain::INDEX, &id.0, &self.encode())
    }

    pub fn open(meta: &SymKey, id: &IndexId, sealed: &[u8]) -> Result<IndexFile> {
        let plain = meta.open(domain::INDEX, &id.0, sealed, &format!("index {}", id.short()))?;
        Self::decode(&plain)
    }
}

/// Where a blob lives. 20 bytes; with its id, 52 per blob in the merged index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub flags: u8,
    pub kind: BlobKind,
}

#[derive(Debug, Clone)]
pub struct PackRecord {
    pub id: PackId,
    pub kind: BlobKind,
    pub wrapped_key: Vec<u8>,
    /// End of the last blob: where the pack body ends (padding and header follow).
    pub body_end: u64,
}

/// The merged index: every blob's location, sorted by id (see [`super::blob_table`]: in
/// memory while it fits the budget, else on local disk with fence pointers in memory), and
/// the packs it names, which stay in memory (per pack, not per blob).
#[derive(Debug, Default)]
pub struct MasterIndex {
    pub packs: Vec<PackRecord>,
    pack_slots: HashMap<PackId, u32>,
    /// Entries added since the last [`MasterIndex::finish`].
    building: Option<Builder>,
    table: Table,
    /// Per pack slot: marked for deletion by prune (FORMAT.md §15). Readers still read such
    /// packs; writers never dedup against them.
    marked: Vec<bool>,
    budget: IndexBudget,
}

/// A copy of the finished index (entries added since the last `finish` are not copied).
impl Clone for MasterIndex {
    fn clone(&self) -> Self {
        debug_assert!(self.building.is_none(), "MasterIndex::finish before clone");
        MasterIndex {
            packs: self.packs.clone(),
            pack_slots: self.pack_slots.clone(),
            building: None,
            table: self.table.clone(),
            marked: self.marked.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl MasterIndex {
    /// An empty index whose entries go to disk past `budget`.
    pub fn new(budget: IndexBudget) -> MasterIndex {
        MasterIndex { budget, ..Default::default() }
    }

    fn builder(&mut self) -> &mut Builder {
        let (budget, table) = (&self.budget, &mut self.table);
        self.building
            .get_or_insert_with(|| Builder::from_table(budget.clone(), std::mem::take(table)))
    }

    /// Add a pack's blobs. Fails only when the local disk for the index cannot be written.
    pub fn add_pack(&mut self, id: PackId, header: &PackHeader) -> Result<()> {
        if self.pack_slots.contains_key(&id) {
            return Ok(());
        }
        let slot = self.packs.len() as u32;
        let body_end = header
            .entries
            .iter()
            .map(|e| u64::from(e.offset) + u64::from(e.length))
            .max()
            .unwrap_or(0);
        self.packs.push(PackRecord {
            id,
            kind: header.kind,
            wrapped_key: header.wrapped_key.clone(),
            body_end,
        });
        self.pack_slots.insert(id, slot);
        self.marked.push(false);
        let builder = self.builder();
        for e in &header.entries {
            builder.push(
                e.id,
                Location {
                    pack: slot,
                    offset: e.offset,
                    length: e.length,
                    raw_len: e.raw_len,
                    flags: e.flags,
                    kind: header.kind,
                },
            )?;
        }
        Ok(())
    }

    /// Mark packs as condemned by prune. Call before [`MasterIndex::finish`], so that of
    /// several copies of a blob the one in an unmarked pack is kept.
    pub fn set_marked(&mut self, packs: &std::collections::HashSet<PackId>) {
        for (slot, record) in self.packs.iter().enumerate() {
            self.marked[slot] = packs.contains(&record.id);
        }
        self.builder();
    }

    /// Sort and drop duplicate blobs (the same blob in two packs: either copy will do, but
    /// a copy in an unmarked pack is preferred). Fails only on the local disk.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(builder) = self.building.take() {
            let marked = &self.marked;
            self.table = builder.finish(|slot| (marked[slot as usize], slot))?;
        }
        Ok(())
    }

    pub fn get(&self, id: &BlobId) -> Result<Option<Location>> {
        Ok(self.find(id)?.map(|(_, l)| l))
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        Ok(self.find(id)?.is_some())
    }

    /// The blob's location if a writer may reuse it: in a pack that is not marked.
    pub fn get_live(&self, id: &BlobId) -> Result<Option<Location>> {
        Ok(self.find_live(id)?.map(|(_, l)| l))
    }

    /// Position and location of a blob a writer may reuse (in an unmarked pack).
    pub fn find_live(&self, id: &BlobId) -> Result<Option<(usize, Location)>> {
        Ok(self.find(id)?.filter(|(_, loc)| !self.marked[loc.pack as usize]))
    }

    /// Position (for per-blob bitmaps, 1 bit per blob) and location of a blob.
    pub fn find(&self, id: &BlobId) -> Result<Option<(usize, Location)>> {
        debug_assert!(self.building.is_none(), "MasterIndex::finish before lookups");
        self.table.find(id)
    }

    /// The blob at a position and where it is.
    pub fn at(&self, i: usize) -> Result<(BlobId, Location)> {
        self.table.at(i)
    }

    /// Whether prune condemned the pack in this slot (readers may read it; writers never
    /// reuse from it).
    pub fn is_marked(&self, slot: u32) -> bool {
        self.marked[slot as usize]
    }

    /// Position of a blob in the sorted entries (for per-blob bitmaps, 1 bit per blob).
    pub fn position(&self, id: &BlobId) -> Result<Option<usize>> {
        Ok(self.find(id)?.map(|(i, _)| i))
    }

    pub fn pack(&self, slot: u32) -> &PackRecord {
        &self.packs[slot as usize]
    }

    pub fn pack_slot(&self, id: &PackId) -> Option<u32> {
        self.pack_slots.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// True when the entries went to local disk (they did not fit the budget).
    pub fn on_disk(&self) -> bool {
        self.table.on_disk()
    }

    /// Bytes of memory the entries (or their fence pointers) hold.
    pub fn memory(&self) -> usize {
        self.table.memory()
    }

    /// Every entry in id order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(BlobId, Location)>> + '_ {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::PackEntry;

    fn header(n: u8) -> PackHeader {
        PackHeader {
            kind: BlobKind::Data,
            wrapped_key: vec![n; 10],
            entries: (0..n)
                .map(|i| PackEntry {
                    id: BlobId([i; 32]),
                    flags: 1,
                    offset: 8 + u32::from(i) * 100,
                    length: 100,
                    raw_len: 200,
                })
                .collect(),
        }
    }

    #[test]
    fn index_round_trip_and_lookup() {
        let file =
            IndexFile { packs: vec![(PackId([1; 32]), header(3)), (PackId([2; 32]), header(5))] };
        let meta = SymKey::random();
        let id = IndexId::random();
        let back = IndexFile::open(&meta, &id, &file.seal(&meta, &id)).unwrap();
        assert_eq!(back, file);
        let mut m = MasterIndex::default();
        for (id, h) in &back.packs {
            m.add_pack(*id, h).unwrap();
        }
        m.finish().unwrap();
        assert_eq!(m.len(), 5);
        let loc = m.get(&BlobId([4; 32])).unwrap().unwrap();
        assert_eq!(m.pack(loc.pack).id, PackId([2; 32]));
        assert!(m.get(&BlobId([9; 32])).unwrap().is_none());
        assert!(IndexFile::decode(&file.encode()[..20]).is_err());
    }

    /// The fan-out table finds every blob among many whose ids share prefixes (and ids at
    /// both ends of the range), and nothing else; adding a pack after `finish` and finishing
    /// again keeps lookups right.
    #[test]
    fn fanout_lookups_find_exactly_the_indexed_blobs() {
        use crate::repo::pack::PackEntry;
        let id_of = |i: u32| {
            let mut b = *blake3::hash(&i.to_le_bytes()).as_bytes();
            if i.is_multiple_of(1000) {
                b[..2].copy_from_slice(if i.is_multiple_of(2000) {
                    &[0, 0]
                } else {
                    &[0xff, 0xff]
                });
            }
            BlobId(b)
        };
        let entries = |range: std::ops::Range<u32>| -> Vec<PackEntry> {
            range
                .map(|i| PackEntry { id: id_of(i), flags: 0, offset: i, length: 1, raw_len: 1 })
                .collect()
        };
        let pack = |entries| PackHeader { kind: BlobKind::Tree, wrapped_key: Vec::new(), entries };
        let mut m = MasterIndex::default();
        m.add_pack(PackId([1; 32]), &pack(entries(0..100_000))).unwrap();
        m.finish().unwrap();
        for i in (0..100_000).step_by(7).chain([0, 1000, 2000, 99_000]) {
            assert_eq!(m.get(&id_of(i)).unwrap().map(|l| l.offset), Some(i), "blob {i}");
        }
        for i in 100_000..100_500 {
            assert!(m.get(&id_of(i)).unwrap().is_none(), "blob {i} is not indexed");
        }
        m.add_pack(PackId([2; 32]), &pack(entries(100_000..100_500))).unwrap();
        m.finish().unwrap();
        assert_eq!(m.get(&id_of(100_499)).unwrap().map(|l| l.offset), Some(100_499));
        assert_eq!(&m.at(0).unwrap().0.0[..2], &[0, 0], "0x0000 prefixes sort first");
        assert_eq!(&m.at(m.len() - 1).unwrap().0.0[..2], &[0xff, 0xff], "0xffff prefixes last");
    }

    mod props {
        use super::*;
        use crate::repo::pack::PackEntry;
        use proptest::prelude::*;

        fn header() -> impl Strategy<Value = PackHeader> {
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(
                    (any::<[u8; 32]>(), any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()),
                    0..8,
                ),
            )
                .prop_map(|(data, key, entries)| PackHeader {
                    kind: if data { BlobKind::Data } else { BlobKind::Tree },
                    wrapped_key: if data { key } else { Vec::new() },
                    entries: entries
                        .into_iter()
                        .map(|(id, zstd, offset, length, raw_len)| PackEntry {
                            id: BlobId(id),
                            flags: if zstd { crate::repo::pack::FLAG_ZSTD } else { 0 },
                            offset,
                            length,
                            raw_len,
                        })
                        .collect(),
                })
        }

        proptest! {
            /// Index objects round-trip through their encoding and their seal; a flipped
            /// byte of the sealed form never opens.
            #[test]
            fn index_objects_round_trip(
                packs in proptest::collection::vec((any::<[u8; 32]>(), header()), 0..5),
                flip in any::<prop::sample::Index>(),
            ) {
                let file = IndexFile {
                    packs: packs.into_iter().map(|(id, h)| (PackId(id), h)).collect(),
                };
                prop_assert_eq!(&IndexFile::decode(&file.encode()).unwrap(), &file);
                let key = SymKey::random();
                let id = IndexId::random();
                let mut sealed = file.seal(&key, &id);
                prop_assert_eq!(&IndexFile::open(&key, &id, &sealed).unwrap(), &file);
                let i = flip.index(sealed.len());
                sealed[i] ^= 1;
                prop_assert!(IndexFile::open(&key, &id, &sealed).is_err());
            }
        }
    }
}
