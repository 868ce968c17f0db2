//! Ingest mode: runs inside the per-volume pod. Backs up the mounted volume (or the raw
//! block device) with source `pvc/<ns>/<name>`, incremental against the latest snapshot of
//! the same PVC and cluster, and reports its summary through the termination message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cairn_core::Exit;
use cairn_core::fs::pages::{ChunkingPolicy, DEFAULT_PAGE};
use cairn_core::fs::{BackupOptions, backup_dir, backup_stream};
use cairn_core::progress::human_bytes;
use cairn_core::repo::Repository;
use cairn_core::repo::chunker::Chunking;
use cairn_core::repo::lock::BackupLocks;
use cairn_core::repo::short_id;
use cairn_job::config::{ChunkingArgs, LockArgs, Need, RepoArgs, SnapshotLabels};
use cairn_kube::podjob::{TERMINATION_LOG, write_termination_message};
use serde::{Deserialize, Serialize};

/// The file a block volume is stored as.
pub use cairn_core::records::BLOCK_FILE;
use cairn_core::records::{PvcMeta, SnapshotRecord};

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The mounted volume to back up.
    #[arg(
        long,
        env = "CAIRN_INGEST_PATH",
        conflicts_with = "device",
        required_unless_present = "device"
    )]
    pub path: Option<PathBuf>,
    /// A raw block device to back up as one file (`volume.img`).
    #[arg(long, env = "CAIRN_INGEST_DEVICE")]
    pub device: Option<PathBuf>,
    /// The PVC as NAMESPACE/NAME: the snapshot's source is `pvc/NAMESPACE/NAME`.
    #[arg(long, env = "CAIRN_PVC")]
    pub pvc: String,
    /// Facts to record in the snapshot (the PVC's spec, the VolumeSnapshot), as JSON.
    #[arg(long, env = "CAIRN_PVC_META", hide_env_values = true)]
    pub meta: Option<String>,
    /// Parent for incremental reuse: auto (latest of this PVC and cluster), none, or an id.
    #[arg(long, env = "CAIRN_PARENT", default_value = "auto")]
    pub parent: String,
    /// Glob (relative path) to leave out. Repeatable.
    #[arg(long, env = "CAIRN_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Where the summary goes for the orchestrator (the pod's terminationMessagePath).
    #[arg(long, env = "CAIRN_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
    #[command(flatten)]
    pub chunking: ChunkingArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    pub labels: SnapshotLabels,
}

/// What an ingest reports (termination message and `--json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct IngestReport {
    pub exit: String,
    pub exit_code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub new_bytes: u64,
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(repo: &RepoArgs, args: &IngestArgs, json: bool) -> Exit {
    let started = Instant::now();
    let mut report = IngestReport::default();
    let result = ingest(repo, args, &mut report).await;
    let ok = if report.partial { Exit::Partial } else { Exit::Success };
    let (exit, error) = cairn_core::exit::conclude("cairn-pvc-ingest ingest", result, ok);
    report.exit = exit.as_str().into();
    report.exit_code = exit.code();
    report.error = error;
    report.duration_ms = started.elapsed().as_millis() as u64;
    write_termination_message(&args.termination_log, &report);
    if json {
        cairn_job::report::print_json("cairn-pvc-ingest ingest", &report);
    } else if let Some(id) = &report.snapshot {
        let secs = report.duration_ms as f64 / 1000.0;
        println!("snapshot {} saved ({})", short_id(id), report.source);
        println!(
            "  {} files, {}; read {} files ({}), added {} in {secs:.1}s",
            report.files,
            human_bytes(report.bytes),
            report.files_read,
            human_bytes(report.bytes_read),
            human_bytes(report.new_bytes)
        );
        for f in &report.failures {
            println!("  FAILED {f}");
        }
    }
    exit
}

/// `ns/name` of a PVC, validated.
pub fn parse_pvc(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(cairn_core::exit::usage(format!("--pvc {s:?}: expected NAMESPACE/NAME"))),
    }
}

pub fn pvc_source(ns: &str, name: &str) -> String {
    format!("pvc/{ns}/{name}")
}

async fn ingest(
    repo: &RepoArgs,
    args: &IngestArgs,
    report: &mut IngestReport,
) -> anyhow::Result<()> {
    let (ns, name) = parse_pvc(&args.pvc)?;
    report.source = pvc_source(&ns, &name);
    let meta: serde_json::Value = match &args.meta {
        Some(m) => serde_json::from_str::<PvcMeta>(m)
            .map_err(|e| cairn_core::exit::usage(format!("--meta is not a PVC record: {e}")))?
            .to_meta(),
        None => serde_json::Value::Null,
    };
    let repo = Arc::new(repo.open(Need::Write).await.context("opening the repository")?);
    let lock_source = args.labels.lock_source(&report.source);
    let locks = BackupLocks::acquire(&repo, &lock_source, &args.lock.options("pvc ingest"))
        .await
        .with_context(|| format!("locking source {lock_source}"))?;
    let result = ingest_locked(&repo, args, report, meta, &locks).await;
    let released = locks.release().await;
    result?;
    released.context("releasing locks")?;
    Ok(())
}

async fn ingest_locked(
    repo: &Arc<Repository>,
    args: &IngestArgs,
    report: &mut IngestReport,
    meta: serde_json::Value,
    locks: &BackupLocks,
) -> anyhow::Result<()> {
    let opts = BackupOptions {
        source: report.source.clone(),
        cluster: args.labels.cluster.clone(),
        tags: args.labels.tag_map(),
        parent: args.parent.parse()?,
        exclude: args.exclude.clone(),
        meta,
        guard: Some(locks.guard()),
        chunking: args.chunking.policy(),
        ..Default::default()
    };
    let out = match (&args.path, &args.device) {
        (Some(path), _) => {
            if !path.is_dir() {
                return Err(cairn_core::exit::usage(format!(
                    "{} is not a directory (is the volume mounted?)",
                    path.display()
                )));
            }
            backup_dir(repo.clone(), path, opts)
                .await
                .with_context(|| format!("backing up {}", path.display()))?
        }
        (None, Some(device)) => {
            let file = std::fs::File::open(device)
                .with_context(|| format!("opening block device {}", device.display()))?;
            let guard = opts.guard.clone();
            // A volume image changes in place: cut into the filesystem's 4 KiB blocks.
            let chunking =
                ChunkingPolicy { force: Some(Chunking::Pages(DEFAULT_PAGE)), ..opts.chunking };
            let opts = BackupOptions { chunking, ..opts };
            let prepared = backup_stream(repo.clone(), Box::new(file), BLOCK_FILE, opts)
                .await
                .with_context(|| format!("backing up block device {}", device.display()))?;
            prepared.commit(repo, guard.as_ref()).await.context("committing the snapshot")?
        }
        (None, None) => return Err(cairn_core::exit::usage("give --path or --device")),
    };
    let s = &out.snapshot.summary;
    report.parent = out.snapshot.parent.map(|p| p.to_hex());
    report.snapshot = Some(out.id.to_hex());
    report.files = s.files;
    report.bytes = s.bytes;
    report.files_read = s.files_read;
    report.bytes_read = s.bytes_read;
    report.new_bytes = s.new_bytes;
    report.partial = out.snapshot.partial;
    report.failures =
        out.snapshot.failures.iter().map(|f| format!("{}: {}", f.path, f.error)).collect();
    Ok(())
}
