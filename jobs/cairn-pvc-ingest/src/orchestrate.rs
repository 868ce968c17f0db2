//! Orchestrator mode (the CronJob): select PVCs, and for each one cut a CSI VolumeSnapshot,
//! clone it into a temporary PVC, run an ingest pod on the clone, collect its summary, and
//! clean up. Parallel across PVCs up to `--parallel`; one PVC failing does not stop the
//! others. Every temporary object is labelled (`cairn_kube::temp`), owned by the
//! ingest Job where it can be, deleted when its PVC is done, deleted again on SIGTERM with
//! its own deadline, and swept by the next run should all of that fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_core::Exit;
use cairn_core::filter::NamespaceFilter;
use cairn_core::progress::human_bytes;
use cairn_core::records::{
    APPLICATION_CONSISTENT, HooksRecord, PvcMeta, PvcMode, PvcRecord, SnapshotRecord,
    VolumeGroupSnapshotRecord, VolumeSnapshotRecord,
};
use cairn_core::repo::lock::{Lock, LockKind};
use cairn_core::repo::short_id;
use cairn_job::config::{ChunkingArgs, LockArgs, Need, RepoArgs, SnapshotLabels, parse_duration};
use cairn_job::metrics::SourceRun;
use cairn_kube::hooks::{self, Registry};
use cairn_kube::list::list_all;
use cairn_kube::podjob::{
    DEVICE_PATH, VOLUME_PATH, WaitOptions, WorkerArgs, WorkerJob, WorkerSecurity, WorkerVolume,
};
use cairn_kube::temp::{self, Swept, TempOwner, object_name};
use cairn_kube::worker::{self, Report, Slim, WorkerObjects, WorkerReport, WorkerRun};
use cairn_kube::{KubeArgs, classify, volsnap};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, ResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::dump::{self, DumpResult};
use crate::ingest::IngestReport;

impl Slim for IngestReport {
    fn slim(&mut self) {
        self.failures.clear();
        if let Some(e) = &mut self.error {
            worker::cut(e, 1024);
        }
    }
}

impl Report for IngestReport {
    fn exit_code(&self) -> u8 {
        self.exit_code
    }
}

/// A PVC opts in (`"true"`) or out (`"false"`) with this annotation.
pub const ENABLED_ANNOTATION: &str = "backup.cairn.dev/enabled";
/// A StorageClass (or PVC) says which access mode a clone may ask for.
pub const CLONE_ACCESS_ANNOTATION: &str = "backup.cairn.dev/clone-access-mode";
pub const COMPONENT: &str = "pvc-ingest";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// CSI VolumeSnapshot → temporary PVC → ingest pod (crash-consistent).
    Snapshot,
    /// Mount the live PVC read-only next to its consumer (no snapshot: not consistent).
    Live,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    pub labels: SnapshotLabels,
    /// Only PVCs in namespaces matching this glob. Repeatable. Plain names are listed
    /// namespace by namespace (RoleBindings in those namespaces suffice).
    #[arg(long = "namespace", short = 'n', env = "CAIRN_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Leave out namespaces matching this glob. Repeatable.
    #[arg(long = "exclude-namespace", env = "CAIRN_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Chunking flags handed to every ingest pod.
    #[command(flatten)]
    pub chunking: ChunkingArgs,
    /// Only PVCs matching this label selector.
    #[arg(long, short = 'l', env = "CAIRN_SELECTOR")]
    pub selector: Option<String>,
    /// Only PVCs annotated backup.cairn.dev/enabled=true (by default every selected PVC is
    /// backed up unless annotated =false).
    #[arg(long, env = "CAIRN_OPT_IN")]
    pub opt_in: bool,
    /// snapshot: through CSI VolumeSnapshots; live: the live volume, read-only.
    #[arg(long, env = "CAIRN_MODE", value_enum, default_value = "snapshot")]
    pub mode: Mode,
    /// PVCs processed at once.
    #[arg(long, env = "CAIRN_PARALLEL", default_value = "2")]
    pub parallel: usize,
    /// Name of this orchestrator (several with different selections can share a cluster);
    /// one run per instance at a time.
    #[arg(long, env = "CAIRN_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Image of the ingest pods. Default, in a pod: this pod's own image (so a registry
    /// mapping or digest pin applies to both); required outside one.
    #[arg(long, env = "CAIRN_INGEST_IMAGE")]
    pub ingest_image: Option<String>,
    /// The ingest binary inside that image.
    #[arg(long, env = "CAIRN_INGEST_COMMAND", default_value = "/usr/local/bin/cairn-pvc-ingest")]
    pub ingest_command: String,
    /// ServiceAccount of the ingest pods (must exist in each namespace; its token is not
    /// mounted). Use one that carries a cloud identity (IRSA, Workload Identity) when the
    /// store's credentials are not static.
    #[arg(long, env = "CAIRN_INGEST_SERVICE_ACCOUNT")]
    pub ingest_service_account: Option<String>,
    /// Who the ingest pod runs as: `root` (root limited to DAC_READ_SEARCH: reads every
    /// file, may do nothing else) or a numeric uid (reads what that uid and --ingest-fs-group
    /// may read; needs no capability).
    #[arg(long, env = "CAIRN_INGEST_RUN_AS", default_value = "root")]
    pub ingest_run_as: String,
    #[arg(long, env = "CAIRN_INGEST_FS_GROUP")]
    pub ingest_fs_group: Option<i64>,
    /// CPU request of an ingest pod.
    #[arg(long, env = "CAIRN_INGEST_CPU", default_value = "500m")]
    pub ingest_cpu: String,
    /// Memory request and limit of an ingest pod.
    #[arg(long, env = "CAIRN_INGEST_MEMORY", default_value = "512Mi")]
    pub ingest_memory: String,
    /// Access mode of the temporary PVC: ReadWriteOnce works everywhere; ReadOnlyMany where
    /// the driver supports it. A StorageClass annotated backup.cairn.dev/clone-access-mode
    /// overrides this.
    #[arg(long, env = "CAIRN_CLONE_ACCESS_MODE", default_value = "ReadWriteOnce")]
    pub clone_access_mode: String,
    /// How long a VolumeSnapshot may take to become ready.
    #[arg(long, env = "CAIRN_SNAPSHOT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub snapshot_timeout: Duration,
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// How long an ingest pod waits for its PVC's lock (a previous run's pod still ending).
    #[arg(long, env = "CAIRN_INGEST_LOCK_WAIT", default_value = "10m", value_parser = parse_duration)]
    pub ingest_lock_wait: Duration,
    /// Snapshot every PVC on its own even where the cluster serves VolumeGroupSnapshots (by
    /// default PVCs sharing a backup.cairn.dev/group label in a namespace are cut together).
    #[arg(long, env = "CAIRN_NO_GROUP_SNAPSHOTS")]
    pub no_group_snapshots: bool,
    /// Run no backup hooks (the pods' backup.cairn.dev/pre-hook and post-hook annotations
    /// are ignored; the orchestrator then needs no pods/exec right for them).
    #[arg(long, env = "CAIRN_NO_HOOKS")]
    pub no_hooks: bool,
    /// Take no streamed dumps (pods' backup.cairn.dev/dump-command annotations are ignored).
    #[arg(long, env = "CAIRN_NO_DUMPS")]
    pub no_dumps: bool,
    /// List what would be backed up, change nothing.
    #[arg(long, env = "CAIRN_DRY_RUN")]
    pub dry_run: bool,
}

