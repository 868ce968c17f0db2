//! `cairn-restore pvc`: write a snapshot back into a PVC. The restore (a one-off Job, or an
//! operator's shell) creates the PVC from the spec the snapshot recorded (StorageClass and
//! size overridable, new name or namespace allowed) or takes an existing one
//! (`--existing overwrite|merge`), then runs a writer Job that mounts it read-write and
//! restores with ownership and permissions; its exit code is the restore's.
//!
//! `cairn-restore pvc-writer` is what runs inside that Job's pod.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cairn_core::fs::{RestoreOptions, restore, write_file_to};
use cairn_core::progress::human_bytes;
use cairn_core::repo::NodeKind;
use cairn_core::repo::short_id;
use cairn_core::{Error, Exit};
use cairn_job::config::{Need, RepoArgs};
use cairn_kube::podjob::{
    DEVICE_PATH, TERMINATION_LOG, VOLUME_PATH, WorkerArgs, WorkerJob, WorkerSecurity, WorkerVolume,
    write_termination_message,
};
use cairn_kube::temp::{TempOwner, object_name};
use cairn_kube::worker::{self, Report, Slim, WorkerRun};
use cairn_kube::{KubeArgs, classify};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The file a block volume's snapshot holds (as `cairn-pvc-ingest` stores it).
pub use cairn_core::records::BLOCK_FILE;
use cairn_core::records::{PvcMeta, PvcRecord, SnapshotRecord};
use cairn_core::repo::SnapshotEntry;
pub const COMPONENT: &str = "pvc-restore";
/// Labels a restored PVC with the snapshot it came from.
pub const RESTORED_FROM: &str = "backup.cairn.dev/restored-from";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Existing {
    /// The PVC must not exist (it is created).
    Fail,
    /// Empty the existing volume, then restore.
    Overwrite,
    /// Restore over what the volume holds; files not in the snapshot stay.
    Merge,
}

