//! `cairn repair index` and `cairn repair snapshots`: put a damaged repository back into a
//! state where every snapshot restores what is left of it (FORMAT.md §15.8).

use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_core::exit::Exit;
use cairn_core::repo::repair::{IndexRepair, SnapshotsRepair, repair_index, repair_snapshots};
use cairn_job::config::{LockArgs, Need, RepoArgs};

use super::{Mode, Render, emit};

#[derive(Debug, clap::Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the packs' own headers: index packs no index lists (a lost or
    /// damaged index object, a crashed writer), drop entries of packs that are gone so that
    /// no backup reuses their blobs. Under the maintenance lock: safe beside backups.
    Index(RepairArgs),
    /// Rewrite each snapshot that refers to lost data into a new, partial snapshot without
    /// the lost files (tagged cairn.repaired-from=<original>; `latest` resolves to it). The
    /// originals stay until forgotten. Run `repair index` first.
    Snapshots(RepairArgs),
}

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub lock: LockArgs,
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) async fn run(cmd: RepairCommand, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    // Trees and index objects open with the write key: no identity needed.
    let repo = Arc::new(repo.open(Need::Write).await?);
    match cmd {
        RepairCommand::Index(a) => {
            let report = repair_index(repo, &a.lock.options("repair index"), a.dry_run)
                .await
                .context("repair index")?;
            emit(mode, &report)?;
        }
        RepairCommand::Snapshots(a) => {
            let report = repair_snapshots(repo, &a.lock.options("repair snapshots"), a.dry_run)
                .await
                .context("repair snapshots")?;
            emit(mode, &report)?;
        }
    }
    Ok(Exit::Success)
}

fn would(dry_run: bool, done: &'static str, planned: &'static str) -> &'static str {
    if dry_run { planned } else { done }
}

impl Render for IndexRepair {
    fn json(&self) -> impl serde::Serialize {
        self
    }

    fn print_text(&self) {
        for k in &self.damaged_index_objects {
            println!("damaged index object {k}");
        }
        for p in &self.missing_packs {
            println!("missing pack {p}: its blobs are lost (`cairn check` names the snapshots)");
        }
        for p in &self.unreadable_packs {
            println!("pack {p}: header does not open; left unindexed");
        }
        println!(
            "{} index objects read; {} packs {} from their headers, {} missing packs {}; {} index \
             objects written, {} deleted",
            self.index_objects,
            self.recovered_packs.len(),
            would(self.dry_run, "indexed", "would be indexed"),
            self.missing_packs.len(),
            would(self.dry_run, "dropped", "would be dropped"),
            self.written,
            self.deleted
        );
        if !self.changed() {
            println!("the index is complete");
        }
    }
}

impl Render for SnapshotsRepair {
    fn json(&self) -> impl serde::Serialize {
        self
    }

    fn print_text(&self) {
        for r in &self.repaired {
            let new =
                r.repaired.as_deref().map_or("(dry run)".to_string(), |id| id[..8].to_string());
            println!("{} {} → {new}: {} lost", &r.original[..8], r.source, r.lost.len());
            for path in &r.lost {
                println!("    - {path}");
            }
        }
        println!(
            "{} snapshots checked, {} {}",
            self.snapshots,
            self.repaired.len(),
            would(self.dry_run, "repaired", "would be repaired")
        );
    }
}