/// One PVC's result.
#[derive(Debug, Clone, Serialize)]
pub struct PvcResult {
    pub pvc: String,
    pub ok: bool,
    pub exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub new_bytes: u64,
    pub files_read: u64,
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class: Option<String>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup hooks run around its cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksRecord>,
    /// What went wrong without losing the snapshot (a post hook that failed under `fail`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl PvcResult {
    /// A PVC that has not got anywhere (yet): failed, retryable.
    fn failed(pvc: String, exit_code: u8, error: Option<String>) -> PvcResult {
        PvcResult {
            pvc,
            ok: false,
            exit_code,
            snapshot: None,
            files: 0,
            bytes: 0,
            new_bytes: 0,
            files_read: 0,
            bytes_read: 0,
            volume_snapshot_class: None,
            duration_ms: 0,
            error,
            hooks: None,
            warnings: Vec::new(),
        }
    }
}

/// What the run did (`--json` for CI).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub exit: &'static str,
    pub exit_code: u8,
    pub run: String,
    pub mode: Option<Mode>,
    pub pvcs: Vec<PvcResult>,
    /// Streamed dumps (pods annotated backup.cairn.dev/dump-command).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpResult>,
    /// PVCs and dumps.
    pub succeeded: usize,
    pub failed: usize,
    /// PVCs selected but left out (unbound, opted out), with why.
    pub skipped: Vec<String>,
    pub bytes: u64,
    pub new_bytes: u64,
    /// Leftovers of earlier runs removed at the start.
    pub swept: Swept,
    /// Temporary objects that could not be deleted (they carry labels and an expiry: the
    /// next run sweeps them).
    pub cleanup_errors: Vec<String>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(repo: &RepoArgs, args: &RunArgs, json: bool) -> Exit {
    let started = Instant::now();
    let mut summary = Summary { mode: Some(args.mode), ..Default::default() };
    let result = orchestrate(repo, args, &mut summary).await;
    let ok = match (summary.succeeded, summary.failed) {
        (_, 0) => Exit::Success,
        (0, _) => worst(
            summary
                .pvcs
                .iter()
                .map(|p| p.exit_code)
                .chain(summary.dumps.iter().map(|d| d.exit_code)),
        ),
        _ => Exit::Partial,
    };
    let (exit, error) = cairn_core::exit::conclude("cairn-pvc-ingest", result, ok);
    summary.exit = exit.as_str();
    summary.exit_code = exit.code();
    summary.error = error;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    cairn_job::metrics::record_runs(&run_metrics(&summary, args.labels.cluster.as_deref()));
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
        print_summary(&summary);
    }
    exit
}

/// The run's metrics: one entry for the run as a whole (no source), and one per PVC with its
/// own outcome, under its snapshots' source (`pvc/NS/NAME`).
fn run_metrics(s: &Summary, cluster: Option<&str>) -> Vec<SourceRun> {
    let whole = SourceRun {
        cluster: cluster.map(str::to_string),
        source: None,
        outcome: s.exit.to_string(),
        seconds: s.duration_ms as f64 / 1000.0,
        read_bytes: Some(
            s.pvcs.iter().map(|p| p.bytes_read).chain(s.dumps.iter().map(|d| d.bytes)).sum(),
        ),
        files: Some(s.pvcs.iter().map(|p| p.files_read).sum()),
        stored_bytes: Some(s.new_bytes),
        failed_items: Some(s.failed as u64),
    };
    let per_pvc = s.pvcs.iter().map(|p| SourceRun {
        cluster: cluster.map(str::to_string),
        source: Some(match p.pvc.split_once('/') {
            Some((ns, name)) => crate::ingest::pvc_source(ns, name),
            None => p.pvc.clone(),
        }),
        outcome: Exit::from_code(p.exit_code).as_str().to_string(),
        seconds: p.duration_ms as f64 / 1000.0,
        read_bytes: Some(p.bytes_read),
        files: Some(p.files_read),
        stored_bytes: Some(p.new_bytes),
        failed_items: Some(u64::from(!p.ok)),
    });
    let per_dump = s.dumps.iter().filter(|d| !d.source.is_empty()).map(|d| SourceRun {
        cluster: cluster.map(str::to_string),
        source: Some(d.source.clone()),
        outcome: Exit::from_code(d.exit_code).as_str().to_string(),
        seconds: d.duration_ms as f64 / 1000.0,
        read_bytes: Some(d.bytes),
        files: Some(u64::from(d.ok)),
        stored_bytes: Some(d.new_bytes),
        failed_items: Some(u64::from(!d.ok)),
    });
    std::iter::once(whole).chain(per_pvc).chain(per_dump).collect()
}

/// Nothing succeeded: usage when every PVC failed for a reason of configuration, else
/// retryable.
fn worst(mut codes: impl Iterator<Item = u8>) -> Exit {
    if codes.all(|c| c == Exit::Usage.code()) { Exit::Usage } else { Exit::Retryable }
}

