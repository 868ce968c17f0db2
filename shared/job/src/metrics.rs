//! The metrics every job pushes when its run ends (OTLP, see [`crate::telemetry`]).
//!
//! A job is a short-lived process: it records each fact once, at its end, and the meter
//! provider's shutdown pushes them. Names and units follow the OpenTelemetry conventions
//! (`cairn.backup.read`, unit `By`); [`CATALOGUE`] lists each with the name Prometheus gives
//! it through its OTLP receiver, which is what the alert rules and the dashboard under
//! `k8s-manifests/monitoring/` use (a test holds them to this list).
//!
//! Labels are data-point attributes, so they reach every backend as labels:
//! `cairn.cluster`, `cairn.source` and `cairn.outcome`. The job is `service.name`.
//!
//! Without `OTEL_EXPORTER_OTLP_ENDPOINT` the global meter is a no-op and recording costs
//! nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic sum (Prometheus adds `_total`).
    Counter,
    Gauge,
}

/// One metric: its OpenTelemetry name and unit, and its name in Prometheus.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub prometheus: &'static str,
    pub kind: Kind,
    /// UCUM unit (`s`, `By`) or an annotation (`{run}`).
    pub unit: &'static str,
    pub description: &'static str,
    /// Data-point attributes it carries (besides the resource's `service.name`).
    pub attributes: &'static [&'static str],
}

pub const CLUSTER: &str = "cairn.cluster";
pub const SOURCE: &str = "cairn.source";
pub const OUTCOME: &str = "cairn.outcome";
/// The repository's id (its `config`): buckets and prefixes shared by many clusters keep
/// their repository-wide series apart.
pub const REPOSITORY: &str = "cairn.repository";

const RUN_ATTRS: &[&str] = &[CLUSTER, SOURCE, OUTCOME];
const SOURCE_ATTRS: &[&str] = &[CLUSTER, SOURCE];
const REPO_ATTRS: &[&str] = &[REPOSITORY];
const REPO_SOURCE_ATTRS: &[&str] = &[REPOSITORY, CLUSTER, SOURCE];

macro_rules! metric {
    ($id:ident, $name:literal, $prom:literal, $kind:ident, $unit:literal, $attrs:expr, $desc:literal) => {
        pub const $id: MetricDef = MetricDef {
            name: $name,
            prometheus: $prom,
            kind: Kind::$kind,
            unit: $unit,
            description: $desc,
            attributes: $attrs,
        };
    };
}

