//! `cairn ls`: a directory of a snapshot (or one entry).

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_core::repo::{Node, NodeKind};
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, SnapshotSelect, emit};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// SNAP[:PATH]: `latest`, a snapshot id or id prefix, then optionally a path in it (the
    /// root without one).
    pub target: String,
    #[command(flatten)]
    pub select: SnapshotSelect,
}

/// The entries of a directory, or the one entry a file path names.
struct Entries(Vec<Node>);

pub(crate) async fn run(args: LsArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = repo.open(Need::Write).await?;
    repo.load_index().await?;
    let (_, node) = args.select.resolve(&repo, &args.target).await?;
    let nodes =
        if node.kind == NodeKind::Dir { repo.read_dir(&node.subtree).await? } else { vec![node] };
    emit(mode, &Entries(nodes))?;
    Ok(Exit::Success)
}

impl Render for Entries {
    fn json(&self) -> impl serde::Serialize {
        self.0
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name.display(),
                    "kind": n.kind,
                    "size": n.size,
                    "mode": n.mode,
                    "mtime_ns": n.mtime_ns.to_string(),
                })
            })
            .collect::<Vec<_>>()
    }

    fn print_text(&self) {
        for n in &self.0 {
            let suffix = if n.kind == NodeKind::Dir { "/" } else { "" };
            println!("{:>6o} {:>12} {}{}", n.mode, n.size, n.name.display(), suffix);
        }
    }
}