fn print_summary(s: &Summary) {
    if s.error.is_some() && s.pvcs.is_empty() {
        // The failure is already on stderr; there is nothing to sum up.
        return;
    }
    let secs = s.duration_ms as f64 / 1000.0;
    let dumps = match s.dumps.len() {
        0 => String::new(),
        n => format!(" and dumps, {n} of them"),
    };
    println!(
        "pvc ingest run {}: {} of {} PVCs{dumps} backed up, {} ({} new) in {secs:.1}s",
        s.run,
        s.succeeded,
        s.pvcs.len() + s.dumps.len(),
        human_bytes(s.bytes),
        human_bytes(s.new_bytes)
    );
    for r in &s.pvcs {
        match (&r.snapshot, &r.error) {
            (Some(id), None) => println!(
                "  ok      {:<40} snapshot {}  {} files, {} ({} new, {} files read)  {:.1}s",
                r.pvc,
                short_id(id),
                r.files,
                human_bytes(r.bytes),
                human_bytes(r.new_bytes),
                r.files_read,
                r.duration_ms as f64 / 1000.0
            ),
            (_, err) => println!(
                "  FAILED  {:<40} exit {}: {}",
                r.pvc,
                r.exit_code,
                err.as_deref().unwrap_or("unknown")
            ),
        }
        if let Some(h) = &r.hooks {
            let consistent = if h.application_consistent {
                "application-consistent"
            } else {
                "NOT application-consistent"
            };
            println!("          hooks: {} run, {consistent}", h.runs.len());
        }
        for w in &r.warnings {
            println!("          WARNING {w}");
        }
    }
    for d in &s.dumps {
        match (&d.snapshot, &d.error) {
            (Some(id), None) => println!(
                "  ok      {:<40} snapshot {}  {} ({} new) from pod {}  {:.1}s",
                d.source,
                short_id(id),
                human_bytes(d.bytes),
                human_bytes(d.new_bytes),
                d.pod,
                d.duration_ms as f64 / 1000.0
            ),
            (_, err) => println!(
                "  FAILED  {:<40} exit {}: {}",
                if d.source.is_empty() { &d.pod } else { &d.source },
                d.exit_code,
                err.as_deref().unwrap_or("unknown")
            ),
        }
    }
    for sk in &s.skipped {
        println!("  skipped {sk}");
    }
    if !s.swept.objects.is_empty() {
        println!("  swept {} leftovers of earlier runs", s.swept.objects.len());
    }
    for e in s.cleanup_errors.iter().chain(&s.swept.errors) {
        println!("  CLEANUP {e}");
    }
}

/// Shared state of one run.
struct Ctx {
    client: kube::Client,
    args: RunArgsView,
    owner: TempOwner,
    /// The credentials Secret's data (repository URL, write key, store credentials).
    secret_data: BTreeMap<String, String>,
    /// The served version of groupsnapshot.storage.k8s.io, when groups are used.
    group_version: Option<String>,
    /// Temporary objects not deleted yet: what a cancellation must still clean up.
    live: Mutex<Vec<TempObject>>,
    /// Post hooks due: a cancellation runs them before anything else.
    hooks: Registry,
    run_hooks: bool,
    cleanup_errors: Mutex<Vec<String>>,
}

/// The flags the per-PVC work needs (cheap to share).
#[derive(Debug, Clone)]
struct RunArgsView {
    mode: Mode,
    cluster: Option<String>,
    tags: Vec<(String, String)>,
    chunking: ChunkingArgs,
    image: String,
    command: String,
    pull_policy: Option<String>,
    service_account: Option<String>,
    security: WorkerSecurity,
    resources: ResourceRequirements,
    clone_access_mode: String,
    snapshot_timeout: Duration,
    job_timeout: Duration,
    pending_timeout: Duration,
    cleanup_timeout: Duration,
    poll: Duration,
    lock_lease: Duration,
    ingest_lock_wait: Duration,
}

