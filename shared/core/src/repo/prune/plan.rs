//! What a prune run does, decided from what it loaded (FORMAT.md §15.5 steps 3 and 4, and
//! whether step 5 compacts): a pure function of [`PruneInputs`] and the options, so that
//! the protocol's promises can be tested without a store. `prune.rs` gathers the inputs
//! and carries the plan out; what it finds meanwhile (index objects that appeared,
//! snapshots committed late, refused deletes) only ever narrows the delete set.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{PruneOptions, PruneReport};
use crate::repo::ids::PackId;
use crate::repo::index::MasterIndex;
use crate::repo::mark::{self, MarkEntry};
use crate::repo::pack::BlobKind;
use crate::repo::storage::Timestamp;

/// More index objects than this are compacted even when no pack is deleted.
pub(super) const COMPACT_ABOVE: usize = 64;

/// One live bit per blob of the merged index, by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LiveSet(Vec<u64>);

impl LiveSet {
    /// No blob live, for an index of `blobs` blobs.
    pub(super) fn new(blobs: usize) -> LiveSet {
        LiveSet(vec![0; blobs.div_ceil(64)])
    }
    pub(super) fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    /// Set; returns whether it was already set.
    pub(super) fn set(&mut self, i: usize) -> bool {
        let was = self.get(i);
        self.0[i / 64] |= 1 << (i % 64);
        was
    }
}

/// A pack object as the store lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackObject {
    pub size: u64,
    /// On the store's clock.
    pub modified: Timestamp,
}

/// Everything prune decides on (FORMAT.md §15.5 steps 1 and 2), as loaded.
#[derive(Debug)]
pub(super) struct PruneInputs {
    /// The store's clock when the run started (the local clock for a dry run).
    pub now: Timestamp,
    /// Snapshot records listed.
    pub snapshots: usize,
    /// Keys of the shared (backup) locks alive.
    pub live_shared: HashSet<String>,
    pub marks: Vec<MarkEntry>,
    /// The index objects loaded, with the packs each lists. The objects themselves are read
    /// again when needed rather than held: memory is the merged index plus a few bits and
    /// words per blob and pack.
    pub index_objects: Vec<(String, Vec<PackId>)>,
    /// Bytes of the blobs of each indexed pack, as the first index object listing it says.
    pub pack_totals: HashMap<PackId, u64>,
    /// Every loaded index object merged, marked packs deprioritised (§15.3): of several
    /// copies of a blob, the canonical one (the copy readers use) is in an unmarked pack
    /// when there is one.
    pub index: Arc<MasterIndex>,
    /// The blobs the listed snapshots reference, by position in `index`.
    pub live: LiveSet,
    /// Bytes of live canonical blobs per pack slot ([`used_per_slot`]): one pass over the
    /// index, made by the I/O side so that the plan reads nothing.
    pub used: Vec<u64>,
    /// The pack listing.
    pub pack_objects: BTreeMap<PackId, PackObject>,
    /// Whether data packs can be read, hence repacked (an identity opened the repository).
    pub can_read_data: bool,
}

impl PruneInputs {
    /// How long ago `t` was, on the run's clock (zero for a time ahead of it).
    fn age(&self, t: Timestamp) -> Duration {
        (self.now - t).to_std().unwrap_or(Duration::ZERO)
    }

    /// Bytes of live canonical blobs per pack slot: a pack with none holds no data any
    /// listed snapshot needs (other copies serve them).
    pub(super) fn used_per_slot(&self) -> &[u64] {
        &self.used
    }
}

pub(super) fn used_per_slot(index: &MasterIndex, live: &LiveSet) -> crate::Result<Vec<u64>> {
    let mut used = vec![0u64; index.packs.len()];
    for (i, entry) in index.iter().enumerate() {
        let (_, loc) = entry?;
        if live.get(i) {
            used[loc.pack as usize] += u64::from(loc.length);
        }
    }
    Ok(used)
}

/// A mark old enough, with no backup it waits for still running (§15.5 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RipeMark {
    pub key: String,
    pub packs: Vec<PackId>,
}

/// A partly used pack whose live blobs are copied to new packs before it is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Repack {
    pub slot: u32,
    pub id: PackId,
    pub kind: BlobKind,
    /// Bytes of its live canonical blobs (what repacking reads and writes again).
    pub used: u64,
    /// Bytes of all its blobs.
    pub total: u64,
    /// The pack object's size.
    pub size: u64,
}

