//! `cairn diff`: what changed between two snapshots. Manifest snapshots (and `live`) compare
//! as Kubernetes objects ([`manifests`]), anything else as files.

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_core::repo::diff::{Change, DiffEntry, diff_trees};
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, SnapshotSelect, emit, split_target};

mod manifests;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older snapshot: SNAP[:PATH] (`latest`, an id or id prefix, then optionally a path
    /// in it; with a path the snapshots compare as files).
    pub a: String,
    /// A second snapshot, or `live`.
    pub b: String,
    #[command(flatten)]
    pub select: SnapshotSelect,
    /// Manifests: only this namespace. Repeatable.
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Manifests: compare status too.
    #[arg(long)]
    pub status: bool,
    /// Manifests: include objects the cluster manages itself (leases, endpoint slices,
    /// objects owned by a controller).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub kube: cairn_kube::KubeArgs,
}

/// Paths added, removed or changed, in path order.
struct FileDiffs(Vec<DiffEntry>);

pub(crate) async fn run(args: DiffArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    if let Some(diffs) = manifests::diff(&args, repo).await? {
        emit(mode, &diffs)?;
    } else {
        emit(mode, &files(&args, repo).await?)?;
    }
    Ok(Exit::Success)
}

/// The file diff of `A[:PATH]` and `B[:PATH]`.
async fn files(args: &DiffArgs, repo: &RepoArgs) -> Result<FileDiffs> {
    let repo = repo.open(Need::Write).await?;
    repo.load_index().await?;
    let (sa, pa) = split_target(&args.a);
    let (sb, pb) = split_target(&args.b);
    let sa = args.select.find(&repo, sa).await?;
    let sb = args.select.find(&repo, sb).await?;
    let na = repo.lookup(&sa.snapshot, pa).await?;
    let nb = repo.lookup(&sb.snapshot, pb).await?;
    Ok(FileDiffs(diff_trees(&repo, &na, &nb).await?))
}

impl Render for FileDiffs {
    fn json(&self) -> impl serde::Serialize {
        &self.0
    }

    fn print_text(&self) {
        for e in &self.0 {
            let sign = match e.change {
                Change::Added => "+",
                Change::Removed => "-",
                Change::Changed => "M",
            };
            println!("{sign} {}", e.path);
        }
        println!("{} differences", self.0.len());
    }
}
