//! `cairn restore`: a snapshot, a subtree or one file to a directory, an object store or a
//! tar stream.

use std::sync::Arc;

use anyhow::Result;
use cairn_core::exit::{Exit, ExitError};
use cairn_core::fs::RestoreReport;
use cairn_core::fs::export::ExportReport;
use cairn_core::progress::human_bytes;
use cairn_core::repo::SnapshotId;
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, SnapshotSelect, emit};

mod sink;

use sink::{Sink, Written};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// SNAP[:PATH]: `latest`, a snapshot id or id prefix, then optionally the path of a
    /// subtree or file in it (the whole snapshot without one).
    pub target_spec: String,
    /// Where to: a directory (the snapshot's root lands directly in it); an object-store
    /// URL (s3://bucket/prefix, gs://, az://, file://: each file becomes an object, its
    /// path the key, mode/owner/mtime object metadata where the store keeps it); or `-`
    /// for a tar stream on stdout.
    #[arg(long)]
    pub target: String,
    /// Output format: auto (by --target), dir, objects, or tar (to stdout with `-`, else
    /// to the file --target names).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Only paths matching this glob (relative to the restored node). Repeatable. Tar and
    /// object-store targets.
    #[arg(long = "include")]
    pub include: Vec<String>,
    /// Leave out paths matching this glob. Repeatable. Tar and object-store targets.
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub select: SnapshotSelect,
    /// Do not restore owners (uid/gid). By default they are restored when running as root.
    #[arg(long)]
    pub no_owner: bool,
}

/// A finished restore: which snapshot went where, and the sink's report.
struct Restored<R> {
    snapshot: SnapshotId,
    target: String,
    report: R,
}

pub(crate) async fn run(args: RestoreArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = Arc::new(repo.open(Need::Read).await?);
    repo.load_index().await?;
    let (snap, node) = args.select.resolve(&repo, &args.target_spec).await?;
    let written = Sink::open(&args)?.write(repo, node).await?;
    let (snapshot, target) = (snap.id, args.target);
    match written {
        Written::Exported(report) => {
            // A tar stream owns stdout: the summary goes to stderr, as text.
            let mode = if target == "-" { Mode::Text } else { mode };
            emit(mode, &Restored { snapshot, target, report })?;
            Ok(Exit::Success)
        }
        Written::Dir(report) => {
            let restored = Restored { snapshot, target, report };
            emit(mode, &restored)?;
            restored.exit()
        }
    }
}

impl Restored<RestoreReport> {
    /// Integrity (with the first failure) when repository data was damaged, partial when
    /// something else failed.
    fn exit(&self) -> Result<Exit> {
        if self.report.integrity_failure {
            let (p, e) = &self.report.failures[0];
            return Err(ExitError(Exit::Integrity, format!("{p}: {e}")).into());
        }
        Ok(if self.report.failures.is_empty() { Exit::Success } else { Exit::Partial })
    }
}

impl Render for Restored<RestoreReport> {
    fn json(&self) -> impl serde::Serialize {
        serde_json::json!({"snapshot": self.snapshot.to_hex(), "report": self.report})
    }

    fn print_text(&self) {
        let report = &self.report;
        let secs = report.duration_ms as f64 / 1000.0;
        println!("restored snapshot {} into {}", self.snapshot.short(), self.target);
        println!(
            "  files {}  dirs {}  {} in {:.1}s ({}/s)",
            report.files,
            report.dirs,
            human_bytes(report.bytes),
            secs,
            human_bytes((report.bytes as f64 / secs.max(0.001)) as u64)
        );
        for (p, e) in &report.failures {
            println!("  FAILED {p}: {e}");
        }
    }
}

impl Render for Restored<ExportReport> {
    fn json(&self) -> impl serde::Serialize {
        serde_json::json!({"snapshot": self.snapshot.to_hex(), "report": self.report})
    }

    /// On stderr: stdout may carry the tar stream.
    fn print_text(&self) {
        let report = &self.report;
        eprintln!(
            "restored snapshot {} to {}: {} files, {} dirs, {}{}",
            self.snapshot.short(),
            self.target,
            report.files,
            report.dirs,
            human_bytes(report.bytes),
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {}", report.skipped.len())
            }
        );
        for s in &report.skipped {
            eprintln!("  skipped {s}");
        }
    }
}