/// What one prune run does, before it does it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PrunePlan {
    pub snapshots: usize,
    pub blobs: usize,
    /// Indexed packs present in the store, and the bytes of their blobs that the listed
    /// snapshots use (canonical copies) and do not.
    pub packs: usize,
    pub used_bytes: u64,
    pub unused_bytes: u64,
    pub index_objects: usize,

    /// Delete phase: marks acted on (removed after the deletes, unless one of their packs'
    /// deletion has to be retried), and marks left for a later run.
    pub ripe_marks: Vec<RipeMark>,
    pub marks_waiting: usize,
    /// Existing packs of ripe marks, with their sizes: deleted once out of the index.
    pub delete: BTreeMap<PackId, u64>,
    /// Packs of ripe marks holding the canonical copy of a referenced blob: kept (their mark
    /// goes all the same).
    pub rescued: BTreeSet<PackId>,

    /// Mark phase: indexed, unmarked packs holding no referenced canonical blob (in index
    /// order), with their sizes.
    pub unused: Vec<(PackId, u64)>,
    /// Unindexed, unmarked packs older than `unindexed_age`, with their sizes.
    pub unindexed: Vec<(PackId, u64)>,
    /// Partly used packs to repack, most wasteful first.
    pub repack: Vec<Repack>,
    /// Partly used data packs not repacked: reading them needs the identity.
    pub repack_skipped_no_identity: usize,

    /// Whether the index objects are rewritten (step 5).
    pub compact: bool,
}

/// Decide a prune run.
pub(super) fn plan(inputs: &PruneInputs, opts: &PruneOptions) -> PrunePlan {
    let used = inputs.used_per_slot();
    let mut plan = PrunePlan {
        snapshots: inputs.snapshots,
        blobs: inputs.index.len(),
        index_objects: inputs.index_objects.len(),
        ..Default::default()
    };
    plan_deletes(inputs, opts, used, &mut plan);
    let partial = plan_marks(inputs, opts, used, &mut plan);
    plan_repack(inputs, opts, partial, &mut plan);
    plan.compact = !plan.delete.is_empty() || inputs.index_objects.len() > COMPACT_ABOVE;
    plan
}

/// Step 3: ripe marks, their existing packs, and which of those are rescued.
fn plan_deletes(inputs: &PruneInputs, opts: &PruneOptions, used: &[u64], plan: &mut PrunePlan) {
    for m in &inputs.marks {
        let waiting_on =
            m.mark.running_backups.iter().filter(|k| inputs.live_shared.contains(*k)).count();
        if inputs.age(m.modified) >= opts.grace && waiting_on == 0 {
            plan.ripe_marks.push(RipeMark { key: m.key.clone(), packs: m.mark.packs.clone() });
        } else {
            plan.marks_waiting += 1;
        }
    }
    for p in plan.ripe_marks.iter().flat_map(|m| &m.packs) {
        let Some(object) = inputs.pack_objects.get(p) else { continue };
        if inputs.index.pack_slot(p).is_some_and(|slot| used[slot as usize] > 0) {
            plan.rescued.insert(*p);
        } else {
            plan.delete.insert(*p, object.size);
        }
    }
}

/// Step 4, but for repacking: the usage totals, the unused and the unindexed packs to mark.
/// Returns the partly used packs, in index order.
fn plan_marks(
    inputs: &PruneInputs,
    opts: &PruneOptions,
    used: &[u64],
    plan: &mut PrunePlan,
) -> Vec<Repack> {
    let marked = mark::marked_packs(&inputs.marks);
    let mut partial = Vec::new();
    for (slot, record) in inputs.index.packs.iter().enumerate() {
        let id = record.id;
        // Indexed but missing: check's business.
        let Some(object) = inputs.pack_objects.get(&id) else { continue };
        let total = inputs.pack_totals.get(&id).copied().unwrap_or(0);
        let used = used[slot].min(total);
        plan.packs += 1;
        plan.used_bytes += used;
        plan.unused_bytes += total - used;
        if marked.contains(&id) {
            continue;
        }
        if used == 0 {
            plan.unused.push((id, object.size));
        } else if used < total {
            let slot = slot as u32;
            partial.push(Repack { slot, id, kind: record.kind, used, total, size: object.size });
        }
    }
    for (id, object) in &inputs.pack_objects {
        if inputs.index.pack_slot(id).is_none()
            && !marked.contains(id)
            && inputs.age(object.modified) >= opts.unindexed_age
        {
            plan.unindexed.push((*id, object.size));
        }
    }
    partial
}

