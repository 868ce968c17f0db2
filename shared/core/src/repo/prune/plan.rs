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
    pub(super) fn used_per_slot(&self) -> Vec<u64> {
        used_per_slot(&self.index, &self.live)
    }
}

pub(super) fn used_per_slot(index: &MasterIndex, live: &LiveSet) -> Vec<u64> {
    let mut used = vec![0u64; index.packs.len()];
    for (i, (_, loc)) in index.iter().enumerate() {
        if live.get(i) {
            used[loc.pack as usize] += u64::from(loc.length);
        }
    }
    used
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
    plan_deletes(inputs, opts, &used, &mut plan);
    let partial = plan_marks(inputs, opts, &used, &mut plan);
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
