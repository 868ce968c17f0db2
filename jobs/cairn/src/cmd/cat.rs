//! `cairn cat`: one file of a snapshot, its bytes on stdout.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_core::exit::{Exit, usage};
use cairn_core::repo::NodeKind;
use cairn_job::config::{Need, RepoArgs};

use super::{SnapshotSelect, split_target};

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// SNAP:PATH: `latest`, a snapshot id or id prefix, and the path of a file in it.
    pub target: String,
    #[command(flatten)]
    pub select: SnapshotSelect,
}

/// The file's contents are the output, with or without --json.
pub(crate) async fn run(args: CatArgs, repo: &RepoArgs) -> Result<Exit> {
    let repo = Arc::new(repo.open(Need::Read).await?);
    repo.load_index().await?;
    let (_, node) = args.select.resolve(&repo, &args.target).await?;
    if node.kind != NodeKind::File {
        let (_, path) = split_target(&args.target);
        return Err(usage(format!("{path} is not a file")));
    }
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let stdout = std::io::stdout();
        // Stdout is line-buffered: a binary file would be scanned for newlines chunk by chunk.
        let mut out = SeekStdout(std::io::BufWriter::with_capacity(1 << 20, stdout.lock()));
        cairn_core::fs::write_file_to(&repo, &handle, &node, &mut out, false, |_| {})
            .with_context(|| format!("reading {}", node.name.display()))?;
        out.0.flush()?;
        Ok(())
    })
    .await??;
    Ok(Exit::Success)
}

/// Stdout cannot seek; holes are written as zeros there, so the seek is never called.
struct SeekStdout<W>(W);

impl<W: Write> Write for SeekStdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W> std::io::Seek for SeekStdout<W> {
    fn seek(&mut self, _: std::io::SeekFrom) -> std::io::Result<u64> {
        Err(std::io::Error::other("stdout cannot seek"))
    }
}
