//! Mark objects (`gc/<id>`): the first phase of garbage collection.
//!
//! `prune` never deletes a pack it has just found unused. It writes a mark naming the pack;
//! only a later prune, once the mark is older than the grace period on the store's clock and
//! every backup that was running when it was written has ended, deletes the pack. Writers
//! load marks with the index and never dedup against marked packs; a writer that finds a new
//! mark at commit time naming a pack it relied on does not commit (FORMAT.md §15).

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Repository;
use super::crypto::{SymKey, domain};
use super::ids::{IndexId, PackId};
use super::storage::Timestamp;
use crate::{Error, Result};

pub const MARK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: u32,
    /// Writer's clock, informative; the age of a mark is judged on the store's clock.
    pub created: String,
    /// Packs condemned: nothing referenced them (or their live blobs were copied elsewhere).
    pub packs: Vec<PackId>,
    /// Shared (backup) locks alive when the mark was written: the mark is not acted on while
    /// any of them still lives, whatever the grace period says.
    #[serde(default)]
    pub running_backups: Vec<String>,
}

impl Mark {
    pub fn seal(&self, meta: &SymKey, id: &IndexId) -> Bytes {
        Bytes::from(meta.seal(domain::MARK, &id.0, &serde_json::to_vec(self).expect("json")))
    }

    pub fn open(meta: &SymKey, id: &IndexId, sealed: &[u8]) -> Result<Mark> {
        let plain = meta.open(domain::MARK, &id.0, sealed, &format!("mark {}", id.short()))?;
        let m: Mark = serde_json::from_slice(&plain)
            .map_err(|e| Error::Integrity(format!("mark {}: {e}", id.short())))?;
        if m.version != MARK_VERSION {
            return Err(Error::Integrity(format!("mark version {} is not supported", m.version)));
        }
        Ok(m)
    }
}

/// A mark as found in the store.
#[derive(Debug, Clone)]
pub struct MarkEntry {
    pub key: String,
    pub mark: Mark,
    /// On the store's clock.
    pub modified: Timestamp,
}

/// Every mark object. Any that does not open is an error: a writer that ignored a mark could
/// dedup against a pack about to be deleted.
pub async fn load_marks(repo: &Repository) -> Result<Vec<MarkEntry>> {
    let store = repo.store();
    let mut out = Vec::new();
    for info in store.list_info("gc/").await? {
        let id = IndexId::parse(info.key.trim_start_matches("gc/"))?;
        let sealed = match store.get(&info.key).await {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue, // deleted by a prune meanwhile
            Err(e) => return Err(e),
        };
        let mark = Mark::open(repo.meta_key(), &id, &sealed)?;
        out.push(MarkEntry { key: info.key, mark, modified: info.modified });
    }
    Ok(out)
}

pub fn marked_packs(marks: &[MarkEntry]) -> HashSet<PackId> {
    marks.iter().flat_map(|m| m.mark.packs.iter().copied()).collect()
}

/// Written through `store` (under the prune's lease), sealed with `repo`'s key.
pub async fn save_mark(repo: &Repository, store: &super::Store, mark: &Mark) -> Result<String> {
    let id = IndexId::random();
    let key = format!("gc/{id}");
    store.create(&key, mark.seal(repo.meta_key(), &id)).await?;
    Ok(key)
}