impl Existing {
    fn as_str(self) -> &'static str {
        match self {
            Existing::Fail => "fail",
            Existing::Overwrite => "overwrite",
            Existing::Merge => "merge",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PvcArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Snapshot id, unique prefix, or `latest` (of --source).
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    pub snapshot: String,
    /// Source of the snapshot, e.g. pvc/prod/data (needed with `latest`).
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: Option<String>,
    /// Only this path of the snapshot (restored at the volume's root).
    #[arg(long, env = "CAIRN_PATH", default_value = "")]
    pub path: String,
    /// Namespace of the target PVC (default: the recorded one).
    #[arg(long = "target-namespace", env = "CAIRN_TARGET_NAMESPACE")]
    pub target_namespace: Option<String>,
    /// Name of the target PVC (default: the recorded one).
    #[arg(long = "target-name", env = "CAIRN_TARGET_NAME")]
    pub target_name: Option<String>,
    /// StorageClass of a new PVC (default: the recorded one, through --storage-class-map).
    #[arg(long, env = "CAIRN_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// Map the recorded StorageClass OLD to NEW, repeatable: the same map as
    /// `cairn-restore manifests --storage-class-map` (and the same variable), so one
    /// disaster-recovery Job setting serves every PVC. --storage-class wins over it.
    #[arg(long = "storage-class-map", value_parser = crate::manifests::parse_map, env = "CAIRN_STORAGE_CLASS_MAP", value_delimiter = ',')]
    pub storage_class_map: Vec<(String, String)>,
    /// Size of a new PVC (default: the recorded request; at least the data's size).
    #[arg(long, env = "CAIRN_SIZE")]
    pub size: Option<String>,
    /// When the target PVC exists: fail, overwrite (empty it first) or merge.
    #[arg(long, env = "CAIRN_EXISTING", value_enum, default_value = "fail")]
    pub existing: Existing,
    /// Image of the writer pod. Default, in a pod: this pod's own image; required outside
    /// one.
    #[arg(long, env = "CAIRN_WRITER_IMAGE")]
    pub writer_image: Option<String>,
    /// The restore binary inside that image.
    #[arg(long, env = "CAIRN_WRITER_COMMAND", default_value = "/usr/local/bin/cairn-restore")]
    pub writer_command: String,
    /// ServiceAccount of the writer pod (its token is not mounted).
    #[arg(long, env = "CAIRN_WRITER_SERVICE_ACCOUNT")]
    pub writer_service_account: Option<String>,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// Inside the writer pod.
#[derive(Debug, clap::Args)]
pub struct WriterArgs {
    /// Full snapshot id.
    #[arg(long, env = "CAIRN_SNAPSHOT")]
    pub snapshot: String,
    #[arg(long, env = "CAIRN_PATH", default_value = "")]
    pub path: String,
    /// The mounted volume.
    #[arg(
        long,
        env = "CAIRN_WRITER_TARGET",
        conflicts_with = "device",
        required_unless_present = "device"
    )]
    pub target: Option<PathBuf>,
    /// A raw block device (the snapshot's volume.img is written to it).
    #[arg(long, env = "CAIRN_WRITER_DEVICE")]
    pub device: Option<PathBuf>,
    #[arg(long, env = "CAIRN_EXISTING", value_enum, default_value = "fail")]
    pub existing: Existing,
    #[arg(long, env = "CAIRN_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// The writer's report (termination message), and the restore's summary.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PvcSummary {
    pub exit: String,
    pub exit_code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    #[serde(default)]
    pub created_pvc: bool,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Slim for PvcSummary {
    fn slim(&mut self) {
        self.failures.clear();
        if let Some(e) = &mut self.error {
            worker::cut(e, 1024);
        }
    }
}

impl Report for PvcSummary {
    fn exit_code(&self) -> u8 {
        self.exit_code
    }
}

pub async fn run(repo: &RepoArgs, args: &PvcArgs, json: bool) -> Exit {
    let started = Instant::now();
    let mut summary = PvcSummary::default();
    let result = restore_pvc(repo, args, &mut summary).await;
    finish("cairn-restore pvc", result, &mut summary, started);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else if summary.exit_code == 0 {
        println!(
            "restored snapshot {} into PVC {}{}: {} files, {}",
            summary.snapshot.as_deref().map_or("", short_id),
            summary.pvc.as_deref().unwrap_or_default(),
            if summary.created_pvc { " (created)" } else { "" },
            summary.files,
            human_bytes(summary.bytes)
        );
    }
    Exit::from_code(summary.exit_code)
}

fn finish(prog: &str, result: anyhow::Result<()>, s: &mut PvcSummary, started: Instant) {
    let (exit, error) = match result {
        // The writer's own exit code, when it reported one.
        Ok(()) => (Exit::from_code(s.exit_code), s.error.clone()),
        Err(e) => {
            let (exit, line) = cairn_core::exit::report_failure(prog, &e);
            (exit, Some(line))
        }
    };
    s.exit = exit.as_str().into();
    s.exit_code = exit.code();
    s.error = error;
    s.duration_ms = started.elapsed().as_millis() as u64;
}

/// The StorageClass of a new claim: --storage-class, else the recorded one through the map.
fn target_class(args: &PvcArgs, recorded: &PvcRecord) -> Option<String> {
    args.storage_class.clone().or_else(|| {
        let old = recorded.storage_class_name.clone()?;
        Some(
            args.storage_class_map
                .iter()
                .find(|(from, _)| *from == old)
                .map_or(old, |(_, to)| to.clone()),
        )
    })
}

/// The target claim: the flags, else the recorded namespace and name.
fn target_of(args: &PvcArgs, recorded: &PvcRecord) -> anyhow::Result<(String, String)> {
    let ns =
        args.target_namespace.clone().or_else(|| recorded.namespace.clone()).ok_or_else(|| {
            cairn_core::exit::usage(
                "the snapshot records no PVC: give --target-namespace and --target-name",
            )
        })?;
    let name = args.target_name.clone().or_else(|| recorded.name.clone()).ok_or_else(|| {
        cairn_core::exit::usage("the snapshot records no PVC: give --target-name")
    })?;
    Ok((ns, name))
}

/// A class the operator named (or mapped to) must exist: a claim on a missing class would
/// wait Pending until the writer's deadline.
async fn check_class(
    client: &kube::Client,
    args: &PvcArgs,
    recorded: &PvcRecord,
) -> anyhow::Result<()> {
    let named = args.storage_class.is_some() || !args.storage_class_map.is_empty();
    let Some(class) = target_class(args, recorded).filter(|_| named) else { return Ok(()) };
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let found = classes
        .get_opt(&class)
        .await
        .map_err(|e| classify(&format!("reading StorageClass {class}"), e))?;
    if found.is_none() {
        return Err(cairn_core::exit::usage(format!(
            "StorageClass {class:?} does not exist in the target cluster"
        )));
    }
    Ok(())
}

/// The claim a restore creates when none exists: the recorded spec, with the operator's
/// overrides (size, StorageClass), labelled with the snapshot it came from.
fn new_claim(
    args: &PvcArgs,
    recorded: &PvcRecord,
    snap: &SnapshotEntry,
    ns: &str,
    name: &str,
    block: bool,
) -> anyhow::Result<PersistentVolumeClaim> {
    let size = args
        .size
        .clone()
        .or_else(|| recorded.size.clone())
        .or_else(|| recorded.capacity.clone())
        .unwrap_or_else(|| format!("{}", snap.snapshot.summary.bytes.max(1 << 30)));
    let access = recorded.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let mut spec = json!({
        "accessModes": access,
        "volumeMode": if block { "Block" } else { "Filesystem" },
        "resources": { "requests": { "storage": size } },
    });
    if let Some(class) = target_class(args, recorded) {
        spec["storageClassName"] = json!(class);
    }
    let mut labels = recorded.labels.clone();
    labels.insert(RESTORED_FROM.into(), snap.id.to_hex()[..16].to_string());
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": spec,
    }))?)
}

