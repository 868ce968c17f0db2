//! What the jobs record in a snapshot's `meta` for the jobs that read it back: one type per
//! record, shared by writer and reader, so a renamed field is a compile error rather than a
//! check that silently stops running (FORMAT.md §10.1–10.3 and §10.5 give the wire forms).
//!
//! Each record is the whole `meta` object of its snapshot; [`SnapshotRecord::from_meta`]
//! says `None` when a snapshot carries another kind and fails when one is present but
//! malformed (damage, not absence).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::repo::Snapshot;
use crate::{Error, Result};

/// The file an etcd snapshot is stored as, in the snapshot's root.
pub const ETCD_DB_FILE: &str = "snapshot.db";
/// The file a `volumeMode: Block` volume is stored as, in the snapshot's root.
pub const BLOCK_FILE: &str = "volume.img";
/// The source name of manifest exports.
pub const MANIFESTS_SOURCE: &str = "manifests";

/// A typed `meta` record; `KEY` is the top-level field that marks its kind.
pub trait SnapshotRecord: Serialize + DeserializeOwned {
    const KEY: &'static str;

    /// The record of `snapshot`, if it carries one of this kind.
    fn of(snapshot: &Snapshot) -> Result<Option<Self>> {
        Self::from_meta(&snapshot.meta)
    }

    fn from_meta(meta: &serde_json::Value) -> Result<Option<Self>> {
        if meta.get(Self::KEY).is_none() {
            return Ok(None);
        }
        serde_json::from_value(meta.clone())
            .map(Some)
            .map_err(|e| Error::Integrity(format!("snapshot record `{}`: {e}", Self::KEY)))
    }

    fn to_meta(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("records serialise")
    }
}

/// `meta` of an etcd snapshot (written by `cairn-etcd-snapshot`, checked by
/// `cairn-restore etcd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdMeta {
    pub etcd: EtcdRecord,
}

impl SnapshotRecord for EtcdMeta {
    const KEY: &'static str = "etcd";
}

/// Facts about an etcd snapshot, so a restore can be checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdRecord {
    pub member: EtcdMember,
    pub chosen_because: String,
    /// A revision the snapshot holds (read just before the stream started); `hash_kv` is
    /// HashKV at it, to compare with the restored member.
    pub revision: i64,
    pub hash_kv: u32,
    pub hash_kv_compact_revision: i64,
    pub stream_bytes: u64,
    /// SHA-256 of the database as etcd streamed it (its trailer): the restore refuses a
    /// file that does not match.
    pub sha256: String,
}

/// What the etcd job learnt about one member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub endpoint: String,
    pub id: String,
    pub name: String,
    pub version: String,
    pub cluster_id: String,
    pub leader: bool,
    pub learner: bool,
    pub raft_index: u64,
    pub raft_term: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub errors: Vec<String>,
    #[serde(default)]
    pub alarms: Vec<String>,
}

/// `meta` of a PVC snapshot (written by the PVC ingest, read by `cairn-restore pvc` to
/// recreate the claim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcMeta {
    pub pvc: PvcRecord,
    pub mode: PvcMode,
    pub consistency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<VolumeSnapshotRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot: Option<VolumeGroupSnapshotRecord>,
    /// The backup hooks run around the cut, when the PVC's pods declare any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksRecord>,
}

impl SnapshotRecord for PvcMeta {
    const KEY: &'static str = "pvc";
}

impl PvcMeta {
    pub fn new(pvc: PvcRecord, mode: PvcMode) -> PvcMeta {
        PvcMeta {
            pvc,
            mode,
            consistency: mode.consistency().to_string(),
            volume_snapshot: None,
            volume_group_snapshot: None,
            hooks: None,
        }
    }

    pub fn is_block(&self) -> bool {
        self.pvc.volume_mode == "Block"
    }
}

/// The claim as it was backed up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcRecord {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub storage_class_name: Option<String>,
    pub access_modes: Option<Vec<String>>,
    /// `Filesystem` or `Block`.
    pub volume_mode: String,
    /// The requested size (`spec.resources.requests.storage`).
    pub size: Option<String>,
    /// The bound capacity (`status.capacity.storage`).
    pub capacity: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub volume_name: Option<String>,
}

/// How a PVC was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PvcMode {
    /// CSI VolumeSnapshot → temporary PVC → ingest pod (crash-consistent).
    Snapshot,
    /// The live volume mounted read-only beside its consumer (no consistency).
    Live,
}

