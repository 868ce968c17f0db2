//! `cairn locks` and `cairn unlock --stale`.

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_core::repo::lock::{LockInfo, list_locks, remove_stale};
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, emit};

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// Remove expired locks (required: there is no way to remove a live one).
    #[arg(long, required = true)]
    pub stale: bool,
}

/// The lock objects, with holders and lease state.
struct Listed(Vec<LockInfo>);

/// The expired locks removed.
struct Removed(Vec<LockInfo>);

pub(crate) async fn list(repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = repo.open(Need::Write).await?;
    emit(mode, &Listed(list_locks(&repo).await?))?;
    Ok(Exit::Success)
}

pub(crate) async fn unlock(_args: UnlockArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = repo.open(Need::Write).await?;
    emit(mode, &Removed(remove_stale(&repo).await?))?;
    Ok(Exit::Success)
}

impl Render for Listed {
    fn json(&self) -> impl serde::Serialize {
        self.0
            .iter()
            .map(|l| {
                serde_json::json!({
                    "key": l.key,
                    "record": l.record,
                    "age_secs": l.age.as_secs(),
                    "expired": l.expired,
                })
            })
            .collect::<Vec<_>>()
    }

    fn print_text(&self) {
        for l in &self.0 {
            let state = if l.expired { " (expired)" } else { "" };
            println!("{}{state}  {}", l.key, l.describe());
        }
        println!("{} locks", self.0.len());
    }
}

impl Render for Removed {
    fn json(&self) -> impl serde::Serialize {
        self.0.iter().map(|l| &l.key).collect::<Vec<_>>()
    }

    fn print_text(&self) {
        for l in &self.0 {
            println!("removed {}  {}", l.key, l.describe());
        }
        println!("{} expired locks removed", self.0.len());
    }
}
