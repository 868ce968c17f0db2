//! `cairn forget`: apply a retention policy to snapshot records.

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_core::repo::forget::{ForgetReport, forget};
use cairn_job::config::{KeepArgs, Need, RepoArgs};

use super::{Mode, Render, emit};

#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Only snapshots of this source.
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: Option<String>,
    /// Show what would be removed and why the rest is kept; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) async fn run(args: ForgetArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = repo.open(Need::Write).await?;
    let ForgetArgs { keep, source, dry_run } = args;
    let report = forget(&repo, &keep.policy(), keep.group_by, source.as_deref(), dry_run).await?;
    emit(mode, &report)?;
    Ok(Exit::Success)
}

impl Render for ForgetReport {
    fn json(&self) -> impl serde::Serialize {
        self
    }

    fn print_text(&self) {
        print!("{}", self.render());
    }
}
