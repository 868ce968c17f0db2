//! `cairn prune`: reclaim the space of forgotten snapshots.

use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_core::exit::Exit;
use cairn_core::repo::prune::{PruneReport, prune};
use cairn_job::config::{self, LockArgs, Need, RepoArgs};

use super::{Mode, Render, emit};

#[derive(Debug, clap::Args)]
pub struct PruneCmdArgs {
    #[command(flatten)]
    pub prune: config::PruneArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) async fn run(args: PruneCmdArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    // The identity, when given, lets prune repack data packs too.
    let repo = Arc::new(repo.open(Need::Write).await?);
    let opts = args.prune.options(args.lock.options("prune"), args.dry_run)?;
    let report = prune(repo, &opts).await.context("prune")?;
    emit(mode, &report)?;
    Ok(Exit::Success)
}

impl Render for PruneReport {
    fn json(&self) -> impl serde::Serialize {
        self
    }

    fn print_text(&self) {
        print!("{}", self.render());
    }
}
