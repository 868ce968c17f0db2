//! `cairn check`: verify the repository's structure and, optionally, its data.

use anyhow::Result;
use cairn_core::exit::{Exit, usage};
use cairn_core::repo::check::{CheckOptions, CheckReport, check};
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, emit};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Also read every pack and verify every blob's content (needs the identity).
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read this share of packs, e.g. 10%.
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

pub(crate) async fn run(args: CheckArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let fraction = if args.read_data {
        1.0
    } else if let Some(s) = &args.read_data_subset {
        parse_fraction(s)?
    } else {
        0.0
    };
    let repo = repo.open(if fraction > 0.0 { Need::Read } else { Need::Write }).await?;
    let report = check(&repo, &CheckOptions { read_data_fraction: fraction }).await?;
    emit(mode, &report)?;
    Ok(if report.ok() { Exit::Success } else { Exit::Integrity })
}

fn parse_fraction(s: &str) -> Result<f64> {
    cairn_core::parse::percentage(s, 100.0, false)
        .map_err(|e| usage(format!("--read-data-subset: {e}")))
}

impl Render for CheckReport {
    fn json(&self) -> impl serde::Serialize {
        self
    }

    fn print_text(&self) {
        println!(
            "checked {} snapshots, {} index objects, {} packs, {} blobs; read data of {} packs",
            self.snapshots, self.index_objects, self.packs, self.blobs, self.packs_read
        );
        if !self.unindexed_packs.is_empty() {
            println!(
                "{} unindexed packs (left by interrupted backups; prune removes them)",
                self.unindexed_packs.len()
            );
        }
        for p in &self.problems {
            println!("PROBLEM {} {}: {}", p.kind, p.object, p.detail);
        }
        for a in &self.affected {
            println!(
                "AFFECTED snapshot {} ({}): {}",
                &a.snapshot[..8],
                a.source,
                a.paths.join(", ")
            );
        }
        if !self.unreadable.is_empty() {
            println!(
                "INCOMPLETE: {} objects could not be read (first: {})",
                self.unreadable.len(),
                self.unreadable[0]
            );
        }
        println!("{}", if self.ok() { "no problems found" } else { "the repository is damaged" });
    }
}