impl RunArgsView {
    fn new(args: &RunArgs, image: String, security: WorkerSecurity) -> RunArgsView {
        RunArgsView {
            mode: args.mode,
            cluster: args.labels.cluster.clone(),
            tags: args.labels.tags.clone(),
            chunking: args.chunking.clone(),
            image,
            command: args.ingest_command.clone(),
            pull_policy: args.worker.image_pull_policy.clone(),
            service_account: args.ingest_service_account.clone(),
            security,
            resources: resources(&args.ingest_cpu, &args.ingest_memory),
            clone_access_mode: args.clone_access_mode.clone(),
            snapshot_timeout: args.snapshot_timeout,
            job_timeout: args.worker.job_timeout,
            pending_timeout: args.worker.pending_timeout,
            cleanup_timeout: args.worker.cleanup_timeout,
            poll: args.worker.poll,
            lock_lease: args.lock.lock_lease,
            ingest_lock_wait: args.ingest_lock_wait,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TempObject {
    /// A worker Job and the clone made for it.
    Worker(WorkerObjects),
    Snapshot(String, String),
    /// (version, namespace, name) of a VolumeGroupSnapshot.
    Group(String, String, String),
}

/// What a worker unit backs up: one PVC, or the PVCs of one namespace sharing a group label
/// (snapshotted together).
enum Unit {
    One(Box<PersistentVolumeClaim>),
    Group { ns: String, group: String, pvcs: Vec<PersistentVolumeClaim> },
}

/// A VolumeSnapshot cut for the PVC by someone else (a group snapshot).
#[derive(Debug, Clone)]
struct GivenSnapshot {
    name: String,
    class: String,
    group: String,
    hooks: Option<HooksRecord>,
}

async fn orchestrate(repo: &RepoArgs, args: &RunArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.parallel == 0 {
        return Err(cairn_core::exit::usage("--parallel must be at least 1"));
    }
    let security = match args.ingest_run_as.as_str() {
        "root" => WorkerSecurity::reader(),
        uid => WorkerSecurity::non_root(
            uid.parse().map_err(|_| {
                cairn_core::exit::usage(format!("--ingest-run-as {uid:?}: root or a uid"))
            })?,
            args.ingest_fs_group,
        ),
    };
    if !matches!(
        args.clone_access_mode.as_str(),
        "ReadWriteOnce" | "ReadOnlyMany" | "ReadWriteOncePod"
    ) {
        return Err(cairn_core::exit::usage(format!(
            "--clone-access-mode {:?}: ReadWriteOnce, ReadOnlyMany or ReadWriteOncePod",
            args.clone_access_mode
        )));
    }
    let ns_filter = NamespaceFilter::new(&args.namespaces, &args.exclude_namespaces)?;
    let client = args.kube.client().await.context("connecting to the cluster")?;
    let image =
        cairn_kube::own_pod::worker_image(&client, args.ingest_image.as_deref(), "--ingest-image")
            .await?;
    // The ingest pods get the same repository and write key: open it here first, so a bad
    // credential fails once, not once per PVC.
    let repository = Arc::new(repo.open(Need::Write).await.context("opening the repository")?);
    let write_key = repository.write_key().to_text();
    let secret_data = args.worker.secret_env(BTreeMap::from([
        ("CAIRN_REPO".to_string(), repo.url()?.to_string()),
        ("CAIRN_WRITE_KEY".to_string(), write_key),
    ]));
    let max_age = args.snapshot_timeout
        + args.worker.job_timeout
        + args.worker.pending_timeout
        + args.worker.cleanup_timeout;
    let owner = TempOwner::new(COMPONENT, &args.instance, max_age);
    summary.run = owner.run.clone();
    tracing::info!(run = %owner.run, instance = %args.instance, mode = ?args.mode, "pvc ingest run starting");

    if args.mode == Mode::Snapshot && !volsnap::served(&client).await? {
        return Err(cairn_core::exit::usage(
            "the cluster does not serve snapshot.storage.k8s.io/v1: install the CSI snapshot \
             CRDs and controller, or use --mode live",
        ));
    }
    let group_version = match (args.mode, args.no_group_snapshots) {
        (Mode::Snapshot, false) => volsnap::group_version(&client).await?,
        _ => None,
    };
    let pvcs = select_pvcs(&client, args, &ns_filter, summary).await?;
    let dumps = match args.no_dumps {
        true => (Vec::new(), Vec::new()),
        false => dump::plan(dump::select(&client, &ns_filter).await?),
    };
    if args.dry_run {
        for p in &pvcs {
            println!("would back up {}", pvc_key(p));
        }
        for d in &dumps.0 {
            println!(
                "would dump {} from pod {}/{}: {:?}",
                d.source(),
                d.namespace,
                d.pod,
                d.command
            );
        }
        return Ok(());
    }
    let lock_name = args.labels.lock_source(&format!("pvc-ingest/{}", args.instance));
    let lock = Lock::acquire(
        &repository,
        LockKind::Source(lock_name.clone()),
        &args.lock.options("pvc ingest run"),
    )
    .await
    .with_context(|| format!("locking {lock_name}"))?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        args: RunArgsView::new(args, image, security),
        owner,
        secret_data,
        group_version,
        live: Mutex::new(Vec::new()),
        hooks: Registry::default(),
        run_hooks: !args.no_hooks,
        cleanup_errors: Mutex::new(Vec::new()),
    });
    let result = run_locked(&ctx, args, &ns_filter, pvcs, dumps, &repository, summary).await;
    summary.cleanup_errors = ctx.cleanup_errors.lock().clone();
    let released = lock.release().await;
    result?;
    released.context("releasing the run lock")?;
    Ok(())
}

async fn run_locked(
    ctx: &Arc<Ctx>,
    args: &RunArgs,
    ns_filter: &NamespaceFilter,
    pvcs: Vec<PersistentVolumeClaim>,
    (dumps, bad_dumps): (Vec<dump::DumpSpec>, Vec<(String, String)>),
    repository: &Arc<cairn_core::repo::Repository>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    // We hold the instance lock: whatever another run of this instance left is garbage.
    sweep(ctx, ns_filter, &mut summary.swept).await.context("sweeping leftovers")?;
    let units = plan_units(pvcs, ctx.group_version.is_some());
    let parallel = args.parallel;
    let work = futures::stream::iter(units.into_iter().map(|unit| {
        let ctx = ctx.clone();
        async move {
            match unit {
                Unit::One(pvc) => vec![backup_one(&ctx, *pvc, None).await],
                Unit::Group { ns, group, pvcs } => {
                    backup_group(&ctx, &ns, &group, pvcs, parallel).await
                }
            }
        }
    }))
    .buffer_unordered(args.parallel)
    .collect::<Vec<Vec<PvcResult>>>();
    let lock = args.lock.options("dump");
    let dump_ctx = dump::DumpCtx {
        client: &ctx.client,
        repo: repository,
        lock: &lock,
        cluster: args.labels.cluster.as_deref(),
        tags: args.labels.tag_map(),
        chunking: &args.chunking,
    };
    let dumped = futures::stream::iter(dumps.iter().map(|d| dump::run_one(&dump_ctx, d)))
        .buffer_unordered(args.parallel)
        .collect::<Vec<DumpResult>>();
    let (results, dumped) = tokio::select! {
        r = async { (work.await, dumped.await) } => r,
        sig = cairn_job::signal::shutdown() => {
            tracing::warn!(signal = sig, "cancelled: running due post hooks, cleaning up temporary objects");
            ctx.hooks.release_all(&ctx.client).await;
            cleanup_all(ctx).await;
            return Err(anyhow::anyhow!("cancelled by {sig}; post hooks run, temporary objects cleaned up"));
        }
    };
    cleanup_all(ctx).await;
    let mut dumped = dumped;
    dumped.extend(
        bad_dumps.into_iter().map(|(pod, why)| {
            DumpResult::failed(String::new(), pod, Exit::Usage.code(), Some(why))
        }),
    );
    dumped.sort_by(|a, b| (&a.source, &a.pod).cmp(&(&b.source, &b.pod)));
    let mut results: Vec<PvcResult> = results.into_iter().flatten().collect();
    results.sort_by(|a, b| a.pvc.cmp(&b.pvc));
    summary.succeeded =
        results.iter().filter(|r| r.ok).count() + dumped.iter().filter(|d| d.ok).count();
    summary.failed = results.len() + dumped.len() - summary.succeeded;
    summary.bytes = results.iter().map(|r| r.bytes).chain(dumped.iter().map(|d| d.bytes)).sum();
    summary.new_bytes =
        results.iter().map(|r| r.new_bytes).chain(dumped.iter().map(|d| d.new_bytes)).sum();
    summary.pvcs = results;
    summary.dumps = dumped;
    Ok(())
}

fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(memory.to_string()))])),
        ..Default::default()
    }
}

