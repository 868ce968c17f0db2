//! Retention: which snapshots a policy keeps, and why. Forgetting only deletes snapshot
//! records; the space is reclaimed by `prune`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::Repository;
use super::ids::short_id;
use super::snapshot::SnapshotEntry;
use crate::{Error, Result};

/// `--keep-*` rules. A snapshot is kept if any rule keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything this recent, measured back from the group's newest snapshot (so a
    /// source that stopped being backed up does not lose its last snapshots to the clock).
    pub within: Option<Duration>,
    /// `key` or `key=value`: snapshots with such a tag are always kept.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self == &KeepPolicy::default()
    }
}

/// Which snapshot fields form a group (default: cluster and source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub cluster: bool,
    pub source: bool,
    pub host: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy { cluster: true, source: true, host: false }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy { cluster: false, source: false, host: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "cluster" => g.cluster = true,
                "source" => g.source = true,
                "host" => g.host = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "group-by {other:?}: use a comma list of cluster, source, host"
                    )));
                }
            }
        }
        Ok(g)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub keep: bool,
    /// Why it is kept (`last 1`, `daily 3`, `within 7d`, `tag release`); empty when it goes.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// e.g. `cluster=prod source=etcd`.
    pub key: String,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub groups: Vec<Group>,
    pub kept: usize,
    pub removed: usize,
    pub dry_run: bool,
}

fn group_key(e: &SnapshotEntry, by: GroupBy) -> String {
    let s = &e.snapshot;
    let mut parts = Vec::new();
    if by.cluster {
        parts.push(format!("cluster={}", s.cluster.as_deref().unwrap_or("-")));
    }
    if by.host {
        parts.push(format!("host={}", s.host));
    }
    if by.source {
        parts.push(format!("source={}", s.source));
    }
    if parts.is_empty() { "all".into() } else { parts.join(" ") }
}

fn has_tag(e: &SnapshotEntry, spec: &str) -> bool {
    match spec.split_once('=') {
        Some((k, v)) => e.snapshot.tags.get(k).is_some_and(|x| x == v),
        None => e.snapshot.tags.contains_key(spec),
    }
}

/// Time buckets in UTC. Weeks are ISO weeks.
fn bucket(t: OffsetDateTime, rule: &str) -> (i32, u32) {
    let t = t.to_offset(time::UtcOffset::UTC);
    match rule {
        "hourly" => (t.year(), t.ordinal() as u32 * 24 + u32::from(t.hour())),
        "daily" => (t.year(), u32::from(t.ordinal())),
        "weekly" => {
            let (y, w, _) = t.to_iso_week_date();
            (y, u32::from(w))
        }
        "monthly" => (t.year(), t.month() as u32),
        _ => (t.year(), 0),
    }
}

/// Decide, per group, which snapshots to keep. Pure: no I/O.
pub fn apply(snapshots: &[SnapshotEntry], policy: &KeepPolicy, by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<String, Vec<&SnapshotEntry>> = BTreeMap::new();
    for e in snapshots {
        groups.entry(group_key(e, by)).or_default().push(e);
    }
    let rules: [(&str, u32); 5] = [
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ];
    let mut out = Vec::new();
    for (key, mut members) in groups {
        // Newest first; ties broken by id so the result is deterministic.
        members.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(b.id.cmp(&a.id)));
        let newest = members.first().map(|e| e.snapshot.time);
        let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
        let mut last_bucket: Vec<Option<(i32, u32)>> = vec![None; rules.len()];
        let mut decisions = Vec::new();
        for (i, e) in members.iter().enumerate() {
            let mut reasons = Vec::new();
            if (i as u32) < policy.last {
                reasons.push(format!("last {}", i + 1));
            }
            for (r, (name, _)) in rules.iter().enumerate() {
                let b = bucket(e.snapshot.time, name);
                if left[r] > 0 && last_bucket[r] != Some(b) {
                    last_bucket[r] = Some(b);
                    reasons.push(format!("{name} {}", rules[r].1 - left[r] + 1));
                    left[r] -= 1;
                }
            }
            if let (Some(within), Some(newest)) = (policy.within, newest)
                && newest - e.snapshot.time <= within
            {
                reasons.push(format!("within {}", humantime::format_duration(within)));
            }
            for t in &policy.tags {
                if has_tag(e, t) {
                    reasons.push(format!("tag {t}"));
                }
            }
            decisions.push(Decision {
                id: e.id.to_hex(),
                time: e.snapshot.time,
                keep: !reasons.is_empty(),
                reasons,
            });
        }
        out.push(Group { key, decisions });
    }
    out
}

/// Apply a policy to the repository's snapshots (optionally one source only) and delete the
/// records it does not keep, unless `dry_run`.
pub async fn forget(
    repo: &Repository,
    policy: &KeepPolicy,
    by: GroupBy,
    source: Option<&str>,
    dry_run: bool,
) -> Result<ForgetReport> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no --keep-* rule given: refusing to forget every snapshot".into(),
        ));
    }
    let all: Vec<SnapshotEntry> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|e| source.is_none_or(|s| e.snapshot.source == s))
        .collect();
    let groups = apply(&all, policy, by);
    let mut report = ForgetReport { dry_run, ..Default::default() };
    for g in &groups {
        for d in &g.decisions {
            if d.keep {
                report.kept += 1;
                continue;
            }
            report.removed += 1;
            if !dry_run {
                repo.store().delete(&format!("snapshots/{}", d.id)).await?;
                tracing::info!(snapshot = %&d.id[..12], group = %g.key, "forgot snapshot");
            }
        }
    }
    report.groups = groups;
    Ok(report)
}

