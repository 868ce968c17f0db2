//! One module per command. Each `run` takes the command's parsed flags, the repository flags
//! and the output mode; it computes a result value and hands it to [`emit`], which prints it
//! as text for people or as JSON for scripts (`--json`). Three print the same either way:
//! `cat` (the file's bytes), `key generate` (the public key), `version` (one JSON line).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use cairn_core::repo::{Node, Repository, SnapshotEntry, SnapshotFilter};

pub(crate) mod backup;
pub(crate) mod cat;
pub(crate) mod check;
pub(crate) mod diff;
pub(crate) mod forget;
pub(crate) mod init;
pub(crate) mod key;
pub(crate) mod locks;
pub(crate) mod ls;
pub(crate) mod prune;
pub(crate) mod repair;
pub(crate) mod restore;
pub(crate) mod snapshots;
pub(crate) mod version;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// For people.
    Text,
    /// Pretty-printed JSON on stdout (`--json`).
    Json,
}

impl Mode {
    pub(crate) fn new(json: bool) -> Mode {
        if json { Mode::Json } else { Mode::Text }
    }
}

/// A command's result, printable either way.
pub(crate) trait Render {
    /// What `--json` prints.
    fn json(&self) -> impl serde::Serialize;
    /// What a person reads.
    fn print_text(&self);
}

/// Print `result` the way `mode` asks.
pub(crate) fn emit(mode: Mode, result: &impl Render) -> Result<()> {
    match mode {
        Mode::Json => print_json(&result.json()),
        Mode::Text => {
            result.print_text();
            Ok(())
        }
    }
}

/// `v` as pretty-printed JSON and a newline on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Create a file readable by its owner only.
pub(crate) fn write_secret_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Which snapshots a command considers: the ones `cairn snapshots` lists, the ones `latest`
/// and id prefixes resolve among.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SnapshotSelect {
    /// Only snapshots of this source (e.g. pvc/ns/name); `latest` and id prefixes resolve
    /// among these.
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: Option<String>,
    /// Only snapshots of this cluster; `latest` and id prefixes resolve among these.
    #[arg(long)]
    pub cluster: Option<String>,
}

impl SnapshotSelect {
    pub fn filter(&self) -> SnapshotFilter<'_> {
        SnapshotFilter { source: self.source.as_deref(), cluster: self.cluster.as_deref() }
    }

    /// Resolve `latest`, an id or an id prefix among the selected snapshots.
    pub(crate) async fn find(&self, repo: &Repository, spec: &str) -> Result<SnapshotEntry> {
        Ok(repo.find_snapshot_in(spec, self.filter()).await?)
    }

    /// Resolve `SNAP[:PATH]`: the snapshot, and the node at PATH (its root without one).
    pub(crate) async fn resolve(
        &self,
        repo: &Repository,
        target: &str,
    ) -> Result<(SnapshotEntry, Node)> {
        let (snap, path) = split_target(target);
        let snap = self.find(repo, snap).await?;
        let node = repo.lookup(&snap.snapshot, path).await?;
        Ok((snap, node))
    }
}

/// `SNAP[:PATH]`.
pub(crate) fn split_target(s: &str) -> (&str, &str) {
    s.split_once(':').unwrap_or((s, ""))
}
