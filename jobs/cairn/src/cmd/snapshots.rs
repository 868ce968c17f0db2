//! `cairn snapshots`: the snapshot list, as a table or JSON.

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_core::progress::human_bytes;
use cairn_core::repo::SnapshotEntry;
use cairn_job::config::{Need, RepoArgs};

use super::{Mode, Render, SnapshotSelect, emit};

#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub select: SnapshotSelect,
}

/// The selected snapshots, oldest first.
struct Listed(Vec<SnapshotEntry>);

pub(crate) async fn run(args: SnapshotsArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let repo = repo.open(Need::Write).await?;
    let filter = args.select.filter();
    let snaps = repo.snapshots().await?.into_iter().filter(|s| filter.matches(&s.snapshot));
    emit(mode, &Listed(snaps.collect()))?;
    Ok(Exit::Success)
}

/// A snapshot as `cairn snapshots --json` (and the UI) show it.
pub(crate) fn snapshot_json(s: &SnapshotEntry) -> serde_json::Value {
    serde_json::json!({
        "id": s.id.to_hex(),
        "short_id": s.id.short(),
        "time": s.snapshot.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "host": s.snapshot.host,
        "source": s.snapshot.source,
        "cluster": s.snapshot.cluster,
        "tags": s.snapshot.tags,
        "parent": s.snapshot.parent.map(|p| p.to_hex()),
        "partial": s.snapshot.partial,
        "failures": s.snapshot.failures,
        "summary": s.snapshot.summary,
    })
}

impl Render for Listed {
    fn json(&self) -> impl serde::Serialize {
        self.0.iter().map(snapshot_json).collect::<Vec<_>>()
    }

    fn print_text(&self) {
        println!(
            "{:<10} {:<20} {:<14} {:<28} {:>10} {:>8}  tags",
            "id", "time", "cluster", "source", "size", "files"
        );
        for s in &self.0 {
            let t = s
                .snapshot
                .time
                .format(&time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .unwrap_or_default();
            let tags: Vec<String> =
                s.snapshot.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<10} {:<20} {:<14} {:<28} {:>10} {:>8}  {}{}",
                s.id.short(),
                t,
                s.snapshot.cluster.as_deref().unwrap_or("-"),
                s.snapshot.source,
                human_bytes(s.snapshot.summary.bytes),
                s.snapshot.summary.files,
                tags.join(","),
                if s.snapshot.partial { " PARTIAL" } else { "" }
            );
        }
        println!("{} snapshots", self.0.len());
    }
}