/// Step 4, repacking: the most wasteful packs first, until unused bytes in partly used
/// packs are at most `max_unused` × used bytes, reading at most `max_repack` live bytes.
/// A pack that does not fit in what is left of the budget is passed over for smaller ones.
fn plan_repack(
    inputs: &PruneInputs,
    opts: &PruneOptions,
    mut partial: Vec<Repack>,
    plan: &mut PrunePlan,
) {
    let fraction = |p: &Repack| (p.total - p.used) as f64 / p.total as f64;
    partial.sort_by(|a, b| fraction(b).total_cmp(&fraction(a)));
    let target = (plan.used_bytes as f64 * opts.max_unused) as u64;
    let mut waste = partial.iter().map(|p| p.total - p.used).sum::<u64>();
    let mut budget = opts.max_repack;
    for p in partial {
        if waste <= target {
            break;
        }
        if p.kind == BlobKind::Data && !inputs.can_read_data {
            plan.repack_skipped_no_identity += 1;
            continue;
        }
        if p.used > budget {
            continue;
        }
        budget -= p.used;
        waste -= p.total - p.used;
        plan.repack.push(p);
    }
}

impl PrunePlan {
    /// The packs the new mark names: unused, then unindexed, then repacked ones.
    pub(super) fn condemned(&self) -> Vec<PackId> {
        let unused = self.unused.iter().chain(&self.unindexed).map(|(id, _)| *id);
        unused.chain(self.repack.iter().map(|r| r.id)).collect()
    }

    /// Bytes of the packs the new mark names.
    pub(super) fn condemned_bytes(&self) -> u64 {
        let unused = self.unused.iter().chain(&self.unindexed).map(|(_, size)| size);
        unused.sum::<u64>() + self.repack.iter().map(|r| r.size).sum::<u64>()
    }

    pub(super) fn delete_bytes(&self) -> u64 {
        self.delete.values().sum()
    }