fn pvc_key(p: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The PVCs to back up: in the selected namespaces, matching the selector, bound, not our
/// own clones, and opted in (or not opted out).
async fn select_pvcs(
    client: &kube::Client,
    args: &RunArgs,
    ns_filter: &NamespaceFilter,
    summary: &mut Summary,
) -> anyhow::Result<Vec<PersistentVolumeClaim>> {
    let mut lp = ListParams::default().limit(500);
    if let Some(s) = &args.selector {
        lp = lp.labels(s);
    }
    let apis: Vec<Api<PersistentVolumeClaim>> = match ns_filter.literal() {
        Some(names) => names.iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
        None => vec![Api::all(client.clone())],
    };
    let mut out = Vec::new();
    for api in apis {
        for pvc in list_all(&api, &lp, "PersistentVolumeClaims").await? {
            let key = pvc_key(&pvc);
            let ns = pvc.metadata.namespace.clone().unwrap_or_default();
            if !ns_filter.matches(&ns) {
                continue;
            }
            let labels = pvc.metadata.labels.clone().unwrap_or_default();
            if labels.get(temp::MANAGED_BY).is_some_and(|v| v == temp::MANAGED_BY_VALUE) {
                continue;
            }
            let enabled = pvc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ENABLED_ANNOTATION))
                .map(String::as_str);
            match enabled {
                Some("false") => {
                    summary.skipped.push(format!("{key}: {ENABLED_ANNOTATION}=false"));
                    continue;
                }
                Some("true") => {}
                _ if args.opt_in => continue,
                _ => {}
            }
            let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase != "Bound" {
                summary.skipped.push(format!("{key}: not bound (phase {phase:?})"));
                continue;
            }
            out.push(pvc);
        }
    }
    out.sort_by_key(pvc_key);
    tracing::info!(pvcs = out.len(), skipped = summary.skipped.len(), "PVCs selected");
    Ok(out)
}

async fn sweep(ctx: &Ctx, ns_filter: &NamespaceFilter, swept: &mut Swept) -> anyhow::Result<()> {
    let client = &ctx.client;
    let namespaces = ns_filter.literal();
    macro_rules! apis {
        ($make_ns:expr, $make_all:expr) => {
            match &namespaces {
                Some(names) => names.iter().map(|n| $make_ns(n)).collect::<Vec<_>>(),
                None => vec![$make_all],
            }
        };
    }
    let jobs: Vec<Api<Job>> =
        apis!(|n: &String| Api::namespaced(client.clone(), n), Api::all(client.clone()));
    temp::sweep("Job", &jobs, &ctx.owner, true, swept).await?;
    let claims: Vec<Api<PersistentVolumeClaim>> =
        apis!(|n: &String| Api::namespaced(client.clone(), n), Api::all(client.clone()));
    temp::sweep("PersistentVolumeClaim", &claims, &ctx.owner, true, swept).await?;
    if ctx.args.mode == Mode::Snapshot {
        let ar = volsnap::snapshot_resource();
        let snaps: Vec<Api<kube::core::DynamicObject>> = apis!(
            |n: &String| Api::namespaced_with(client.clone(), n, &ar),
            Api::all_with(client.clone(), &ar)
        );
        temp::sweep("VolumeSnapshot", &snaps, &ctx.owner, true, swept).await?;
    }
    if let Some(v) = &ctx.group_version {
        let ar = volsnap::group_resource(v, "VolumeGroupSnapshot", "volumegroupsnapshots");
        let groups: Vec<Api<kube::core::DynamicObject>> = apis!(
            |n: &String| Api::namespaced_with(client.clone(), n, &ar),
            Api::all_with(client.clone(), &ar)
        );
        temp::sweep("VolumeGroupSnapshot", &groups, &ctx.owner, true, swept).await?;
    }
    Ok(())
}

