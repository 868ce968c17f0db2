//! Snapshot records: the commit point of a backup. Written last, after every pack and index
//! object it depends on, sealed with the metadata key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::crypto::{SymKey, domain};
use super::ids::SnapshotId;
use super::tree::Node;
use crate::{Error, Result};

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// Logical bytes of all files in the snapshot.
    pub bytes: u64,
    /// Files whose content was read (the rest were reused from the parent).
    pub files_read: u64,
    pub bytes_read: u64,
    /// Blobs and bytes (sealed, compressed) this backup added to the repository.
    pub new_blobs: u64,
    pub new_bytes: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub host: String,
    /// What was backed up: `etcd`, `manifests`, `pvc/<ns>/<name>`, or a name given to `backup`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// The root directory; its `subtree` lists the top-level entries.
    pub root: Node,
    pub summary: Summary,
    #[serde(default)]
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// Source-specific facts (etcd revision, PVC spec...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
}

impl Snapshot {
    pub fn seal(&self, meta: &SymKey, id: &SnapshotId) -> Vec<u8> {
        meta.seal(domain::SNAPSHOT, &id.0, &serde_json::to_vec(self).expect("snapshot to JSON"))
    }

    pub fn open(meta: &SymKey, id: &SnapshotId, sealed: &[u8]) -> Result<Snapshot> {
        let plain =
            meta.open(domain::SNAPSHOT, &id.0, sealed, &format!("snapshot {}", id.short()))?;
        Self::decode(&plain)
    }

    pub fn decode(plain: &[u8]) -> Result<Snapshot> {
        let s: Snapshot = serde_json::from_slice(plain)
            .map_err(|e| Error::Integrity(format!("snapshot record: {e}")))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(Error::Integrity(format!(
                "snapshot version {} is not supported",
                s.version
            )));
        }
        Ok(s)
    }
}

/// A snapshot with its id, as listings return it.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
}