    /// The ripe marks to remove once the deletes are done: those none of whose packs has
    /// to be tried again (`deferred`), so that a later run retries them.
    pub(super) fn marks_to_remove<'a>(
        &'a self,
        deferred: &'a HashSet<PackId>,
    ) -> impl Iterator<Item = &'a RipeMark> + 'a {
        self.ripe_marks.iter().filter(|m| !m.packs.iter().any(|p| deferred.contains(p)))
    }

    /// The report of the plan as decided: what a dry run prints, and where a real run's
    /// report starts.
    pub(super) fn report(&self, dry_run: bool) -> PruneReport {
        PruneReport {
            dry_run,
            snapshots: self.snapshots,
            blobs: self.blobs,
            packs: self.packs,
            used_bytes: self.used_bytes,
            unused_bytes: self.unused_bytes,
            index_objects_before: self.index_objects,
            index_objects_after: self.index_objects,
            deleted_packs: self.delete.len(),
            deleted_bytes: self.delete_bytes(),
            rescued_packs: self.rescued.len(),
            deferred_deletes: 0,
            marks_removed: 0,
            marks_waiting: self.marks_waiting,
            marked_packs: self.unused.len() + self.unindexed.len() + self.repack.len(),
            marked_bytes: self.condemned_bytes(),
            repacked_packs: self.repack.len(),
            repacked_live_bytes: 0,
            repack_skipped_no_identity: self.repack_skipped_no_identity,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::repo::ids::BlobId;
    use crate::repo::mark::{MARK_VERSION, Mark};
    use crate::repo::pack::{PackEntry, PackHeader};

    const HOUR: Duration = Duration::from_secs(3600);
    /// `PruneOptions::default()`: grace 24 h, unindexed packs marked after 1 h, at most 5 %
    /// unused, no repack budget.
    const GRACE: Duration = Duration::from_secs(24 * 3600);

    fn pack_id(n: u8) -> PackId {
        PackId([n; 32])
    }
    fn blob_id(n: u8) -> BlobId {
        BlobId([n; 32])
    }
    fn shared_lock(name: &str) -> String {
        format!("locks/shared-{name}")
    }

    #[derive(Debug, Clone)]
    struct TestPack {
        id: PackId,
        kind: BlobKind,
        /// Blob ids and sealed lengths.
        blobs: Vec<(BlobId, u32)>,
        indexed: bool,
        age: Duration,
    }

    impl TestPack {
        /// The pack object: its blobs and a 100-byte header.
        fn size(&self) -> u64 {
            self.blobs.iter().map(|(_, len)| u64::from(*len)).sum::<u64>() + 100
        }
        fn header(&self) -> PackHeader {
            let mut offset = 8;
            let entries = self.blobs.iter().map(|(id, length)| {
                let e = PackEntry { id: *id, flags: 0, offset, length: *length, raw_len: *length };
                offset += length;
                e
            });
            PackHeader { kind: self.kind, wrapped_key: Vec::new(), entries: entries.collect() }
        }
    }

    #[derive(Debug, Clone)]
    struct TestMark {
        packs: Vec<PackId>,
        age: Duration,
        running_backups: Vec<String>,
    }

    /// A repository as prune loads it, described by hand.
    #[derive(Debug, Clone, Default)]
    struct World {
        packs: Vec<TestPack>,
        marks: Vec<TestMark>,
        live_shared: Vec<String>,
        referenced: Vec<BlobId>,
        no_identity: bool,
        index_objects: usize,
    }

    impl World {
        /// An indexed data pack, written two hours ago, holding blobs `(n, length)`.
        fn pack(self, n: u8, blobs: &[(u8, u32)]) -> World {
            self.pack_of(BlobKind::Data, n, blobs)
        }
        fn pack_of(mut self, kind: BlobKind, n: u8, blobs: &[(u8, u32)]) -> World {
            let blobs = blobs.iter().map(|(b, len)| (blob_id(*b), *len)).collect();
            let age = 2 * HOUR;
            self.packs.push(TestPack { id: pack_id(n), kind, blobs, indexed: true, age });
            self
        }
        /// A pack no index object lists (a crashed writer's, or a running one's).
        fn unindexed(mut self, n: u8, age: Duration) -> World {
            let blobs = vec![(blob_id(n), 1000)];
            self.packs.push(TestPack {
                id: pack_id(n),
                kind: BlobKind::Data,
                blobs,
                indexed: false,
                age,
            });
            self
        }
        fn mark(mut self, packs: &[u8], age: Duration, running: &[&str]) -> World {
            let packs = packs.iter().map(|n| pack_id(*n)).collect();
            let running_backups = running.iter().map(|r| shared_lock(r)).collect();
            self.marks.push(TestMark { packs, age, running_backups });
            self
        }
        /// Blobs the listed snapshots reference.
        fn refer(mut self, blobs: &[u8]) -> World {
            self.referenced.extend(blobs.iter().map(|b| blob_id(*b)));
            self
        }
        fn running(mut self, backup: &str) -> World {
            self.live_shared.push(shared_lock(backup));
            self
        }

        fn inputs(&self) -> PruneInputs {
            let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
            let ago = |age: Duration| now - chrono::Duration::from_std(age).unwrap();
            let marks: Vec<MarkEntry> = (self.marks.iter().enumerate())
                .map(|(i, m)| MarkEntry {
                    key: format!("gc/{i:064x}"),
                    mark: Mark {
                        version: MARK_VERSION,
                        created: String::new(),
                        packs: m.packs.clone(),
                        running_backups: m.running_backups.clone(),
                    },
                    modified: ago(m.age),
                })
                .collect();
            let mut master = MasterIndex::default();
            let mut pack_totals = HashMap::new();
            let mut indexed = Vec::new();
            for p in self.packs.iter().filter(|p| p.indexed) {
                master.add_pack(p.id, &p.header()).unwrap();
                pack_totals.insert(p.id, p.size() - 100);
                indexed.push(p.id);
            }
            master.set_marked(&mark::marked_packs(&marks));
            master.finish().unwrap();
            let mut live = LiveSet::new(master.len());
            for b in &self.referenced {
                live.set(master.position(b).unwrap().expect("a referenced blob is indexed"));
            }
            let used = used_per_slot(&master, &live).unwrap();
            let mut index_objects = vec![("index/0".to_string(), indexed)];
            index_objects.extend((1..self.index_objects).map(|i| (format!("index/{i}"), vec![])));
            let objects = self
                .packs
                .iter()
                .map(|p| (p.id, PackObject { size: p.size(), modified: ago(p.age) }));
            PruneInputs {
                now,
                snapshots: 1,
                live_shared: self.live_shared.iter().cloned().collect(),
                marks,
                index_objects,
                pack_totals,
                index: Arc::new(master),
                live,
                used,
                pack_objects: objects.collect(),
                can_read_data: !self.no_identity,
            }
        }

        fn plan(&self) -> PrunePlan {
            plan(&self.inputs(), &PruneOptions::default())
        }
    }

    fn ids(packs: &[u8]) -> Vec<PackId> {
        packs.iter().map(|n| pack_id(*n)).collect()
    }
    fn deleted(plan: &PrunePlan) -> Vec<PackId> {
        plan.delete.keys().copied().collect()
    }

    #[test]
    fn nothing_is_deleted_before_the_grace_period_has_passed() {
        let young =
            World::default().pack(1, &[(1, 500)]).mark(&[1], GRACE - Duration::from_secs(1), &[]);
        let plan = young.plan();
        assert!(plan.delete.is_empty() && plan.ripe_marks.is_empty() && !plan.compact);
        assert_eq!(plan.marks_waiting, 1);
        // Already marked: not marked again either.
        assert!(plan.condemned().is_empty());

        let ripe = World::default().pack(1, &[(1, 500)]).mark(&[1], GRACE, &[]);
        let plan = ripe.plan();
        assert_eq!(deleted(&plan), ids(&[1]));
        assert_eq!(plan.delete[&pack_id(1)], 600);
        assert_eq!((plan.ripe_marks.len(), plan.marks_waiting, plan.compact), (1, 0, true));
    }

    #[test]
    fn a_backup_running_when_the_mark_was_written_holds_it_past_the_grace_period() {
        let world = World::default().pack(1, &[(1, 500)]).mark(&[1], 3 * GRACE, &["a"]);
        let still_running = world.clone().running("a").plan();
        assert!(still_running.delete.is_empty() && still_running.ripe_marks.is_empty());
        assert_eq!(still_running.marks_waiting, 1);
        // Ended (its lock gone or expired): the mark is ripe. Another backup running is not
        // one the mark waits for.
        assert_eq!(deleted(&world.clone().plan()), ids(&[1]));
        assert_eq!(deleted(&world.running("b").plan()), ids(&[1]));
    }

    #[test]
    fn a_ripe_mark_spares_packs_holding_the_canonical_copy_of_referenced_data() {
        let plan = World::default()
            .pack(1, &[(1, 500), (9, 100)]) // the only copy of blob 1
            .pack(2, &[(2, 500)]) // blob 2 has a copy in an unmarked pack
            .pack(3, &[(2, 500)])
            .mark(&[1, 2, 4], GRACE, &[]) // pack 4 is gone already
            .refer(&[1, 2])
            .plan();
        assert_eq!(deleted(&plan), ids(&[2]));
        assert_eq!(plan.rescued.iter().copied().collect::<Vec<_>>(), ids(&[1]));
        assert_eq!(plan.ripe_marks.len(), 1);
        assert_eq!(plan.ripe_marks[0].packs, ids(&[1, 2, 4]));
        // A rescued pack is not marked again in the same run, partly used or not: its mark
        // goes, and a later run judges it afresh.
        assert!(plan.condemned().is_empty());
    }

    #[test]
    fn unused_packs_are_marked_not_deleted() {
        let plan = World::default().pack(1, &[(1, 500)]).pack(2, &[(2, 700)]).refer(&[1]).plan();
        assert_eq!(plan.unused, [(pack_id(2), 800)]);
        assert!(plan.delete.is_empty() && !plan.compact);
        assert_eq!(plan.condemned(), ids(&[2]));
        let report = plan.report(false);
        assert_eq!((report.marked_packs, report.marked_bytes, report.deleted_packs), (1, 800, 0));
        assert_eq!((report.packs, report.used_bytes, report.unused_bytes), (2, 500, 700));
    }

    #[test]
    fn old_unindexed_packs_are_marked_young_ones_left() {
        let plan = World::default()
            .unindexed(1, 2 * HOUR)
            .unindexed(2, HOUR) // exactly `unindexed_age`
            .unindexed(3, HOUR - Duration::from_secs(1)) // a running writer's, soon indexed
            .unindexed(4, 2 * HOUR)
            .mark(&[4], HOUR, &[]) // marked already
            .plan();
        assert_eq!(plan.unindexed, [(pack_id(1), 1100), (pack_id(2), 1100)]);
        assert!(plan.unused.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.packs, 0);
    }

    /// Partly used data packs of 1000 bytes of blobs each, blob `n` used and `n + 100` not:
    /// 1 wastes 90 %, 2 50 %, 3 20 %, 4 10 % (of a 100-byte pack); 5 is fully used.
    fn partly_used() -> World {
        World::default()
            .pack(1, &[(1, 100), (101, 900)])
            .pack(2, &[(2, 500), (102, 500)])
            .pack(3, &[(3, 800), (103, 200)])
            .pack(4, &[(4, 90), (104, 10)])
            .pack(5, &[(5, 10_000)])
            .refer(&[1, 2, 3, 4, 5])
    }

    fn repacked(plan: &PrunePlan) -> Vec<PackId> {
        plan.repack.iter().map(|r| r.id).collect()
    }

    fn with(max_unused: f64, max_repack: u64) -> PruneOptions {
        PruneOptions { max_unused, max_repack, ..Default::default() }
    }

    #[test]
    fn repack_takes_the_most_wasteful_packs_until_unused_is_within_max_unused() {
        let inputs = partly_used().inputs();
        // Used 11 490 bytes, unused 1 610.
        let plan = plan(&inputs, &with(0.05, u64::MAX));
        assert_eq!((plan.used_bytes, plan.unused_bytes), (11_490, 1_610));
        // Target 574: after 1, 710 unused are left; after 2, 210.
        assert_eq!(repacked(&plan), ids(&[1, 2]));
        assert_eq!(
            plan.repack[0],
            Repack {
                slot: 0,
                id: pack_id(1),
                kind: BlobKind::Data,
                used: 100,
                total: 1000,
                size: 1100
            }
        );
        // Target 1 149: 1 is enough.
        assert_eq!(repacked(&plan_of(&inputs, 0.1)), ids(&[1]));
        // Everything partly used, most wasteful first; never the fully used pack.
        assert_eq!(repacked(&plan_of(&inputs, 0.0)), ids(&[1, 2, 3, 4]));
        // Repacked packs are marked, after the unused ones.
        assert_eq!(plan.condemned(), ids(&[1, 2]));
        assert_eq!(plan.condemned_bytes(), 1100 + 1100);
    }

    fn plan_of(inputs: &PruneInputs, max_unused: f64) -> PrunePlan {
        plan(inputs, &with(max_unused, u64::MAX))
    }

    #[test]
    fn repack_reads_at_most_max_repack_live_bytes() {
        let inputs = partly_used().inputs();
        // 1 (100) and 2 (500) fit in 700; 3 (800) does not and is passed over; 4 (90) fits.
        assert_eq!(repacked(&plan(&inputs, &with(0.0, 700))), ids(&[1, 2, 4]));
        assert_eq!(repacked(&plan(&inputs, &with(0.0, 550))), ids(&[1, 4]));
        assert_eq!(repacked(&plan(&inputs, &with(0.0, 0))), ids(&[]));
    }

    #[test]
    fn data_packs_are_not_repacked_without_the_identity() {
        let mut world = World::default()
            .pack(1, &[(1, 100), (101, 900)])
            .pack_of(BlobKind::Tree, 2, &[(2, 100), (102, 900)])
            .refer(&[1, 2]);
        let opts = with(0.0, u64::MAX);
        assert_eq!(repacked(&plan(&world.inputs(), &opts)), ids(&[1, 2]));
        world.no_identity = true;
        let plan = plan(&world.inputs(), &opts);
        assert_eq!((repacked(&plan), plan.repack_skipped_no_identity), (ids(&[2]), 1));
        assert_eq!(plan.report(true).repack_skipped_no_identity, 1);
    }

    #[test]
    fn the_index_is_compacted_when_packs_go_or_objects_pile_up() {
        let mut world = World::default().pack(1, &[(1, 500)]).refer(&[1]);
        world.index_objects = COMPACT_ABOVE;
        assert!(!world.plan().compact);
        world.index_objects = COMPACT_ABOVE + 1;
        assert!(world.plan().compact);
        let deleting = World::default().pack(1, &[(1, 500)]).mark(&[1], GRACE, &[]);
        assert!(deleting.plan().compact);
    }

    #[test]
    fn a_mark_stays_while_one_of_its_packs_is_to_be_deleted_again() {
        let plan = World::default()
            .pack(1, &[(1, 500)])
            .pack(2, &[(2, 500)])
            .mark(&[1], GRACE, &[])
            .mark(&[2], GRACE, &[])
            .plan();
        let deferred: HashSet<PackId> = [pack_id(1)].into();
        let removed: Vec<&str> = plan.marks_to_remove(&deferred).map(|m| m.key.as_str()).collect();
        assert_eq!(removed, [plan.ripe_marks[1].key.as_str()]);
        assert_eq!(plan.marks_to_remove(&HashSet::new()).count(), 2);
    }

    // ---- Properties over any repository state.

    const BACKUPS: [&str; 2] = ["a", "b"];

    prop_compose! {
        fn any_pack(n: u8)(
            tree in any::<bool>(),
            blobs in prop::collection::btree_map(0u8..16, 1u32..1000, 1..4),
            indexed in prop::bool::weighted(0.8),
            hours in 0u64..48,
        ) -> TestPack {
            let kind = if tree { BlobKind::Tree } else { BlobKind::Data };
            let blobs = blobs.into_iter().map(|(b, len)| (blob_id(b), len)).collect();
            TestPack { id: pack_id(n), kind, blobs, indexed, age: HOUR * hours as u32 }
        }
    }

    prop_compose! {
        fn any_mark(packs: usize)(
            members in prop::collection::btree_set(0..packs, 0..4),
            hours in 0u64..48,
            running in prop::collection::btree_set(0..BACKUPS.len(), 0..2),
        ) -> TestMark {
            TestMark {
                packs: members.into_iter().map(|i| pack_id(i as u8)).collect(),
                age: HOUR * hours as u32,
                running_backups: running.into_iter().map(|i| shared_lock(BACKUPS[i])).collect(),
            }
        }
    }

    fn any_world() -> impl Strategy<Value = World> {
        (1usize..10)
            .prop_flat_map(|n| {
                (
                    (0..n).map(|i| any_pack(i as u8)).collect::<Vec<_>>(),
                    prop::collection::vec(any_mark(n), 0..3),
                    prop::collection::btree_set(0..BACKUPS.len(), 0..2),
                    prop::collection::btree_set(0u8..16, 0..16),
                    any::<bool>(),
                    prop_oneof![Just(1usize), Just(COMPACT_ABOVE + 1)],
                )
            })
            .prop_map(|(packs, marks, live, wanted, no_identity, index_objects)| {
                // Snapshots only reference indexed blobs (else prune stops before planning).
                let indexed: HashSet<BlobId> = packs
                    .iter()
                    .filter(|p| p.indexed)
                    .flat_map(|p| p.blobs.iter().map(|b| b.0))
                    .collect();
                let referenced =
                    wanted.into_iter().map(blob_id).filter(|b| indexed.contains(b)).collect();
                World {
                    packs,
                    marks,
                    live_shared: live.into_iter().map(|i| shared_lock(BACKUPS[i])).collect(),
                    referenced,
                    no_identity,
                    index_objects,
                }
            })
    }

    fn any_options() -> impl Strategy<Value = PruneOptions> {
        (prop_oneof![Just(0.0), Just(0.05), Just(0.5)], prop_oneof![Just(u64::MAX), 0u64..3000])
            .prop_map(|(max_unused, max_repack)| with(max_unused, max_repack))
    }

    proptest! {
        /// The safety property: whatever the marks, ages and locks, a referenced blob's
        /// canonical copy (the one readers use) is neither deleted nor marked as unused, so
        /// a copy of it always survives the run; only repacking condemns it, after copying.
        #[test]
        fn referenced_data_is_never_deleted(world in any_world(), opts in any_options()) {
            let inputs = world.inputs();
            let plan = plan(&inputs, &opts);
            let unused: HashSet<PackId> = plan.unused.iter().chain(&plan.unindexed).map(|p| p.0).collect();
            for b in &world.referenced {
                let holder = inputs.index.pack(inputs.index.get(b).unwrap().unwrap().pack).id;
                prop_assert!(!plan.delete.contains_key(&holder), "{b:?} in deleted {holder:?}");
                prop_assert!(!unused.contains(&holder), "{b:?} in unused {holder:?}");
                let survives = world.packs.iter().any(|p| {
                    p.blobs.iter().any(|(id, _)| id == b) && !plan.delete.contains_key(&p.id)
                });
                prop_assert!(survives);
            }
        }

        /// Only packs of ripe marks are deleted: marks at least `grace` old, none of whose
        /// running backups still runs; and only packs that exist.
        #[test]
        fn only_packs_of_ripe_marks_are_deleted(world in any_world(), opts in any_options()) {
            let inputs = world.inputs();
            let plan = plan(&inputs, &opts);
            let ripe = |m: &TestMark| {
                m.age >= opts.grace && !m.running_backups.iter().any(|r| world.live_shared.contains(r))
            };
            for p in plan.delete.keys().chain(&plan.rescued) {
                prop_assert!(world.marks.iter().any(|m| ripe(m) && m.packs.contains(p)));
                prop_assert!(inputs.pack_objects.contains_key(p));
            }
            prop_assert_eq!(plan.ripe_marks.len(), world.marks.iter().filter(|m| ripe(m)).count());
            prop_assert_eq!(plan.ripe_marks.len() + plan.marks_waiting, world.marks.len());
            prop_assert!(plan.delete.keys().all(|p| !plan.rescued.contains(p)));
        }

        /// The new mark names each pack once, none already marked or being deleted: unused
        /// packs, unindexed ones old enough, and partly used ones within the repack budget.
        #[test]
        fn only_unmarked_unused_or_repacked_packs_are_marked(
            world in any_world(),
            opts in any_options(),
        ) {
            let inputs = world.inputs();
            let plan = plan(&inputs, &opts);
            let used = inputs.used_per_slot();
            let marked = mark::marked_packs(&inputs.marks);
            let condemned = plan.condemned();
            let distinct: HashSet<PackId> = condemned.iter().copied().collect();
            prop_assert_eq!(distinct.len(), condemned.len());
            for p in &condemned {
                prop_assert!(!marked.contains(p) && !plan.delete.contains_key(p));
            }
            for (p, _) in &plan.unused {
                prop_assert_eq!(used[inputs.index.pack_slot(p).unwrap() as usize], 0);
            }
            for (p, _) in &plan.unindexed {
                prop_assert!(inputs.index.pack_slot(p).is_none());
                prop_assert!(inputs.age(inputs.pack_objects[p].modified) >= opts.unindexed_age);
            }
            for r in &plan.repack {
                prop_assert!(0 < r.used && r.used < r.total);
                prop_assert!(r.kind == BlobKind::Tree || inputs.can_read_data);
            }
            prop_assert!(plan.repack.iter().map(|r| r.used).sum::<u64>() <= opts.max_repack);
        }

        /// Without a budget or identity to stop it, repacking leaves at most `max_unused` ×
        /// used bytes unused in partly used packs, and repacks no pack more than that takes.
        #[test]
        fn repack_meets_max_unused(world in any_world(), max_unused in prop_oneof![Just(0.0), Just(0.05), Just(0.5)]) {
            let mut world = world;
            world.no_identity = false;
            let inputs = world.inputs();
            let plan = plan(&inputs, &with(max_unused, u64::MAX));
            let marked = mark::marked_packs(&inputs.marks);
            let used = inputs.used_per_slot();
            let repacked: HashSet<PackId> = plan.repack.iter().map(|r| r.id).collect();
            let mut waste_left = 0;
            for (slot, record) in inputs.index.packs.iter().enumerate() {
                let total = inputs.pack_totals[&record.id];
                let used = used[slot].min(total);
                if !marked.contains(&record.id) && used > 0 && !repacked.contains(&record.id) {
                    waste_left += total - used;
                }
            }
            let target = (plan.used_bytes as f64 * max_unused) as u64;
            prop_assert!(waste_left <= target);
            if let Some(last) = plan.repack.last() {
                prop_assert!(waste_left + (last.total - last.used) > target);
            }
        }

        /// A dry run plans exactly what a real run does, and reports the plan.
        #[test]
        fn a_dry_run_plans_what_a_real_run_does(world in any_world(), opts in any_options()) {
            let inputs = world.inputs();
            let real = plan(&inputs, &opts);
            let dry = plan(&inputs, &PruneOptions { dry_run: true, ..opts });
            prop_assert_eq!(&dry, &real);
            let report = dry.report(true);
            prop_assert!(report.dry_run);
            prop_assert_eq!(report.deleted_packs, real.delete.len());
            prop_assert_eq!(report.deleted_bytes, real.delete_bytes());
            prop_assert_eq!(report.marked_packs, real.condemned().len());
            prop_assert_eq!(report.marked_bytes, real.condemned_bytes());
            prop_assert_eq!(report.rescued_packs, real.rescued.len());
            prop_assert_eq!(report.render(), PruneReport { dry_run: true, ..real.report(false) }.render());
        }
    }
}