/// Back up one PVC; never fails the run: the result says how it went.
async fn backup_one(
    ctx: &Ctx,
    pvc: PersistentVolumeClaim,
    given: Option<GivenSnapshot>,
) -> PvcResult {
    let started = Instant::now();
    let key = pvc_key(&pvc);
    let mut result = PvcResult::failed(key.clone(), Exit::Retryable.code(), None);
    let mut mine = Vec::new();
    let outcome = backup_one_inner(ctx, &pvc, given, &mut result, &mut mine).await;
    cleanup(ctx, &mine).await;
    match outcome {
        Ok(WorkerReport { report, truncated, .. }) => {
            result.exit_code = report.exit_code;
            result.ok = report.exit_code == Exit::Success.code()
                || report.exit_code == Exit::Partial.code();
            result.snapshot = report.snapshot;
            result.files = report.files;
            result.bytes = report.bytes;
            result.new_bytes = report.new_bytes;
            result.files_read = report.files_read;
            result.bytes_read = report.bytes_read;
            // The snapshot is saved, but a post hook failed: the application may need a
            // look. Partial, not failed.
            if result.ok && !result.warnings.is_empty() && result.exit_code == Exit::Success.code()
            {
                result.exit_code = Exit::Partial.code();
            }
            if !result.ok {
                result.error =
                    Some(report.error.unwrap_or_else(|| format!("ingest exited {}", report.exit)));
            } else if report.partial {
                result.error = None;
                tracing::warn!(pvc = %key, failures = report.failures.len(), truncated, "snapshot saved, some files unreadable");
            }
        }
        Err(e) => {
            let line = cairn_core::exit::one_line(&e);
            tracing::error!(pvc = %key, "{line}");
            result.exit_code = Exit::from_error(&e).code();
            result.error = Some(line);
        }
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(pvc = %key, ok = result.ok, exit_code = result.exit_code, "PVC done");
    result
}

/// Where a snapshot-mode ingest reads from: `(clone name, VolumeSnapshot, access mode,
/// size)`. Cuts the VolumeSnapshot (unless a group snapshot gave one), waits for it, and
/// records both in `meta`.
async fn snapshot_clone(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    given: Option<GivenSnapshot>,
    result: &mut PvcResult,
    mine: &mut Vec<TempObject>,
    meta: &mut PvcMeta,
) -> anyhow::Result<(String, String, String, String)> {
    let a = &ctx.args;
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let run = &ctx.owner.run;
    let (labels, annotations) = (ctx.owner.labels(), ctx.owner.annotations());
    let (driver, sc) = driver_of(&ctx.client, pvc).await?;
    let (snap, class) = match &given {
        Some(g) => {
            meta.volume_group_snapshot =
                Some(VolumeGroupSnapshotRecord { name: g.group.clone(), class: g.class.clone() });
            record_hooks(meta, result, g.hooks.clone());
            (g.name.clone(), g.class.clone())
        }
        None => {
            let requested =
                pvc.metadata.annotations.as_ref().and_then(|m| m.get(volsnap::CLASS_ANNOTATION));
            let class = volsnap::choose_class(&ctx.client, &driver, requested.map(String::as_str))
                .await
                .with_context(|| format!("choosing a VolumeSnapshotClass for {ns}/{name}"))?;
            let snap = object_name("cairn", &name, run, 63);
            let pod_hooks = pod_hooks(ctx, &ns, &[name.as_str()]).await?;
            // Pre hooks, the cut, post hooks: nothing between them may return early, so
            // that a pre hook's post hook always runs.
            let mut session = hooks::run_pre(&ctx.client, &ctx.hooks, &pod_hooks).await;
            let cut = match &session.refused {
                Some(why) => Err(anyhow::Error::from(cairn_core::Error::Retryable(format!(
                    "{why} (on-error fail: no snapshot cut)"
                )))),
                None => {
                    async {
                        track(ctx, mine, TempObject::Snapshot(ns.clone(), snap.clone()));
                        volsnap::create(&ctx.client, &ns, &snap, &name, &class, &labels, &annotations)
                            .await?;
                        tracing::info!(pvc = %format!("{ns}/{name}"), snapshot = %snap, class = %class, "VolumeSnapshot created");
                        if pod_hooks.is_empty() {
                            return anyhow::Ok(());
                        }
                        // The post hooks wait for the cut only, not for the upload.
                        volsnap::wait_cut(&ctx.client, &ns, &snap, a.snapshot_timeout, a.poll).await?;
                        Ok(())
                    }
                    .await
                }
            };
            hooks::run_post(&ctx.client, &mut session).await;
            if !pod_hooks.is_empty() {
                result.warnings.extend(session.post_failure());
                record_hooks(meta, result, Some(session.record()));
            }
            cut?;
            (snap, class)
        }
    };
    result.volume_snapshot_class = Some(class.clone());
    let ready = volsnap::wait_ready(&ctx.client, &ns, &snap, a.snapshot_timeout, a.poll).await?;
    tracing::info!(snapshot = %snap, waited_ms = ready.waited.as_millis() as u64, restore_size = ?ready.restore_size, "VolumeSnapshot ready");
    meta.volume_snapshot = Some(VolumeSnapshotRecord {
        class: class.clone(),
        driver: driver.clone(),
        restore_size: ready.restore_size.clone(),
        ready_after_ms: ready.waited.as_millis() as u64,
        creation_time: ready.creation_time.clone(),
    });
    let access = clone_access_mode(pvc, sc.as_ref(), &a.clone_access_mode);
    let size = larger_size(ready.restore_size.as_deref(), requested_size(pvc).as_deref());
    let clone = object_name("cairn-clone", &name, run, 63);
    Ok((clone, snap, access, size))
}

async fn backup_one_inner(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    given: Option<GivenSnapshot>,
    result: &mut PvcResult,
    mine: &mut Vec<TempObject>,
) -> anyhow::Result<WorkerReport<IngestReport>> {
    let a = &ctx.args;
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let run = &ctx.owner.run;
    let labels = ctx.owner.labels();
    let annotations = ctx.owner.annotations();
    let mut meta = pvc_meta(pvc, a.mode);

    let (claim, node) = match a.mode {
        Mode::Snapshot => {
            (Some(snapshot_clone(ctx, pvc, given, result, mine, &mut meta).await?), None)
        }
        Mode::Live => (None, consumer_node(&ctx.client, &ns, &name).await?),
    };

    let job_name = object_name("cairn-ingest", &name, run, 63);
    let mut env = vec![
        ("CAIRN_PVC".to_string(), format!("{ns}/{name}")),
        ("CAIRN_PVC_META".to_string(), meta.to_meta().to_string()),
        ("CAIRN_LOG_FORMAT".to_string(), "json".to_string()),
        ("CAIRN_LOCK_WAIT".to_string(), humantime::format_duration(a.ingest_lock_wait).to_string()),
        ("CAIRN_LOCK_LEASE".to_string(), humantime::format_duration(a.lock_lease).to_string()),
    ];
    if let Some(c) = &a.cluster {
        env.push(("CAIRN_CLUSTER".into(), c.clone()));
    }
    env.extend(a.chunking.env());
    if block {
        env.push(("CAIRN_INGEST_DEVICE".into(), DEVICE_PATH.into()));
    } else {
        env.push(("CAIRN_INGEST_PATH".into(), VOLUME_PATH.into()));
    }
    let mut command = vec![a.command.clone(), "ingest".to_string()];
    for (k, v) in &a.tags {
        command.push(format!("--tag={k}={v}"));
    }
    // The clone of the snapshot: the run gives it the Job's namespace, labels, annotations
    // and ownership.
    let claims = match &claim {
        Some((clone, snap, access, size)) => vec![serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": clone },
            "spec": {
                "storageClassName": spec.storage_class_name,
                "accessModes": [access],
                "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
                "resources": { "requests": { "storage": size } },
                "dataSource": { "apiGroup": volsnap::GROUP, "kind": "VolumeSnapshot", "name": snap },
            },
        }))?],
        None => Vec::new(),
    };
    let run = WorkerRun {
        job: WorkerJob {
            namespace: ns.clone(),
            name: job_name.clone(),
            labels,
            annotations,
            image: a.image.clone(),
            image_pull_policy: a.pull_policy.clone(),
            command,
            env,
            env_secret: None,
            volume: Some(WorkerVolume {
                claim: claim.as_ref().map_or(name.clone(), |c| c.0.clone()),
                read_only: true,
                block,
            }),
            security: a.security.clone(),
            resources: Some(a.resources.clone()),
            service_account: a.service_account.clone(),
            node,
            active_deadline: a.job_timeout,
        },
        secret: Some(ctx.secret_data.clone()),
        claims,
        wait: WaitOptions {
            timeout: a.job_timeout,
            pending_timeout: a.pending_timeout,
            poll: a.poll,
        },
        cleanup_timeout: a.cleanup_timeout,
    };
    // Tracked before anything exists: a cancelled run deletes it (`cleanup_all`).
    let objects = TempObject::Worker(run.objects());
    track(ctx, mine, objects.clone());
    let end = worker::run_worker::<IngestReport>(&ctx.client, run).await;
    // The run has cleaned up after itself; what it could not delete waits for `cleanup_all`.
    mine.retain(|o| o != &objects);
    if end.cleanup_errors.is_empty() {
        ctx.live.lock().retain(|o| o != &objects);
    } else {
        ctx.cleanup_errors.lock().extend(end.cleanup_errors);
    }
    Ok(end.result?)
}

/// The hooks of the running pods that mount `claims` (none with --no-hooks).
async fn pod_hooks(ctx: &Ctx, ns: &str, claims: &[&str]) -> anyhow::Result<Vec<hooks::PodHooks>> {
    if !ctx.run_hooks {
        return Ok(Vec::new());
    }
    Ok(hooks::for_claims(&ctx.client, ns, claims).await?)
}