async fn restore_pvc(
    repo: &RepoArgs,
    args: &PvcArgs,
    summary: &mut PvcSummary,
) -> anyhow::Result<()> {
    let repository = repo.open(Need::Read).await.context("opening the repository")?;
    let snap = repository.find_snapshot(&args.snapshot, args.source.as_deref()).await?;
    summary.snapshot = Some(snap.id.to_hex());
    let node = repository.lookup(&snap.snapshot, &args.path).await?;
    let meta = PvcMeta::of(&snap.snapshot)?;
    let recorded = meta.as_ref().map(|m| m.pvc.clone()).unwrap_or_default();
    let (ns, name) = target_of(args, &recorded)?;
    summary.pvc = Some(format!("{ns}/{name}"));
    let block = meta.as_ref().is_some_and(PvcMeta::is_block) && args.path.is_empty();
    if block && node.kind != NodeKind::Dir {
        return Err(Error::Invalid("a block snapshot restores as a whole".into()).into());
    }

    let client = args.kube.client().await.context("connecting to the cluster")?;
    let image =
        cairn_kube::own_pod::worker_image(&client, args.writer_image.as_deref(), "--writer-image")
            .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let existing = claims
        .get_opt(&name)
        .await
        .map_err(|e| classify(&format!("reading PVC {ns}/{name}"), e))?;
    match (&existing, args.existing) {
        (Some(_), Existing::Fail) => {
            return Err(cairn_core::exit::usage(format!(
                "PVC {ns}/{name} exists: choose --existing overwrite or merge, or another --target-name"
            )));
        }
        (Some(_), _) => {}
        (None, _) => {
            check_class(&client, args, &recorded).await?;
            let body = new_claim(args, &recorded, &snap, &ns, &name, block)?;
            claims
                .create(&PostParams::default(), &body)
                .await
                .map_err(|e| classify(&format!("creating PVC {ns}/{name}"), e))?;
            summary.created_pvc = true;
            tracing::info!(pvc = %format!("{ns}/{name}"), "PVC created from the recorded spec");
        }
    }

    // The writer needs to read contents: it gets the identity (or passphrase) in a Secret
    // owned by its Job, gone with it.
    let secret_data = args.worker.secret_env(repo.worker_env(Need::Read)?);
    let owner = TempOwner::new(
        COMPONENT,
        "restore",
        args.worker.job_timeout + args.worker.pending_timeout + args.worker.cleanup_timeout,
    );
    let job_name = object_name("cairn-restore", &name, &owner.run, 63);
    let mut env = vec![
        ("CAIRN_SNAPSHOT".to_string(), snap.id.to_hex()),
        ("CAIRN_PATH".to_string(), args.path.clone()),
        ("CAIRN_EXISTING".to_string(), args.existing.as_str().to_string()),
        ("CAIRN_LOG_FORMAT".to_string(), "json".to_string()),
    ];
    env.push(if block {
        ("CAIRN_WRITER_DEVICE".into(), DEVICE_PATH.into())
    } else {
        ("CAIRN_WRITER_TARGET".into(), VOLUME_PATH.into())
    });
    let run = WorkerRun {
        job: WorkerJob {
            namespace: ns.clone(),
            name: job_name,
            labels: owner.labels(),
            annotations: owner.annotations(),
            image,
            image_pull_policy: args.worker.image_pull_policy.clone(),
            command: vec![args.writer_command.clone(), "pvc-writer".into()],
            env,
            env_secret: None,
            volume: Some(WorkerVolume { claim: name.clone(), read_only: false, block }),
            security: WorkerSecurity::writer(),
            resources: None,
            service_account: args.writer_service_account.clone(),
            node: None,
            active_deadline: args.worker.job_timeout,
        },
        secret: Some(secret_data),
        claims: Vec::new(),
        wait: args.worker.wait_options(),
        cleanup_timeout: args.worker.cleanup_timeout,
    };
    // Cancelled (SIGTERM: this restore's own Job deleted; SIGINT: an operator's Ctrl-C), the
    // writer Job goes too rather than write on unobserved.
    let end =
        worker::run_worker_until::<PvcSummary, _>(&client, run, cairn_job::signal::shutdown())
            .await;
    let r = end.result?.report;
    summary.exit_code = r.exit_code;
    summary.files = r.files;
    summary.dirs = r.dirs;
    summary.bytes = r.bytes;
    summary.failures = r.failures;
    summary.error = r.error;
    Ok(())
}

