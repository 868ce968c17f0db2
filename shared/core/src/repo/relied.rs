//! The stored blobs a writing session reused instead of storing again, and the commit-time
//! question about them: does every one still have a copy a prune will not delete
//! (FORMAT.md §15.4)?
//!
//! One bit per position of the index the session deduplicated against: 0.125 B per stored
//! blob, whatever the session reused. A list of `(blob, pack)` pairs would be 64 B per reused
//! blob, 1.6 GB for an incremental backup of a 100 GiB volume in 4 KiB pages. Blob ids and
//! packs are looked up in the index only when a prune changed something during the session:
//! one at a time while the set bits are few, else by one pass over the index in id order,
//! which on a disk table reads it sequentially instead of one page per blob.

use std::collections::HashSet;
use std::sync::Arc;

use super::ids::{BlobId, PackId};
use super::index::{Location, MasterIndex};
use crate::Result;

/// Below one set bit per this many entries, blobs are looked up one by one; above, the
/// index is read in order. A disk table block holds 81 entries: a lookup reads a whole block.
const SCAN_RATIO: usize = 64;

/// Reused blobs, as positions in the index of the session that reused them.
#[derive(Debug, Clone)]
pub struct Relied {
    index: Arc<MasterIndex>,
    bits: Vec<u64>,
}

impl Relied {
    /// No blob of `index` relied on yet.
    pub fn new(index: Arc<MasterIndex>) -> Relied {
        let bits = vec![0; index.len().div_ceil(64)];
        Relied { index, bits }
    }

    pub(super) fn from_bits(index: Arc<MasterIndex>, bits: Vec<u64>) -> Relied {
        debug_assert_eq!(bits.len(), index.len().div_ceil(64));
        Relied { index, bits }
    }

    pub fn insert(&mut self, position: usize) {
        self.bits[position / 64] |= 1 << (position % 64);
    }

    pub fn contains(&self, position: usize) -> bool {
        self.bits.get(position / 64).is_some_and(|w| w >> (position % 64) & 1 == 1)
    }

    /// Number of blobs relied on.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// How many relied blobs the index places in one of `packs`.
    pub fn in_packs(&self, packs: &HashSet<PackId>) -> Result<usize> {
        let slots: HashSet<u32> = packs.iter().filter_map(|p| self.index.pack_slot(p)).collect();
        if slots.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        self.for_each(|_, _, loc| {
            n += usize::from(slots.contains(&loc.pack));
            Ok(())
        })?;
        Ok(n)
    }

    /// The same blobs as positions in `newer` (an index loaded later), each at the copy a
    /// writer may still reuse; and how many have no such copy there (lost to a prune).
    pub fn rebase(&self, newer: Arc<MasterIndex>) -> Result<(Relied, usize)> {
        let mut out = Relied::new(newer.clone());
        let mut lost = 0usize;
        if self.sparse() {
            self.for_each(|_, id, _| {
                match newer.find_live(&id)? {
                    Some((pos, _)) => out.insert(pos),
                    None => lost += 1,
                }
                Ok(())
            })?;
        } else {
            // Both indexes are in id order: one merge pass.
            let mut later = newer.iter().enumerate();
            let mut next = move || -> Result<Option<(usize, BlobId, Location)>> {
                later.next().map(|(pos, r)| r.map(|(id, loc)| (pos, id, loc))).transpose()
            };
            let mut current = next()?;
            self.for_each(|_, id, _| {
                while let Some((_, other, _)) = current
                    && other < id
                {
                    current = next()?;
                }
                match current {
                    Some((pos, other, loc)) if other == id && !newer.is_marked(loc.pack) => {
                        out.insert(pos)
                    }
                    _ => lost += 1,
                }
                Ok(())
            })?;
        }
        Ok((out, lost))
    }

    fn sparse(&self) -> bool {
        self.len().saturating_mul(SCAN_RATIO) < self.index.len()
    }