/// The hooks' record goes into the snapshot (and the run's report); all pre hooks
/// succeeding makes the snapshot application-consistent.
fn record_hooks(meta: &mut PvcMeta, result: &mut PvcResult, record: Option<HooksRecord>) {
    if let Some(r) = &record
        && r.application_consistent
        && !r.runs.is_empty()
    {
        meta.consistency = APPLICATION_CONSISTENT.to_string();
    }
    meta.hooks = record.clone();
    result.hooks = record;
}

fn track(ctx: &Ctx, mine: &mut Vec<TempObject>, obj: TempObject) {
    ctx.live.lock().push(obj.clone());
    mine.push(obj);
}

/// Delete `objs` (a PVC's temporaries) within the cleanup deadline; failures are recorded
/// (the objects carry an expiry: the next run sweeps them).
async fn cleanup(ctx: &Ctx, objs: &[TempObject]) {
    let work = async {
        // Newest first: a worker (its Job lets go of the clone, and takes the Secret with it)
        // before the snapshot it read.
        for obj in objs.iter().rev() {
            let res = match obj {
                TempObject::Worker(w) => w.delete(&ctx.client).await,
                TempObject::Snapshot(ns, n) => {
                    volsnap::delete(&ctx.client, ns, n).await.map_err(one)
                }
                TempObject::Group(v, ns, n) => {
                    volsnap::delete_group(&ctx.client, v, ns, n).await.map_err(one)
                }
            };
            match res {
                Ok(()) => ctx.live.lock().retain(|o| o != obj),
                Err(errors) => ctx.cleanup_errors.lock().extend(errors),
            }
        }
    };
    if tokio::time::timeout(ctx.args.cleanup_timeout, work).await.is_err() {
        ctx.cleanup_errors.lock().push(format!(
            "cleanup did not finish within {}",
            humantime::format_duration(ctx.args.cleanup_timeout)
        ));
    }
}

async fn cleanup_all(ctx: &Ctx) {
    let objs = ctx.live.lock().clone();
    if !objs.is_empty() {
        cleanup(ctx, &objs).await;
    }
}

fn one(e: cairn_core::Error) -> Vec<String> {
    vec![e.to_string()]
}

/// One unit per PVC, but PVCs of a namespace sharing a group label form one unit.
fn plan_units(pvcs: Vec<PersistentVolumeClaim>, grouping: bool) -> Vec<Unit> {
    let mut groups: BTreeMap<(String, String), Vec<PersistentVolumeClaim>> = BTreeMap::new();
    let mut units = Vec::new();
    for pvc in pvcs {
        let group = pvc.metadata.labels.as_ref().and_then(|l| l.get(volsnap::GROUP_LABEL)).cloned();
        match group.filter(|_| grouping) {
            Some(g) => {
                let ns = pvc.metadata.namespace.clone().unwrap_or_default();
                groups.entry((ns, g)).or_default().push(pvc);
            }
            None => units.push(Unit::One(Box::new(pvc))),
        }
    }
    for ((ns, group), pvcs) in groups {
        units.push(Unit::Group { ns, group, pvcs });
    }
    units
}

/// Cut one VolumeGroupSnapshot for the PVCs of a group (crash-consistent across them), then
/// ingest each member's snapshot as a single PVC's would be.
async fn backup_group(
    ctx: &Ctx,
    ns: &str,
    group: &str,
    pvcs: Vec<PersistentVolumeClaim>,
    parallel: usize,
) -> Vec<PvcResult> {
    let version = ctx.group_version.clone().unwrap_or_default();
    let name = object_name("cairn-group", group, &ctx.owner.run, 63);
    let mut mine = Vec::new();
    // The hooks' record and post failure, kept for the members even when the cut failed.
    let group_hooks: Mutex<Option<(HooksRecord, Option<String>)>> = Mutex::new(None);
    let members = async {
        let (driver, _) = driver_of(&ctx.client, &pvcs[0]).await?;
        for p in &pvcs[1..] {
            if driver_of(&ctx.client, p).await?.0 != driver {
                return Err(cairn_core::exit::usage(format!(
                    "group {ns}/{group} spans CSI drivers: a group snapshot needs one driver"
                )));
            }
        }
        let requested = pvcs.iter().find_map(|p| {
            p.metadata.annotations.as_ref()?.get(volsnap::GROUP_CLASS_ANNOTATION).cloned()
        });
        let class =
            volsnap::choose_group_class(&ctx.client, &version, &driver, requested.as_deref())
                .await
                .with_context(|| {
                    format!("choosing a VolumeGroupSnapshotClass for group {ns}/{group}")
                })?;
        // Every member's pods: all pre hooks before the group is cut, all post hooks after.
        let claims: Vec<&str> = pvcs.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        let pod_hooks = pod_hooks(ctx, ns, &claims).await?;
        let mut session = hooks::run_pre(&ctx.client, &ctx.hooks, &pod_hooks).await;
        let cut = match &session.refused {
            Some(why) => Err(anyhow::Error::from(cairn_core::Error::Retryable(format!(
                "{why} (on-error fail: no group snapshot cut)"
            )))),
            None => cut_group(ctx, &mut mine, &version, ns, &name, group, &class, pvcs.len()).await,
        };
        hooks::run_post(&ctx.client, &mut session).await;
        let hooks_record = (!pod_hooks.is_empty()).then(|| session.record());
        *group_hooks.lock() = hooks_record.clone().map(|r| (r, session.post_failure()));
        let by_volume = cut?;
        let mut given = BTreeMap::new();
        for p in &pvcs {
            let key = pvc_key(p);
            let handle = volume_handle(&ctx.client, p).await?;
            let snap = handle.and_then(|h| by_volume.get(&h).cloned()).ok_or_else(|| {
                anyhow::anyhow!("VolumeGroupSnapshot {ns}/{name} has no member for {key}")
            })?;
            given.insert(
                key,
                GivenSnapshot {
                    name: snap,
                    class: class.clone(),
                    group: name.clone(),
                    hooks: hooks_record.clone(),
                },
            );
        }
        anyhow::Ok(given)
    }
    .await;
    let results = match members {
        Ok(given) => {
            futures::stream::iter(pvcs.into_iter().map(|p| {
                let g = given.get(&pvc_key(&p)).cloned();
                async move { backup_one(ctx, p, g).await }
            }))
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
            .await
        }
        Err(e) => {
            let line = cairn_core::exit::one_line(&e);
            let code = Exit::from_error(&e).code();
            pvcs.iter().map(|p| PvcResult::failed(pvc_key(p), code, Some(line.clone()))).collect()
        }
    };
    let mut results = results;
    if let Some((record, post_failure)) = group_hooks.into_inner() {
        for r in &mut results {
            r.hooks.get_or_insert_with(|| record.clone());
            if let Some(w) = &post_failure {
                r.warnings.push(w.clone());
                if r.ok && r.exit_code == Exit::Success.code() {
                    r.exit_code = Exit::Partial.code();
                }
            }
        }
    }
    cleanup(ctx, &mine).await;
    results
}