impl PvcMode {
    pub fn consistency(self) -> &'static str {
        match self {
            PvcMode::Snapshot => "crash-consistent (CSI snapshot)",
            PvcMode::Live => "none: read from the live volume while in use",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotRecord {
    pub class: String,
    pub driver: String,
    pub restore_size: Option<String>,
    pub ready_after_ms: u64,
    /// `status.creationTime`: the point in time the snapshot holds (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeGroupSnapshotRecord {
    pub name: String,
    pub class: String,
}

/// The consistency word of a snapshot whose pre hooks all succeeded.
pub const APPLICATION_CONSISTENT: &str = "application-consistent (hooks around a CSI snapshot)";

/// Backup hooks run around a PVC's cut (pre hooks before it, post hooks after it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HooksRecord {
    /// Every pre hook succeeded: the application was quiesced when the snapshot was cut.
    pub application_consistent: bool,
    /// In the order they ran.
    pub runs: Vec<HookRun>,
}

/// One hook in one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRun {
    /// `pre` or `post`.
    pub phase: HookPhase,
    /// `namespace/pod`.
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    /// RFC 3339, when the exec started and ended.
    pub started: String,
    pub ended: String,
    /// `ok`, `failed` (exit status ≠ 0), `timeout` or `error` (could not run).
    pub outcome: String,
    pub exit_code: Option<i32>,
    /// The end of stderr (at most 1 KiB), or why it could not run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `fail` or `continue`: what a failure of this hook does.
    pub on_error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    Pre,
    Post,
}

/// The source prefix of streamed dumps: `dump/<namespace>/<name>`.
pub fn dump_source(namespace: &str, name: &str) -> String {
    format!("dump/{namespace}/{name}")
}

/// `meta` of a streamed dump (a command's stdout, stored as one file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpMeta {
    pub dump: DumpRecord,
}

impl SnapshotRecord for DumpMeta {
    const KEY: &'static str = "dump";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpRecord {
    pub namespace: String,
    /// The pod the command ran in (pods come and go; the source name stays).
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    /// The file in the snapshot's root that holds stdout.
    pub file: String,
    pub bytes: u64,
    /// Always 0 in a saved snapshot: a dump that exits otherwise is not saved.
    pub exit_code: i32,
    /// The end of stderr (at most 1 KiB).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    pub duration_ms: u64,
}

/// `meta` of a manifest export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestsMeta {
    pub manifests: ManifestsRecord,
}