    /// Each relied blob, in id order: its position, id and location.
    fn for_each(&self, mut f: impl FnMut(usize, BlobId, Location) -> Result<()>) -> Result<()> {
        if self.sparse() {
            for (word, bits) in self.bits.iter().enumerate() {
                let mut b = *bits;
                while b != 0 {
                    let pos = word * 64 + b.trailing_zeros() as usize;
                    let (id, loc) = self.index.at(pos)?;
                    f(pos, id, loc)?;
                    b &= b - 1;
                }
            }
            return Ok(());
        }
        for (pos, entry) in self.index.iter().enumerate() {
            let (id, loc) = entry?;
            if self.contains(pos) {
                f(pos, id, loc)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob_table::IndexBudget;
    use crate::repo::pack::{BlobKind, PackEntry, PackHeader};

    fn blob(n: u32) -> BlobId {
        BlobId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn pack(blobs: impl Iterator<Item = u32>) -> PackHeader {
        PackHeader {
            kind: BlobKind::Data,
            wrapped_key: vec![1; 10],
            entries: blobs
                .enumerate()
                .map(|(i, n)| PackEntry {
                    id: blob(n),
                    flags: 0,
                    offset: 8 + i as u32 * 10,
                    length: 10,
                    raw_len: 10,
                })
                .collect(),
        }
    }

    /// Packs 0..10 of 100 blobs each (`packs[p]` holds blobs 100p..100p+100), and an index of
    /// those given, with `marked` condemned.
    fn index(disk: bool, packs: &[(u8, PackHeader)], marked: &[u8]) -> Arc<MasterIndex> {
        let memory = if disk { 1000 } else { 64 << 20 };
        let dir = std::env::temp_dir();
        let mut m = MasterIndex::new(IndexBudget { memory, dir, fallback_to_memory: false });
        for (p, h) in packs {
            m.add_pack(PackId([*p; 32]), h).unwrap();
        }
        m.set_marked(&marked.iter().map(|p| PackId([*p; 32])).collect());
        m.finish().unwrap();
        assert_eq!(m.on_disk(), disk);
        Arc::new(m)
    }

    /// Counting the reused blobs in condemned packs, and following them into a later index
    /// (a pack condemned but copied elsewhere, a pack gone with its index object), give what
    /// one lookup per blob gives: with few blobs (looked up one by one) and many (one pass),
    /// with the index in memory and on disk.
    #[test]
    fn relied_blobs_are_followed_into_a_later_index() {
        let packs: Vec<(u8, PackHeader)> =
            (0..10u8).map(|p| (p, pack(u32::from(p) * 100..u32::from(p) * 100 + 100))).collect();
        for disk in [false, true] {
            let old = index(disk, &packs, &[]);
            // Later: pack 3 condemned, its even blobs copied to pack 10; pack 5 gone.
            let mut later: Vec<(u8, PackHeader)> =
                packs.iter().filter(|(p, _)| *p != 5).cloned().collect();
            later.push((10, pack((300..400).step_by(2))));
            let new = index(disk, &later, &[3]);
            let few: Vec<usize> = [0, 150, 300, 301, 500, 777, 999]
                .iter()
                .map(|&n| old.position(&blob(n)).unwrap().unwrap())
                .collect();
            let many: Vec<usize> = (0..old.len()).step_by(2).collect();
            for chosen in [few, many] {
                let mut relied = Relied::new(old.clone());
                for &pos in &chosen {
                    relied.insert(pos);
                }
                assert_eq!(relied.len(), chosen.len());
                assert_eq!(relied.sparse(), chosen.len() < 10, "both strategies are exercised");

                let in_pack = |p: u8| {
                    chosen
                        .iter()
                        .filter(|&&pos| old.pack(old.at(pos).unwrap().1.pack).id == PackId([p; 32]))
                        .count()
                };
                let condemned: HashSet<PackId> = [PackId([3; 32]), PackId([5; 32])].into();
                assert_eq!(relied.in_packs(&condemned).unwrap(), in_pack(3) + in_pack(5));
                assert!(in_pack(3) > 0 && in_pack(5) > 0);
                let unknown: HashSet<PackId> = [PackId([99; 32])].into();
                assert_eq!(relied.in_packs(&unknown).unwrap(), 0);

                let (rebased, lost) = relied.rebase(new.clone()).unwrap();
                let mut want = Vec::new();
                let mut want_lost = 0;
                for &pos in &chosen {
                    match new.find_live(&old.at(pos).unwrap().0).unwrap() {
                        Some((p, _)) => want.push(p),
                        None => want_lost += 1,
                    }
                }
                want.sort_unstable();
                let got: Vec<usize> = (0..new.len()).filter(|&p| rebased.contains(p)).collect();
                assert_eq!(got, want, "{} blobs, disk {disk}", chosen.len());
                assert_eq!(lost, want_lost);
                // Pack 5's blobs and pack 3's odd ones have no live copy left.
                assert!(lost > 0 && lost < chosen.len());
            }
        }
    }
}