metric!(
    RUNS,
    "cairn.runs",
    "cairn_runs_total",
    Counter,
    "{run}",
    RUN_ATTRS,
    "Runs of a job, by outcome (the exit class: success, partial, retryable, usage, integrity, locked, interrupted)"
);
metric!(
    RUN_DURATION,
    "cairn.run.duration",
    "cairn_run_duration_seconds",
    Gauge,
    "s",
    RUN_ATTRS,
    "How long the run took"
);
metric!(
    RUN_END,
    "cairn.run.end.timestamp",
    "cairn_run_end_timestamp_seconds",
    Gauge,
    "s",
    RUN_ATTRS,
    "When the run ended (Unix time), by outcome"
);
metric!(
    LAST_SUCCESS,
    "cairn.last_success.timestamp",
    "cairn_last_success_timestamp_seconds",
    Gauge,
    "s",
    SOURCE_ATTRS,
    "When a run of this source last succeeded (Unix time); pushed by successful runs"
);
metric!(
    READ,
    "cairn.backup.read",
    "cairn_backup_read_bytes_total",
    Counter,
    "By",
    SOURCE_ATTRS,
    "Bytes read from the source by the run"
);
metric!(
    FILES,
    "cairn.backup.files",
    "cairn_backup_files_total",
    Counter,
    "{file}",
    SOURCE_ATTRS,
    "Files or objects read from the source by the run"
);
metric!(
    STORED,
    "cairn.backup.stored",
    "cairn_backup_stored_bytes_total",
    Counter,
    "By",
    SOURCE_ATTRS,
    "New bytes the run stored in the repository (after deduplication and compression)"
);
metric!(
    FAILED_ITEMS,
    "cairn.backup.failed_items",
    "cairn_backup_failed_items_total",
    Counter,
    "{item}",
    SOURCE_ATTRS,
    "Items the run could not back up or restore (a partial run has some)"
);
metric!(
    LOCK_WAIT,
    "cairn.lock.wait",
    "cairn_lock_wait_seconds",
    Gauge,
    "s",
    SOURCE_ATTRS,
    "Time the run spent waiting for repository locks held by others"
);
metric!(
    REPO_SIZE,
    "cairn.repository.size",
    "cairn_repository_size_bytes",
    Gauge,
    "By",
    REPO_ATTRS,
    "Bytes of pack files in the repository (maintenance job)"
);
metric!(
    REPO_PACKS,
    "cairn.repository.packs",
    "cairn_repository_packs",
    Gauge,
    "{pack}",
    REPO_ATTRS,
    "Pack files in the repository (maintenance job)"
);
metric!(
    REPO_SNAPSHOTS,
    "cairn.repository.snapshots",
    "cairn_repository_snapshots",
    Gauge,
    "{snapshot}",
    REPO_SOURCE_ATTRS,
    "Snapshots kept per source (maintenance job)"
);
metric!(
    NEWEST,
    "cairn.repository.newest_snapshot.timestamp",
    "cairn_repository_newest_snapshot_timestamp_seconds",
    Gauge,
    "s",
    REPO_SOURCE_ATTRS,
    "When the newest snapshot of a source was taken (Unix time; maintenance job)"
);
metric!(
    NEWEST_AGE,
    "cairn.repository.newest_snapshot.age",
    "cairn_repository_newest_snapshot_age_seconds",
    Gauge,
    "s",
    REPO_SOURCE_ATTRS,
    "Age of the newest snapshot of a source when the maintenance job looked"
);
metric!(
    LOCKS_EXPIRED,
    "cairn.repository.locks.expired",
    "cairn_repository_locks_expired",
    Gauge,
    "{lock}",
    REPO_ATTRS,
    "Locks held past their lease: a job that died holding them (maintenance job)"
);
metric!(
    CHECK_PROBLEMS,
    "cairn.check.problems",
    "cairn_check_problems",
    Gauge,
    "{problem}",
    REPO_ATTRS,
    "Problems the maintenance job's check found (0: the repository is sound)"
);

/// Every metric a job may push.
pub const CATALOGUE: &[MetricDef] = &[
    RUNS,
    RUN_DURATION,
    RUN_END,
    LAST_SUCCESS,
    READ,
    FILES,
    STORED,
    FAILED_ITEMS,
    LOCK_WAIT,
    REPO_SIZE,
    REPO_PACKS,
    REPO_SNAPSHOTS,
    NEWEST,
    NEWEST_AGE,
    LOCKS_EXPIRED,
    CHECK_PROBLEMS,
];

/// What one run did for one source (or for the job as a whole when it has no source).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceRun {
    pub cluster: Option<String>,
    pub source: Option<String>,
    /// `success`, `partial`, ... ([`cairn_core::Exit::as_str`]), or `interrupted`.
    pub outcome: String,
    pub seconds: f64,
    pub read_bytes: Option<u64>,
    pub files: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub failed_items: Option<u64>,
}

/// Per-source facts the maintenance job reads from the repository.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceState {
    pub cluster: Option<String>,
    pub source: String,
    pub snapshots: u64,
    /// Unix seconds of the newest snapshot.
    pub newest: f64,
}

impl SourceState {
    /// Snapshots grouped by (cluster, source): how many, and when the newest was taken. What
    /// the maintenance job pushes and `cairn ui --metrics-listen` serves.
    pub fn of<'a>(
        snapshots: impl IntoIterator<Item = &'a cairn_core::repo::Snapshot>,
    ) -> Vec<SourceState> {
        let mut by_source: std::collections::BTreeMap<(Option<&str>, &str), SourceState> =
            std::collections::BTreeMap::new();
        for snap in snapshots {
            let time = snap.time.unix_timestamp_nanos() as f64 / 1e9;
            let s = by_source
                .entry((snap.cluster.as_deref(), snap.source.as_str()))
                .or_insert_with(|| SourceState {
                    cluster: snap.cluster.clone(),
                    source: snap.source.clone(),
                    snapshots: 0,
                    newest: time,
                });
            s.snapshots += 1;
            s.newest = s.newest.max(time);
        }
        by_source.into_values().collect()
    }
}

