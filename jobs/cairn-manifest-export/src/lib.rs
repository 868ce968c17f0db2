//! The manifest export job: discover every served resource (CRDs and their custom resources
//! included), list each with pagination and bounded concurrency, and store every object, with
//! its status, as one YAML file at a stable path (see `cairn_kube::layout`). Objects
//! stream from the API server into the repository: memory holds a page per concurrent list,
//! not the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use cairn_core::Exit;
use cairn_core::fs::{BackupOptions, VirtualFile, backup_files};
use cairn_core::progress::human_bytes;
use cairn_core::records::{ManifestsMeta, ManifestsRecord, SnapshotRecord};
use cairn_core::repo::Failure;
use cairn_core::repo::lock::BackupLocks;
use cairn_core::repo::short_id;
use cairn_job::config::{LockArgs, Need, RepoArgs, SnapshotLabels};
use cairn_job::report::{self, JobReport, Report};
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use cairn_kube::collect::{CollectOptions, Exported, Filters, collect};
use cairn_kube::layout::{self, Resource};
use cairn_kube::normalize::strip_managed_fields;
use cairn_kube::{KubeArgs, classify, discover, to_yaml};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterResources {
    /// Cluster-scoped objects when no --namespace is given.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Parser)]
#[command(
    name = "cairn-manifest-export",
    version,
    about = "Export every Kubernetes API object into a cairn repository",
    long_about = "Export every Kubernetes API object into a cairn repository.\n\n\
        Discovers every served group at its preferred version (CRDs and custom resources \
        included), lists each resource with pagination and bounded concurrency, and stores \
        each object, status included, as YAML at\n  cluster/<group>/<resource>/<name>.yaml\n  \
        namespaces/<ns>/<group>/<resource>/<name>.yaml\n(`core` for the legacy group), with \
        cluster/version.json, cluster/discovery.json and cluster/resource-versions.json. \
        Secrets are stored too: the repository is encrypted and a write key cannot read them \
        back.\n\n\
        Needs get/list on what it exports (a read-only ClusterRole; with --namespace NAME, a \
        Role in that namespace suffices). A resource it may not list is reported and makes \
        the run partial; an API group that fails discovery (an aggregated API whose backend \
        is down) is reported and skipped.\n\n\
        Exit codes: 0 ok, 1 retryable (API server or store unreachable), 2 usage, 3 partial \
        (some resources denied; the snapshot is saved), 4 credentials refused, 5 another \
        export of this cluster is running."
)]
pub struct Cli {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Only namespaces matching this glob. Repeatable. Plain names are listed namespace by
    /// namespace (a Role per namespace suffices); globs list cluster-wide and filter.
    #[arg(long = "namespace", short = 'n', env = "CAIRN_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Leave out namespaces matching this glob. Repeatable.
    #[arg(long = "exclude-namespace", env = "CAIRN_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Only these resources (`deployments.apps`, `configmaps`, `Certificate`). Repeatable.
    #[arg(long = "resource", env = "CAIRN_RESOURCES", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Leave out these resources. Repeatable.
    #[arg(long = "exclude-resource", env = "CAIRN_EXCLUDE_RESOURCES", value_delimiter = ',')]
    pub exclude_resources: Vec<String>,
    /// Only objects matching this label selector (as kubectl -l).
    #[arg(long, short = 'l', env = "CAIRN_SELECTOR")]
    pub selector: Option<String>,
    /// Export cluster-scoped objects: auto = unless --namespace is given.
    #[arg(long, env = "CAIRN_CLUSTER_RESOURCES", value_enum, default_value = "auto")]
    pub cluster_resources: ClusterResources,
    /// Keep metadata.managedFields (dropped by default: large and only noise for restores).
    #[arg(long, env = "CAIRN_KEEP_MANAGED_FIELDS")]
    pub keep_managed_fields: bool,
    /// Export Events too (left out by default).
    #[arg(long, env = "CAIRN_INCLUDE_EVENTS")]
    pub include_events: bool,
    /// Lists running at once.
    #[arg(long, env = "CAIRN_CONCURRENCY", default_value = "8")]
    pub concurrency: usize,
    /// Objects per list page.
    #[arg(long, env = "CAIRN_PAGE_SIZE", default_value = "500")]
    pub page_size: u32,
    /// Snapshot source name.
    #[arg(long, env = "CAIRN_SOURCE", default_value = "manifests")]
    pub source: String,
    #[command(flatten)]
    pub labels: SnapshotLabels,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn-manifest-export")
    }

    fn metric_scope(&self) -> (Option<String>, Option<String>) {
        (self.labels.cluster.clone(), Some(self.source.clone()))
    }
}

