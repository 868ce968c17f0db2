//! Index objects (which pack holds which blob) and the in-memory index readers merge them into.
//!
//! ```text
//! index  = version:u8 count:u32le (pack_id:[32] header_len:u32le header)*     (then sealed)
//! ```
//! `header` is a pack header (see `pack.rs`), so an index can be rebuilt from packs alone.

use std::collections::HashMap;

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

const FANOUT_LEN: usize = (1 << 16) + 1;

/// The fan-out table of sorted entries (see `MasterIndex::fanout`).
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

/// The merged index: a sorted array of (blob id, location), binary-searched.
#[derive(Debug, Clone)]
pub struct MasterIndex {
    pub packs: Vec<PackRecord>,
    pack_slots: HashMap<PackId, u32>,
    entries: Vec<(BlobId, Location)>,
    sorted: bool,
    /// `fanout[p]..fanout[p + 1]`: the entries whose id starts with the two bytes `p`. Ids
    /// are keyed hashes, spread evenly: a lookup searches ~n/65536 entries, not n (a
    /// restore of a database in 4 KiB pages looks up every page).
    fanout: Vec<u32>,
    /// Per pack slot: marked for deletion by prune (FORMAT.md §15). Readers still read such
    /// packs; writers never dedup against them.
    marked: Vec<bool>,
}

impl Default for MasterIndex {
    fn default() -> Self {
        MasterIndex {
            packs: Vec::new(),
            pack_slots: HashMap::new(),
            entries: Vec::new(),
            sorted: true,
            fanout: Vec::new(),
            marked: Vec::new(),
        }
    }
}

impl MasterIndex {
    pub fn add_pack(&mut self, id: PackId, header: &PackHeader) {
        if self.pack_slots.contains_key(&id) {
            return;
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
        for e in &header.entries {
            self.entries.push((
                e.id,
                Location {
                    pack: slot,
                    offset: e.offset,
                    length: e.length,
                    raw_len: e.raw_len,
                    flags: e.flags,
                    kind: header.kind,
                },
            ));
        }
        self.sorted = false;
        self.fanout.clear();
    }

    /// Mark packs as condemned by prune. Call before [`MasterIndex::finish`], so that of
    /// several copies of a blob the one in an unmarked pack is kept.
    pub fn set_marked(&mut self, packs: &std::collections::HashSet<PackId>) {
        for (slot, record) in self.packs.iter().enumerate() {
            self.marked[slot] = packs.contains(&record.id);
        }
        self.sorted = false;
        self.fanout.clear();
    }

    /// Sort and drop duplicate blobs (the same blob in two packs: either copy will do, but
    /// a copy in an unmarked pack is preferred).
    pub fn finish(&mut self) {
        if !self.sorted {
            let marked = &self.marked;
            self.entries.sort_unstable_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(marked[a.1.pack as usize].cmp(&marked[b.1.pack as usize]))
                    .then(a.1.pack.cmp(&b.1.pack))
            });
            self.entries.dedup_by(|a, b| a.0 == b.0);
            self.entries.shrink_to_fit();
            self.sorted = true;
            self.fanout = fanout(&self.entries);
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<Location> {
        self.position(id).map(|i| self.entries[i].1)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.get(id).is_some()
    }

    /// The blob's location if a writer may reuse it: in a pack that is not marked.
    pub fn get_live(&self, id: &BlobId) -> Option<Location> {
        self.get(id).filter(|l| !self.marked[l.pack as usize])
    }

    /// Position and location of a blob a writer may reuse (in an unmarked pack).
    pub fn find_live(&self, id: &BlobId) -> Option<(usize, Location)> {
        let i = self.position(id)?;
        let loc = self.entries[i].1;
        (!self.marked[loc.pack as usize]).then_some((i, loc))
    }

    /// The blob at a position and the pack holding it.
    pub fn entry(&self, i: usize) -> (BlobId, PackId) {
        let (id, loc) = self.entries[i];
        (id, self.packs[loc.pack as usize].id)
    }

    /// Position of a blob in the sorted entries (for per-blob bitmaps, 1 bit per blob).
    pub fn position(&self, id: &BlobId) -> Option<usize> {
        debug_assert!(self.sorted, "MasterIndex::finish before lookups");
        let (start, end) = match self.fanout.len() {
            FANOUT_LEN => {
                let p = usize::from(u16::from_be_bytes([id.0[0], id.0[1]]));
                (self.fanout[p] as usize, self.fanout[p + 1] as usize)
            }
            _ => (0, self.entries.len()),
        };
        self.entries[start..end].binary_search_by(|e| e.0.cmp(id)).ok().map(|i| start + i)
    }

    pub fn pack(&self, slot: u32) -> &PackRecord {
        &self.packs[slot as usize]
    }

    pub fn pack_slot(&self, id: &PackId) -> Option<u32> {
        self.pack_slots.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(BlobId, Location)> {
        self.entries.iter()
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
            m.add_pack(*id, h);
        }
        m.finish();
        assert_eq!(m.len(), 5);
        let loc = m.get(&BlobId([4; 32])).unwrap();
        assert_eq!(m.pack(loc.pack).id, PackId([2; 32]));
        assert!(m.get(&BlobId([9; 32])).is_none());
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
        m.add_pack(PackId([1; 32]), &pack(entries(0..100_000)));
        m.finish();
        for i in (0..100_000).step_by(7).chain([0, 1000, 2000, 99_000]) {
            assert_eq!(m.get(&id_of(i)).map(|l| l.offset), Some(i), "blob {i}");
        }
        for i in 100_000..100_500 {
            assert!(m.get(&id_of(i)).is_none(), "blob {i} is not indexed");
        }
        m.add_pack(PackId([2; 32]), &pack(entries(100_000..100_500)));
        m.finish();
        assert_eq!(m.get(&id_of(100_499)).map(|l| l.offset), Some(100_499));
        assert_eq!(&m.entry(0).0.0[..2], &[0, 0], "0x0000 prefixes sort first");
        assert_eq!(&m.entry(m.len() - 1).0.0[..2], &[0xff, 0xff], "0xffff prefixes last");
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