/// What the maintenance job reports about the repository.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RepositoryState {
    /// The repository's id.
    pub repository: String,
    pub size_bytes: u64,
    pub packs: u64,
    pub sources: Vec<SourceState>,
    pub expired_locks: u64,
    /// `None` when no check ran.
    pub check_problems: Option<u64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter("cairn")
}

fn attrs(cluster: Option<&str>, source: Option<&str>, outcome: Option<&str>) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(3);
    if let Some(c) = cluster {
        a.push(KeyValue::new(CLUSTER, c.to_string()));
    }
    if let Some(s) = source {
        a.push(KeyValue::new(SOURCE, s.to_string()));
    }
    if let Some(o) = outcome {
        a.push(KeyValue::new(OUTCOME, o.to_string()));
    }
    a
}

fn counter(m: &Meter, def: MetricDef, value: u64, a: &[KeyValue]) {
    m.u64_counter(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .build()
        .add(value, a);
}

fn gauge(m: &Meter, def: MetricDef, value: f64, a: &[KeyValue]) {
    m.f64_gauge(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .build()
        .record(value, a);
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Record one run: its outcome, duration and end time for each source it covered, what it
/// read and stored, and the last success when it succeeded.
pub fn record_runs(runs: &[SourceRun]) {
    let m = meter();
    let end = unix_now();
    let lock_wait = cairn_core::repo::lock::time_waited().as_secs_f64();
    for r in runs {
        let (c, s) = (r.cluster.as_deref(), r.source.as_deref());
        let with_outcome = attrs(c, s, Some(&r.outcome));
        let plain = attrs(c, s, None);
        counter(&m, RUNS, 1, &with_outcome);
        gauge(&m, RUN_DURATION, r.seconds, &with_outcome);
        gauge(&m, RUN_END, end, &with_outcome);
        if r.outcome == "success" {
            gauge(&m, LAST_SUCCESS, end, &plain);
        }
        for (def, v) in [
            (READ, r.read_bytes),
            (FILES, r.files),
            (STORED, r.stored_bytes),
            (FAILED_ITEMS, r.failed_items),
        ] {
            if let Some(v) = v {
                counter(&m, def, v, &plain);
            }
        }
        gauge(&m, LOCK_WAIT, lock_wait, &plain);
    }
}

/// Record what the maintenance job found in the repository.
pub fn record_repository(state: &RepositoryState) {
    let m = meter();
    let now = unix_now();
    let repo = [KeyValue::new(REPOSITORY, state.repository.clone())];
    gauge(&m, REPO_SIZE, state.size_bytes as f64, &repo);
    gauge(&m, REPO_PACKS, state.packs as f64, &repo);
    gauge(&m, LOCKS_EXPIRED, state.expired_locks as f64, &repo);
    if let Some(p) = state.check_problems {
        gauge(&m, CHECK_PROBLEMS, p as f64, &repo);
    }
    for s in &state.sources {
        let mut a = repo.to_vec();
        a.extend(attrs(s.cluster.as_deref(), Some(&s.source), None));
        gauge(&m, REPO_SNAPSHOTS, s.snapshots as f64, &a);
        gauge(&m, NEWEST, s.newest, &a);
        gauge(&m, NEWEST_AGE, (now - s.newest).max(0.0), &a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Prometheus name follows from the OpenTelemetry name and unit by the receiver's
    /// default translation (dots to underscores, unit suffix, `_total` on counters); a
    /// catalogue entry that disagrees would send the rules and dashboard after a name that
    /// never arrives.
    #[test]
    fn prometheus_names_follow_the_otlp_translation() {
        for d in CATALOGUE {
            let mut expect = d.name.replace('.', "_");
            let unit = match d.unit {
                "s" => Some("seconds"),
                "By" => Some("bytes"),
                u if u.starts_with('{') => None,
                u => panic!("{}: unit {u} not mapped", d.name),
            };
            if let Some(u) = unit
                && !expect.ends_with(u)
            {
                expect = format!("{expect}_{u}");
            }
            if d.kind == Kind::Counter {
                expect.push_str("_total");
            }
            assert_eq!(d.prometheus, expect, "{}", d.name);
        }
        let mut names: Vec<_> = CATALOGUE.iter().map(|d| d.prometheus).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "duplicate names");
    }
}