impl ForgetReport {
    /// The one-screen summary: every group, every snapshot, why it stays or goes.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for g in &self.groups {
            let _ = writeln!(s, "{}", g.key);
            for d in &g.decisions {
                let t = d
                    .time
                    .format(&time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]"
                    ))
                    .unwrap_or_default();
                if d.keep {
                    let _ =
                        writeln!(s, "  keep   {} {}  {}", short_id(&d.id), t, d.reasons.join(", "));
                } else {
                    let _ = writeln!(s, "  remove {} {}", short_id(&d.id), t);
                }
            }
        }
        let verb = if self.dry_run { "would remove" } else { "removed" };
        let _ = writeln!(s, "kept {} snapshots, {verb} {}", self.kept, self.removed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Name, Node, NodeKind, Snapshot, SnapshotId, Summary};

    fn snap(source: &str, t: OffsetDateTime, tags: &[(&str, &str)]) -> SnapshotEntry {
        SnapshotEntry {
            id: SnapshotId::random(),
            snapshot: Snapshot {
                version: 1,
                time: t,
                host: "h".into(),
                source: source.into(),
                cluster: Some("c".into()),
                tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                parent: None,
                root: Node::new(Name(Vec::new()), NodeKind::Dir),
                summary: Summary::default(),
                partial: false,
                failures: Vec::new(),
                meta: serde_json::Value::Null,
            },
        }
    }

    fn kept(groups: &[Group]) -> Vec<OffsetDateTime> {
        let mut v: Vec<_> =
            groups.iter().flat_map(|g| &g.decisions).filter(|d| d.keep).map(|d| d.time).collect();
        v.sort();
        v
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let base = time::macros::datetime!(2026-11-01 00:00 UTC);
        // Four snapshots a day for 10 days.
        let snaps: Vec<_> =
            (0..40).map(|i| snap("etcd", base + time::Duration::hours(6 * i), &[])).collect();
        let policy = KeepPolicy { daily: 3, ..Default::default() };
        let k = kept(&apply(&snaps, &policy, GroupBy::default()));
        assert_eq!(
            k,
            vec![
                base + time::Duration::hours(7 * 24 + 18),
                base + time::Duration::hours(8 * 24 + 18),
                base + time::Duration::hours(9 * 24 + 18),
            ]
        );
    }

    #[test]
    fn groups_are_independent_and_reasons_are_given() {
        let base = time::macros::datetime!(2026-11-01 00:00 UTC);
        let mut snaps: Vec<_> =
            (0..5).map(|i| snap("etcd", base + time::Duration::hours(i), &[])).collect();
        snaps.extend((0..5).map(|i| snap("manifests", base + time::Duration::hours(i), &[])));
        snaps.push(snap("etcd", base - time::Duration::days(100), &[("release", "v1")]));
        let policy = KeepPolicy { last: 2, tags: vec!["release=v1".into()], ..Default::default() };
        let groups = apply(&snaps, &policy, GroupBy::default());
        assert_eq!(groups.len(), 2);
        let etcd = groups.iter().find(|g| g.key.contains("etcd")).unwrap();
        assert_eq!(etcd.decisions.iter().filter(|d| d.keep).count(), 3);
        assert_eq!(etcd.decisions[0].reasons, vec!["last 1"]);
        assert_eq!(etcd.decisions.last().unwrap().reasons, vec!["tag release=v1"]);
        let m = groups.iter().find(|g| g.key.contains("manifests")).unwrap();
        assert_eq!(m.decisions.iter().filter(|d| d.keep).count(), 2);
        assert!(m.decisions.iter().filter(|d| !d.keep).all(|d| d.reasons.is_empty()));
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot() {
        let base = time::macros::datetime!(2020-01-01 00:00 UTC);
        let snaps: Vec<_> =
            (0..10).map(|i| snap("pvc/a/b", base + time::Duration::days(i), &[])).collect();
        let policy =
            KeepPolicy { within: Some(Duration::from_secs(3 * 86400)), ..Default::default() };
        assert_eq!(kept(&apply(&snaps, &policy, GroupBy::default())).len(), 4);
    }

    #[test]
    fn weekly_monthly_yearly_buckets() {
        let base = time::macros::datetime!(2024-01-01 12:00 UTC);
        let snaps: Vec<_> =
            (0..800).map(|i| snap("s", base + time::Duration::days(i), &[])).collect();
        let p = |f: fn(&mut KeepPolicy)| {
            let mut k = KeepPolicy::default();
            f(&mut k);
            kept(&apply(&snaps, &k, GroupBy::default())).len()
        };
        assert_eq!(p(|k| k.weekly = 5), 5);
        assert_eq!(p(|k| k.monthly = 30), 27); // Jan 2024 .. Mar 2026
        assert_eq!(p(|k| k.yearly = 10), 3);
        assert_eq!(
            p(|k| {
                k.last = 3;
                k.daily = 3
            }),
            3
        ); // the same three snapshots
    }
}