/// What the run did, printed at the end (`--json` for CI).
pub type Summary = Report<Export>;

/// The export's own report fields.
#[derive(Debug, Default, Serialize)]
pub struct Export {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub objects: u64,
    pub resources: usize,
    pub bytes: u64,
    pub new_bytes: u64,
    /// Objects per resource (`deployments.apps`: 12).
    pub per_resource: BTreeMap<String, u64>,
    /// Lists the identity may not make: the run is partial.
    pub denied: Vec<String>,
    /// Groups and resources skipped because the server could not serve them.
    pub skipped: Vec<String>,
}

const PROG: &str = "cairn-manifest-export";

pub async fn run(cli: Cli) -> Exit {
    let summary = execute(&cli).await;
    summary.print(PROG, cli.output.json);
    summary.exit_class()
}

/// Run the export and return its summary (what `run` prints); failures are reported on
/// stderr and in the summary.
pub async fn execute(cli: &Cli) -> Summary {
    let export_fields = Export {
        source: cli.source.clone(),
        cluster: cli.labels.cluster.clone(),
        ..Default::default()
    };
    report::run(PROG, export_fields, async |e: &mut Export| {
        export(cli, e).await?;
        Ok(if e.denied.is_empty() { Exit::Success } else { Exit::Partial })
    })
    .await
}

impl JobReport for Export {
    fn runs(r: &Report<Self>) -> Vec<cairn_job::metrics::SourceRun> {
        vec![cairn_job::metrics::SourceRun {
            read_bytes: Some(r.bytes),
            files: Some(r.objects),
            stored_bytes: Some(r.new_bytes),
            failed_items: Some(r.denied.len() as u64),
            ..r.run_facts(r.cluster.as_deref(), Some(&r.source))
        }]
    }

    fn render(r: &Report<Self>) -> String {
        use std::fmt::Write;
        let s = &r.job;
        let mut out = String::new();
        let Some(id) = &s.snapshot else { return out };
        let secs = r.seconds();
        let _ = writeln!(
            out,
            "manifest snapshot {} saved ({}{})",
            short_id(id),
            s.source,
            s.server_version.as_deref().map(|v| format!(", Kubernetes {v}")).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  {} objects of {} resources, {} ({} new) in {secs:.1}s ({:.0} objects/s)",
            s.objects,
            s.resources,
            human_bytes(s.bytes),
            human_bytes(s.new_bytes),
            s.objects as f64 / secs.max(0.001)
        );
        let mut top: Vec<(&String, &u64)> = s.per_resource.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = top.iter().take(6).map(|(r, n)| format!("{r} {n}")).collect();
        if !shown.is_empty() {
            let _ = writeln!(out, "  most: {}", shown.join(", "));
        }
        for d in &s.denied {
            let _ = writeln!(out, "  DENIED  {d}");
        }
        for d in &s.skipped {
            let _ = writeln!(out, "  skipped {d}");
        }
        out
    }
}

fn render(item: Exported, keep_managed_fields: bool) -> cairn_core::Result<VirtualFile> {
    match item {
        Exported::Object(path, mut obj) => {
            if !keep_managed_fields {
                strip_managed_fields(&mut obj);
            }
            // A stable mtime (the object's creation) keeps unchanged directories deduplicated.
            let mtime_ns = obj
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(0, |t| t.unix_timestamp_nanos());
            Ok(VirtualFile { path: path.path(), content: to_yaml(&obj)?.into_bytes(), mtime_ns })
        }
        Exported::File(path, content) => Ok(VirtualFile { path, content, mtime_ns: 0 }),
    }
}

impl Cli {
    fn filters(&self) -> Filters {
        Filters {
            namespaces: self.namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            resources: self.resources.clone(),
            exclude_resources: self.exclude_resources.clone(),
            selector: self.selector.clone(),
            include_events: self.include_events,
            cluster_resources: match self.cluster_resources {
                ClusterResources::Auto => None,
                ClusterResources::Always => Some(true),
                ClusterResources::Never => Some(false),
            },
        }
    }
}

