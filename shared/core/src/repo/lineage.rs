//! Which snapshots belong together, and which one a new backup builds on.
//!
//! A bucket shared by clusters holds the same source names (`etcd`, `pvc/prod/db`) for
//! different data. A parent lends its files to the next backup whenever name, size and
//! mtime match, so a parent from another cluster would hand that cluster's bytes to this
//! one. Every writer resolves its parent here, never by source alone.

use std::str::FromStr;

use super::{Repository, Snapshot, SnapshotEntry};
use crate::{Error, Result};

/// A selection of snapshots: by source and by cluster, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotFilter<'a> {
    pub source: Option<&'a str>,
    pub cluster: Option<&'a str>,
}

impl<'a> SnapshotFilter<'a> {
    pub fn source(source: Option<&'a str>) -> Self {
        SnapshotFilter { source, cluster: None }
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        self.source.is_none_or(|src| s.source == src)
            && self.cluster.is_none_or(|c| s.cluster.as_deref() == Some(c))
    }
}

/// The line of snapshots a backup continues: one source in one cluster. Unlike a
/// [`SnapshotFilter`], "no cluster" matches only snapshots recorded without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage<'a> {
    pub source: &'a str,
    pub cluster: Option<&'a str>,
}

impl Lineage<'_> {
    pub fn contains(&self, s: &Snapshot) -> bool {
        s.source == self.source && s.cluster.as_deref() == self.cluster
    }

    /// The newest snapshot of this lineage among `all` (by time, then id).
    pub fn latest<'e>(&self, all: &'e [SnapshotEntry]) -> Option<&'e SnapshotEntry> {
        all.iter()
            .filter(|e| self.contains(&e.snapshot))
            .max_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)))
    }
}

/// What `--parent` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ParentSpec {
    /// The newest snapshot of the same lineage, if any.
    Auto,
    /// Read everything.
    #[default]
    None,
    /// A given snapshot (id or unique prefix), whatever its lineage: the operator chose it.
    Snapshot(String),
}

impl FromStr for ParentSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" | "" => ParentSpec::Auto,
            "none" => ParentSpec::None,
            id => ParentSpec::Snapshot(id.to_string()),
        })
    }
}

impl Repository {
    /// The snapshot a backup of `lineage` builds on.
    pub async fn resolve_parent(
        &self,
        spec: &ParentSpec,
        lineage: Lineage<'_>,
    ) -> Result<Option<SnapshotEntry>> {
        match spec {
            ParentSpec::None => Ok(None),
            ParentSpec::Auto => Ok(lineage.latest(&self.snapshots().await?).cloned()),
            ParentSpec::Snapshot(id) => {
                Ok(Some(self.find_snapshot_in(id, SnapshotFilter::default()).await?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SnapshotId;
    use super::*;

    fn snap(source: &str, cluster: Option<&str>, secs: i64) -> SnapshotEntry {
        let json = serde_json::json!({
            "version": 1,
            "time": time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
                .format(&time::format_description::well_known::Rfc3339).unwrap(),
            "host": "h", "source": source, "cluster": cluster,
            "root": {"name": "", "kind": "dir", "mode": 493, "uid": 0, "gid": 0,
                     "mtime_ns": 0, "size": 0},
            "summary": {"files":0,"dirs":0,"bytes":0,"files_read":0,"bytes_read":0,
                        "new_blobs":0,"new_bytes":0,"duration_ms":0},
        });
        SnapshotEntry {
            id: SnapshotId::random(),
            snapshot: Snapshot::decode(&serde_json::to_vec(&json).unwrap()).unwrap(),
        }
    }

    #[test]
    fn the_latest_of_a_lineage_ignores_other_clusters_and_sources() {
        let all = vec![
            snap("app", Some("a"), 10),
            snap("app", Some("b"), 30),
            snap("app", None, 40),
            snap("other", Some("a"), 50),
            snap("app", Some("a"), 20),
        ];
        let a = Lineage { source: "app", cluster: Some("a") };
        assert_eq!(a.latest(&all).unwrap().id, all[4].id);
        let none = Lineage { source: "app", cluster: None };
        assert_eq!(none.latest(&all).unwrap().id, all[2].id);
        assert!(Lineage { source: "app", cluster: Some("c") }.latest(&all).is_none());
    }

    #[test]
    fn a_filter_without_cluster_matches_every_cluster() {
        let s = snap("app", Some("a"), 1);
        assert!(SnapshotFilter::source(Some("app")).matches(&s.snapshot));
        assert!(SnapshotFilter { source: None, cluster: Some("a") }.matches(&s.snapshot));
        assert!(!SnapshotFilter { source: None, cluster: Some("b") }.matches(&s.snapshot));
    }

    #[test]
    fn parent_specs_parse() {
        assert_eq!("auto".parse::<ParentSpec>().unwrap(), ParentSpec::Auto);
        assert_eq!("none".parse::<ParentSpec>().unwrap(), ParentSpec::None);
        assert_eq!("3fa".parse::<ParentSpec>().unwrap(), ParentSpec::Snapshot("3fa".into()));
    }
}
