//! `cairn backup`: a directory, one file, or an object-store prefix into a snapshot.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_core::exit::Exit;
use cairn_core::fs::BackupOptions;
use cairn_core::progress::human_bytes;
use cairn_core::repo::lock::{self, BackupLocks, LeaseGuard};
use cairn_core::repo::{ParentSpec, Repository, Snapshot, SnapshotEntry};
use cairn_job::config::{ChunkingArgs, LockArgs, Need, RepoArgs};
use cairn_job::metrics::SourceRun;

use super::{Mode, Render, emit};
use crate::store_url::is_store_url;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// A directory or file, or an object-store URL (s3://bucket/prefix, gs://, az://):
    /// every object below it becomes a file at its key; unchanged objects (key, size,
    /// ETag) are reused from the parent without being fetched.
    pub path: PathBuf,
    /// Source name recorded in the snapshot (e.g. pvc/ns/name).
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: String,
    /// Tag as key=value. Repeatable.
    #[arg(long = "tag", value_parser = cairn_job::config::parse_key_value)]
    pub tags: Vec<(String, String)>,
    /// Parent for incremental reuse: auto (latest of the same source), none, or an id.
    #[arg(long, default_value = "auto")]
    pub parent: String,
    /// Glob of relative paths to leave out. Repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Also require unchanged inode and ctime to reuse a file.
    #[arg(long)]
    pub use_inode: bool,
    /// Cluster name recorded in the snapshot.
    #[arg(long, env = "CAIRN_CLUSTER")]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub chunking: ChunkingArgs,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// The snapshot a backup saved.
struct Saved(SnapshotEntry);

pub(crate) async fn run(args: BackupArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let started = std::time::Instant::now();
    let (cluster, source) = (args.cluster.clone(), args.source.clone());
    let result = locked_backup(args, repo, mode).await;
    // A backup run is what the metrics count, whatever `cairn` runs it (a CI job, a script).
    let mut run = SourceRun {
        cluster,
        source: Some(source),
        outcome: match &result {
            Ok((exit, _)) => exit.as_str().into(),
            Err(e) => Exit::from_error(e).as_str().into(),
        },
        seconds: started.elapsed().as_secs_f64(),
        ..SourceRun::default()
    };
    if let Ok((_, Some(s))) = &result {
        let sum = &s.summary;
        run.read_bytes = Some(sum.bytes_read);
        run.files = Some(sum.files_read);
        run.stored_bytes = Some(sum.new_bytes);
        run.failed_items = Some(s.failures.len() as u64);
    }
    cairn_job::metrics::record_runs(&[run]);
    result.map(|(exit, _)| exit)
}

async fn locked_backup(
    args: BackupArgs,
    repo: &RepoArgs,
    mode: Mode,
) -> Result<(Exit, Option<Snapshot>)> {
    let repo = Arc::new(repo.open(Need::Write).await?);
    let lock_source = lock::source_lock_name(&args.source, args.cluster.as_deref());
    let locks = BackupLocks::acquire(&repo, &lock_source, &args.lock.options("backup"))
        .await
        .with_context(|| format!("locking source {lock_source}"))?;
    let saved = backup(repo, args, locks.guard()).await;
    let released = locks.release().await;
    let saved = saved?;
    emit(mode, &saved)?;
    released.context("releasing locks")?;
    let snapshot = saved.0.snapshot;
    Ok((if snapshot.partial { Exit::Partial } else { Exit::Success }, Some(snapshot)))
}

/// The backup itself, under the source's lock.
async fn backup(repo: Arc<Repository>, args: BackupArgs, guard: LeaseGuard) -> Result<Saved> {
    let BackupArgs { path, source, tags, parent, exclude, use_inode, cluster, chunking, lock: _ } =
        args;
    let opts = BackupOptions {
        source,
        tags: tags.into_iter().collect(),
        cluster,
        parent: parent.parse::<ParentSpec>()?,
        use_inode,
        exclude,
        guard: Some(guard),
        chunking: chunking.policy(),
        ..Default::default()
    };
    let out = match path.to_str().filter(|p| is_store_url(p)) {
        // A bucket prefix: objects as files, incremental by key, size and ETag.
        Some(url) => cairn_core::fs::objects::backup_objects(repo, url, opts)
            .await
            .with_context(|| format!("backup of {url}"))?,
        None => cairn_core::fs::backup_dir(repo, &path, opts)
            .await
            .with_context(|| format!("backup of {}", path.display()))?,
    };
    Ok(Saved(SnapshotEntry { id: out.id, snapshot: out.snapshot }))
}

impl Render for Saved {
    fn json(&self) -> impl serde::Serialize {
        crate::snapshot_json(&self.0)
    }

    fn print_text(&self) {
        let Saved(SnapshotEntry { id, snapshot }) = self;
        let s = &snapshot.summary;
        let secs = s.duration_ms as f64 / 1000.0;
        println!("snapshot {} saved ({})", id.short(), snapshot.source);
        println!("  files {}  dirs {}  size {}", s.files, s.dirs, human_bytes(s.bytes));
        println!(
            "  read {} files, {}; reused {} files from parent",
            s.files_read,
            human_bytes(s.bytes_read),
            s.files - s.files_read
        );
        println!("  added {} in {} blobs", human_bytes(s.new_bytes), s.new_blobs);
        println!(
            "  {:.1}s, {}/s",
            secs,
            human_bytes((s.bytes_read as f64 / secs.max(0.001)) as u64)
        );
        for f in &snapshot.failures {
            println!("  FAILED {}: {}", f.path, f.error);
        }
    }
}