/// Create the VolumeGroupSnapshot and wait until every member is ready: the members'
/// VolumeSnapshots by volume handle.
#[allow(clippy::too_many_arguments)]
async fn cut_group(
    ctx: &Ctx,
    mine: &mut Vec<TempObject>,
    version: &str,
    ns: &str,
    name: &str,
    group: &str,
    class: &str,
    members: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    track(ctx, mine, TempObject::Group(version.to_string(), ns.to_string(), name.to_string()));
    volsnap::create_group(
        &ctx.client,
        version,
        ns,
        name,
        group,
        class,
        &ctx.owner.labels(),
        &ctx.owner.annotations(),
    )
    .await?;
    tracing::info!(group = %format!("{ns}/{group}"), snapshot = %name, pvcs = members, "VolumeGroupSnapshot created");
    let by_volume = volsnap::wait_group_members(
        &ctx.client,
        version,
        ns,
        name,
        ctx.args.snapshot_timeout,
        ctx.args.poll,
    )
    .await?;
    Ok(by_volume)
}

/// The CSI volume handle of a PVC's bound PV.
async fn volume_handle(
    client: &kube::Client,
    pvc: &PersistentVolumeClaim,
) -> anyhow::Result<Option<String>> {
    let Some(volume) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
        return Ok(None);
    };
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let pv = api
        .get_opt(&volume)
        .await
        .map_err(|e| classify(&format!("reading PersistentVolume {volume}"), e))?;
    Ok(pv.and_then(|pv| pv.spec).and_then(|s| s.csi).map(|c| c.volume_handle))
}

/// The CSI driver of a PVC: its StorageClass's provisioner, else its bound PV's driver.
async fn driver_of(
    client: &kube::Client,
    pvc: &PersistentVolumeClaim,
) -> anyhow::Result<(String, Option<StorageClass>)> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let mut sc = None;
    if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        let api: Api<StorageClass> = Api::all(client.clone());
        match api.get_opt(class).await {
            Ok(Some(found)) => sc = Some(found),
            Ok(None) => {}
            Err(e) => return Err(classify(&format!("reading StorageClass {class}"), e).into()),
        }
    }
    if let Some(volume) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        let api: Api<PersistentVolume> = Api::all(client.clone());
        let pv = api
            .get_opt(volume)
            .await
            .map_err(|e| classify(&format!("reading PersistentVolume {volume}"), e))?;
        if let Some(driver) = pv.and_then(|pv| pv.spec).and_then(|s| s.csi).map(|c| c.driver) {
            return Ok((driver, sc));
        }
    }
    match &sc {
        Some(s) => Ok((s.provisioner.clone(), sc)),
        None => Err(cairn_core::exit::usage(format!(
            "{}: neither a StorageClass nor a CSI PersistentVolume names its driver (use --mode live)",
            pvc_key(pvc)
        ))),
    }
}

fn clone_access_mode(
    pvc: &PersistentVolumeClaim,
    sc: Option<&StorageClass>,
    default: &str,
) -> String {
    let from = |m: Option<&BTreeMap<String, String>>| {
        m.and_then(|a| a.get(CLONE_ACCESS_ANNOTATION)).cloned()
    };
    from(pvc.metadata.annotations.as_ref())
        .or_else(|| from(sc.and_then(|s| s.metadata.annotations.as_ref())))
        .unwrap_or_else(|| default.to_string())
}

fn requested_size(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
}

/// The larger of two quantities (a clone must hold the snapshot and satisfy the class).
fn larger_size(a: Option<&str>, b: Option<&str>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => {
            if quantity_bytes(a).unwrap_or(0) >= quantity_bytes(b).unwrap_or(0) { a } else { b }
                .to_string()
        }
        (Some(x), None) | (None, Some(x)) => x.to_string(),
        (None, None) => "1Gi".to_string(),
    }
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1e9`, `1073741824`).
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((n * mult).ceil() as u128)
}

/// The node a live volume's consumer runs on (RWO volumes attach to one node).
async fn consumer_node(
    client: &kube::Client,
    ns: &str,
    claim: &str,
) -> anyhow::Result<Option<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = list_all(&api, &ListParams::default().limit(500), "Pods").await?;
    Ok(pods
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| hooks::mounts_any(p, &[claim]))
        .find_map(|p| p.spec.and_then(|s| s.node_name)))
}

/// What the snapshot records about the PVC, so that a restore can recreate it.
fn pvc_meta(pvc: &PersistentVolumeClaim, mode: Mode) -> PvcMeta {
    let spec = pvc.spec.clone().unwrap_or_default();
    let record = PvcRecord {
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        storage_class_name: spec.storage_class_name,
        access_modes: spec.access_modes,
        volume_mode: spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
        size: requested_size(pvc),
        capacity: pvc
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        labels: pvc.metadata.labels.clone().unwrap_or_default(),
        volume_name: spec.volume_name,
    };
    PvcMeta::new(
        record,
        match mode {
            Mode::Snapshot => PvcMode::Snapshot,
            Mode::Live => PvcMode::Live,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_report_reads_back_typed_however_the_worker_wrote_it() {
        let report = IngestReport {
            exit: "partial".into(),
            exit_code: 3,
            snapshot: Some("ab".repeat(32)),
            source: "pvc/ns/data".into(),
            files: 10,
            failures: (0..500).map(|i| format!("/data/{i}: permission denied")).collect(),
            ..Default::default()
        };
        // As the ingest writes it: the typed report, slimmed to fit.
        let text = worker::termination_text(&report);
        let worker::Message::Report { report: got, truncated } =
            worker::parse_termination_message::<IngestReport>(Some(&text))
        else {
            panic!("not a report: {text}")
        };
        assert!(truncated, "500 failures do not fit");
        assert!(got.failures.is_empty());
        assert_eq!((got.exit_code, got.files, got.snapshot), (3, 10, report.snapshot.clone()));
    }

    #[test]
    fn quantities_compare_in_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("x"), None);
        assert_eq!(larger_size(Some("1G"), Some("1Gi")), "1Gi");
        assert_eq!(larger_size(Some("2Gi"), Some("1Gi")), "2Gi");
        assert_eq!(larger_size(None, Some("5Gi")), "5Gi");
    }
}