impl SnapshotRecord for ManifestsMeta {
    const KEY: &'static str = "manifests";
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestsRecord {
    pub server_version: Option<String>,
    pub objects: u64,
    pub resources: usize,
    pub per_resource: BTreeMap<String, u64>,
    pub denied: Vec<String>,
    pub skipped: Vec<String>,
    /// The export's filters as given (namespaces, selectors, resources).
    pub filters: serde_json::Value,
    pub managed_fields: bool,
}

/// True for snapshots of manifests (by record, or by source for records written before it).
pub fn is_manifests(snapshot: &Snapshot) -> bool {
    snapshot.meta.get(ManifestsMeta::KEY).is_some() || snapshot.source == MANIFESTS_SOURCE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member() -> EtcdMember {
        EtcdMember { endpoint: "https://127.0.0.1:2379".into(), leader: true, ..Default::default() }
    }

    #[test]
    fn etcd_record_keeps_the_wire_form_the_restore_reads() {
        let meta = EtcdMeta {
            etcd: EtcdRecord {
                member: member(),
                chosen_because: "follower".into(),
                revision: 7,
                hash_kv: 42,
                hash_kv_compact_revision: 1,
                stream_bytes: 4096,
                sha256: "ab".repeat(32),
            },
        };
        let v = meta.to_meta();
        assert_eq!(v["etcd"]["sha256"], "ab".repeat(32));
        assert_eq!(v["etcd"]["member"]["endpoint"], "https://127.0.0.1:2379");
        assert_eq!(EtcdMeta::from_meta(&v).unwrap(), Some(meta));
        assert_eq!(EtcdMeta::from_meta(&serde_json::json!({"pvc": {}})).unwrap(), None);
        let broken = serde_json::json!({"etcd": {"revision": "x"}});
        assert!(matches!(EtcdMeta::from_meta(&broken), Err(Error::Integrity(_))));
    }

    #[test]
    fn pvc_record_keeps_the_camel_case_wire_form() {
        let mut meta = PvcMeta::new(
            PvcRecord {
                namespace: Some("prod".into()),
                name: Some("db".into()),
                storage_class_name: Some("fast".into()),
                volume_mode: "Block".into(),
                ..Default::default()
            },
            PvcMode::Snapshot,
        );
        meta.volume_snapshot = Some(VolumeSnapshotRecord {
            class: "csi".into(),
            driver: "d".into(),
            restore_size: None,
            ready_after_ms: 5,
            creation_time: None,
        });
        let v = meta.to_meta();
        assert_eq!(v["pvc"]["storageClassName"], "fast");
        assert_eq!(v["pvc"]["volumeMode"], "Block");
        assert_eq!(v["mode"], "snapshot");
        assert_eq!(v["volumeSnapshot"]["readyAfterMs"], 5);
        assert!(v.get("volumeGroupSnapshot").is_none());
        let back = PvcMeta::from_meta(&v).unwrap().unwrap();
        assert!(back.is_block());
        assert_eq!(back, meta);
    }

    proptest! {
        #[test]
        fn pvc_records_round_trip(
            ns in "[a-z0-9-]{1,20}",
            name in "[a-z0-9.-]{1,40}",
            labels in proptest::collection::btree_map("[a-z./-]{1,12}", "[A-Za-z0-9_.-]{0,12}", 0..4),
            size in proptest::option::of("[0-9]{1,4}(Gi|Mi)"),
            live in any::<bool>(),
        ) {
            let meta = PvcMeta::new(
                PvcRecord {
                    namespace: Some(ns), name: Some(name), size, labels,
                    volume_mode: "Filesystem".into(), ..Default::default()
                },
                if live { PvcMode::Live } else { PvcMode::Snapshot },
            );
            prop_assert_eq!(PvcMeta::from_meta(&meta.to_meta()).unwrap(), Some(meta));
        }

        #[test]
        fn manifests_records_round_trip(
            objects in any::<u64>(),
            per in proptest::collection::btree_map("[a-z.]{1,20}", any::<u64>(), 0..6),
            denied in proptest::collection::vec("[ -~]{0,30}", 0..3),
        ) {
            let meta = ManifestsMeta { manifests: ManifestsRecord {
                objects, per_resource: per, denied, ..Default::default()
            }};
            prop_assert_eq!(ManifestsMeta::from_meta(&meta.to_meta()).unwrap(), Some(meta));
        }
    }

    #[test]
    fn hook_and_dump_records_have_their_wire_form() {
        let mut meta = PvcMeta::new(PvcRecord::default(), PvcMode::Snapshot);
        meta.hooks = Some(HooksRecord {
            application_consistent: false,
            runs: vec![HookRun {
                phase: HookPhase::Pre,
                pod: "prod/db-0".into(),
                container: Some("db".into()),
                command: vec!["sync".into()],
                started: "2026-11-30T11:00:00Z".into(),
                ended: "2026-11-30T11:00:01Z".into(),
                outcome: "failed".into(),
                exit_code: Some(3),
                message: String::new(),
                on_error: "continue".into(),
            }],
        });
        let v = meta.to_meta();
        assert_eq!(v["hooks"]["applicationConsistent"], false);
        let run = &v["hooks"]["runs"][0];
        assert_eq!(
            (run["phase"].as_str(), run["exitCode"].as_i64(), run["onError"].as_str()),
            (Some("pre"), Some(3), Some("continue"))
        );
        assert!(run.get("message").is_none(), "an empty message is left out");
        assert_eq!(PvcMeta::from_meta(&v).unwrap().unwrap(), meta);
        // Records written before hooks existed still read.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("hooks");
        assert_eq!(PvcMeta::from_meta(&old).unwrap().unwrap().hooks, None);

        let dump = DumpMeta {
            dump: DumpRecord {
                namespace: "prod".into(),
                pod: "pg-0".into(),
                container: Some("pg".into()),
                command: vec!["pg_dumpall".into()],
                file: "dump".into(),
                bytes: 42,
                exit_code: 0,
                stderr_tail: String::new(),
                duration_ms: 7,
            },
        };
        let v = dump.to_meta();
        assert_eq!(
            (v["dump"]["exitCode"].as_i64(), v["dump"]["durationMs"].as_u64()),
            (Some(0), Some(7))
        );
        assert_eq!(DumpMeta::from_meta(&v).unwrap().unwrap(), dump);
        assert_eq!(
            DumpMeta::from_meta(&meta.to_meta()).unwrap(),
            None,
            "a PVC record is not a dump"
        );
        assert_eq!(dump_source("prod", "pg"), "dump/prod/pg");
    }
}