async fn export(cli: &Cli, summary: &mut Export) -> anyhow::Result<()> {
    let filters = cli.filters();
    let ns_filter =
        filters.namespace_filter().map_err(|e| cairn_core::exit::usage(e.to_string()))?;
    filters.selector().map_err(|e| cairn_core::exit::usage(e.to_string()))?;
    if cli.concurrency == 0 || cli.page_size == 0 {
        return Err(cairn_core::exit::usage("--concurrency and --page-size must be at least 1"));
    }
    let client = cli.kube.client().await.context("connecting to the cluster")?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| classify("asking the API server for its version", e))?;
    summary.server_version = Some(version.git_version.clone());
    let discovery = discover(&client, cli.concurrency).await.context("discovering resources")?;
    for (gv, e) in &discovery.failures {
        summary.skipped.push(format!("API group {gv}: {e}"));
    }
    let resources = filters.select(&discovery.resources, &ns_filter);
    summary.resources = resources.len();

    let repo = Arc::new(cli.repo.open(Need::Write).await.context("opening the repository")?);
    let lock_source = cli.labels.lock_source(&cli.source);
    let locks = BackupLocks::acquire(&repo, &lock_source, &cli.lock.options("manifest export"))
        .await
        .with_context(|| format!("locking source {lock_source}"))?;
    let result = export_locked(
        cli, summary, &client, &repo, &locks, &filters, &resources, version, discovery,
    )
    .await;
    let released = locks.release().await;
    result?;
    released.context("releasing locks")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn export_locked(
    cli: &Cli,
    summary: &mut Export,
    client: &kube::Client,
    repo: &Arc<cairn_core::repo::Repository>,
    locks: &BackupLocks,
    filters: &Filters,
    resources: &[Resource],
    version: k8s_openapi::apimachinery::pkg::version::Info,
    discovery: cairn_kube::Discovery,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Exported>(1024);
    let keep_managed = cli.keep_managed_fields;
    let opts = BackupOptions {
        source: cli.source.clone(),
        cluster: cli.labels.cluster.clone(),
        tags: cli.labels.tag_map(),
        guard: Some(locks.guard()),
        ..Default::default()
    };
    let backup = backup_files(repo.clone(), rx, move |item| render(item, keep_managed), opts);
    let collect_opts = CollectOptions { concurrency: cli.concurrency, page_size: cli.page_size };
    // Owns the sender: when this ends, however it ends, the backup sees the end of input.
    let produce = async move {
        let file = |path: &str, v: &Value| {
            Exported::File(path.to_string(), serde_json::to_vec_pretty(v).unwrap_or_default())
        };
        let _ = tx.send(file(layout::VERSION_FILE, &serde_json::to_value(&version)?)).await;
        let _ = tx.send(file(layout::DISCOVERY_FILE, &discovery.document)).await;
        let collected = collect(client, filters, resources, &collect_opts, &tx).await?;
        let rvs = serde_json::to_value(&collected.resource_versions)?;
        let _ = tx.send(file(layout::RESOURCE_VERSIONS_FILE, &rvs)).await;
        anyhow::Ok(collected)
    };
    let (collected, prepared) = tokio::join!(produce, backup);
    let collected = collected.context("listing objects")?;
    let mut prepared = prepared.context("storing objects")?;

    summary.objects = collected.per_resource.values().sum();
    summary.per_resource = collected.per_resource;
    summary.denied = collected.denied;
    summary.skipped.extend(collected.skipped);
    let snapshot = &mut prepared.snapshot;
    for d in &summary.denied {
        snapshot.failures.push(Failure { path: String::new(), error: d.clone() });
    }
    snapshot.partial = !snapshot.failures.is_empty();
    let record = ManifestsRecord {
        server_version: summary.server_version.clone(),
        objects: summary.objects,
        resources: summary.resources,
        per_resource: summary.per_resource.clone(),
        denied: summary.denied.clone(),
        skipped: summary.skipped.clone(),
        filters: serde_json::to_value(filters).context("recording the filters")?,
        managed_fields: cli.keep_managed_fields,
    };
    snapshot.meta = ManifestsMeta { manifests: record }.to_meta();
    let out =
        prepared.commit(repo, Some(&locks.guard())).await.context("committing the snapshot")?;
    summary.snapshot = Some(out.id.to_hex());
    summary.bytes = out.snapshot.summary.bytes;
    summary.new_bytes = out.snapshot.summary.new_bytes;
    if summary.objects == 0 && summary.denied.is_empty() {
        tracing::warn!("no object matched the filters");
    }
    Ok(())
}