/// Inside the writer pod.
pub async fn run_writer(repo: &RepoArgs, args: &WriterArgs, json: bool) -> Exit {
    let started = Instant::now();
    let mut summary = PvcSummary { snapshot: Some(args.snapshot.clone()), ..Default::default() };
    let result = write(repo, args, &mut summary).await;
    finish("cairn-restore pvc-writer", result, &mut summary, started);
    write_termination_message(&args.termination_log, &summary);
    let value = serde_json::to_value(&summary).unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    }
    Exit::from_code(summary.exit_code)
}

async fn write(repo: &RepoArgs, args: &WriterArgs, summary: &mut PvcSummary) -> anyhow::Result<()> {
    let repository = Arc::new(repo.open(Need::Read).await.context("opening the repository")?);
    repository.load_index().await?;
    let snap = repository.find_snapshot(&args.snapshot, None).await?;
    if let Some(device) = &args.device {
        let node = repository.lookup(&snap.snapshot, BLOCK_FILE).await?;
        let handle = tokio::runtime::Handle::current();
        let device = device.clone();
        let repo2 = repository.clone();
        let bytes = tokio::task::spawn_blocking(move || -> cairn_core::Result<u64> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(&device)
                .map_err(|e| Error::Invalid(format!("{}: {e}", device.display())))?;
            write_file_to(&repo2, &handle, &node, &mut out, false, |_| {})?;
            out.sync_all()
                .map_err(|e| Error::Retryable(format!("sync {}: {e}", device.display())))?;
            Ok(node.size)
        })
        .await??;
        summary.files = 1;
        summary.bytes = bytes;
        summary.exit_code = Exit::Success.code();
        return Ok(());
    }
    let target =
        args.target.clone().ok_or_else(|| cairn_core::exit::usage("give --target or --device"))?;
    let node = repository.lookup(&snap.snapshot, &args.path).await?;
    match args.existing {
        Existing::Fail if !is_empty_volume(&target)? => {
            return Err(cairn_core::exit::usage(format!(
                "{} is not empty (use --existing overwrite or merge)",
                target.display()
            )));
        }
        Existing::Overwrite => empty_volume(&target)?,
        _ => {}
    }
    let report = restore(repository, node, &target, RestoreOptions::default()).await?;
    summary.files = report.files;
    summary.dirs = report.dirs;
    summary.bytes = report.bytes;
    summary.failures = report.failures.iter().map(|(p, e)| format!("{p}: {e}")).collect();
    summary.exit_code = if report.integrity_failure {
        summary.error = report.failures.first().map(|(p, e)| format!("{p}: {e}"));
        Exit::Integrity.code()
    } else if report.failures.is_empty() {
        Exit::Success.code()
    } else {
        Exit::Partial.code()
    };
    Ok(())
}

/// A new volume holds nothing but perhaps `lost+found`.
fn is_empty_volume(dir: &Path) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        if entry?.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

fn empty_volume(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        let path = entry.path();
        let res = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        res.with_context(|| format!("emptying the volume: {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_report_reads_back_typed() {
        let summary = PvcSummary {
            exit: "partial".into(),
            exit_code: 3,
            files: 7,
            failures: (0..500).map(|i| format!("/v/{i}: read-only")).collect(),
            error: Some("é".repeat(3000)),
            ..Default::default()
        };
        let text = worker::termination_text(&summary);
        assert!(text.len() <= cairn_kube::podjob::TERMINATION_MESSAGE_MAX);
        let worker::Message::Report { report, truncated } =
            worker::parse_termination_message::<PvcSummary>(Some(&text))
        else {
            panic!("not a report: {text}")
        };
        assert!(truncated && report.failures.is_empty());
        assert_eq!((report.exit_code(), report.files), (3, 7));
        assert!(report.error.is_some_and(|e| e.len() <= 1024));
    }
}
