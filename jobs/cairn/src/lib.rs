//! The operator CLI: keys, repositories, snapshots, browsing, restore and check.

use anyhow::Result;
use cairn_core::exit::{Exit, ExitError};
use cairn_job::config::{Need, RepoArgs};
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::{Parser, Subcommand};

mod cmd;
mod store_url;
mod ui;

pub use cmd::SnapshotSelect;
pub use cmd::backup::BackupArgs;
pub use cmd::cat::CatArgs;
pub use cmd::check::CheckArgs;
pub use cmd::forget::ForgetArgs;
pub use cmd::init::InitArgs;
pub use cmd::key::KeyCommand;
pub use cmd::locks::UnlockArgs;
pub use cmd::ls::LsArgs;
pub use cmd::prune::PruneCmdArgs;
pub use cmd::restore::RestoreArgs;
pub use cmd::snapshots::SnapshotsArgs;

pub(crate) use cmd::snapshots::snapshot_json;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Back up and restore Kubernetes clusters: the operator CLI",
    long_about = "Back up and restore Kubernetes clusters: the operator CLI.\n\n\
        The repository comes from --repo/CAIRN_REPO. Backups need the write key \
        (--write-key/CAIRN_WRITE_KEY); reading file contents (restore, cat, check --read-data) \
        needs an age identity (--identity/CAIRN_IDENTITY) or CAIRN_PASSPHRASE.\n\n\
        Exit codes: 0 ok, 1 retryable, 2 usage, 3 partial, 4 integrity/auth, 5 locked."
)]
pub struct Cli {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage age identities.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Create a repository; prints the write key's location.
    Init(InitArgs),
    /// Back up a directory (or one file).
    Backup(BackupArgs),
    /// Delete snapshot records a retention policy does not keep (prune reclaims the space).
    Forget(ForgetArgs),
    /// Reclaim space: delete packs marked by an earlier prune once their grace period has
    /// passed, mark newly unused packs, repack wasteful ones, compact the index.
    Prune(PruneCmdArgs),
    /// List lock objects, with holders and lease state (judged on the store's clock).
    Locks,
    /// Remove lock objects whose lease has run out (holders that died). Live locks are
    /// never removed; expired ones are also removed by whoever finds them.
    Unlock(UnlockArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List a directory of a snapshot: SNAP[:PATH].
    Ls(LsArgs),
    /// Write one file of a snapshot to stdout: SNAP:PATH.
    Cat(CatArgs),
    /// Restore a snapshot, a subtree or one file: SNAP[:PATH].
    Restore(RestoreArgs),
    /// Paths added, removed or changed between two snapshots. Between two manifest
    /// snapshots, or a manifest snapshot and `live` (the cluster of the current kubeconfig):
    /// objects added, removed and changed, with the fields that changed, ignoring server
    /// noise (resourceVersion, managedFields, generation, timestamps, status).
    Diff {
        a: String,
        /// A second snapshot, or `live`.
        b: String,
        /// Resolve `latest` and id prefixes among snapshots of this source.
        #[arg(long, env = "CAIRN_SOURCE")]
        source: Option<String>,
        /// Manifests: only this namespace. Repeatable.
        #[arg(long = "namespace", short = 'n')]
        namespaces: Vec<String>,
        /// Manifests: compare status too.
        #[arg(long)]
        status: bool,
        /// Manifests: include objects the cluster manages itself (leases, endpoint slices,
        /// objects owned by a controller).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        kube: cairn_kube::KubeArgs,
    },
    /// Verify the repository; with --read-data also every blob's content.
    Check(CheckArgs),
    /// Browse the repository in a web browser: snapshots on a timeline per source, manifest
    /// snapshots as the cluster at that time (nodes, workloads, pods, PVCs, each object's YAML,
    /// the same object earlier and later, diffs between two times), file and PVC snapshots as
    /// a file browser with downloads (one file, or a folder as tar). Read-only. With the write
    /// key only it shows metadata (names, sizes, times) and says why.
    Ui {
        /// Address to listen on. Loopback by default: the page shows decrypted data to anyone
        /// who reaches it, without authentication; from a pod use kubectl port-forward.
        #[arg(long, env = "CAIRN_UI_LISTEN", default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
    },
    /// Print version information as JSON.
    Version,
}

impl Cli {
    pub fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn")
    }
}

/// Run a command and map its outcome to an exit code, printing one line on failure.
pub async fn run(cli: Cli) -> Exit {
    match dispatch(cli).await {
        Ok(exit) => exit,
        Err(e) => cairn_core::exit::report_failure("cairn", &e).0,
    }
}

/// `SNAP[:PATH]`.
fn split_target(s: &str) -> (&str, &str) {
    s.split_once(':').unwrap_or((s, ""))
}

use cmd::print_json;

async fn dispatch(cli: Cli) -> Result<Exit> {
    let mode = cmd::Mode::new(cli.output.json);
    let json = cli.output.json;
    let args = cli.repo;
    match cli.command {
        Command::Ui { listen } => ui::serve(&args, listen).await,
        Command::Version => cmd::version::run(),
        Command::Key(c) => cmd::key::run(c),
        Command::Init(a) => cmd::init::run(a, &args, mode).await,
        Command::Backup(a) => cmd::backup::run(a, &args, mode).await,
        Command::Forget(a) => cmd::forget::run(a, &args, mode).await,
        Command::Prune(a) => cmd::prune::run(a, &args, mode).await,
        Command::Locks => cmd::locks::list(&args, mode).await,
        Command::Unlock(a) => cmd::locks::unlock(a, &args, mode).await,
        Command::Check(a) => cmd::check::run(a, &args, mode).await,
        Command::Snapshots(a) => cmd::snapshots::run(a, &args, mode).await,
        Command::Ls(a) => cmd::ls::run(a, &args, mode).await,
        Command::Cat(a) => cmd::cat::run(a, &args).await,
        Command::Restore(a) => cmd::restore::run(a, &args, mode).await,
        Command::Diff { a, b, source, namespaces, status, all, kube } => {
            let opts = ManifestDiff { namespaces, status, all, kube };
            if let Some(exit) = manifest_diff(&args, &a, &b, source.as_deref(), &opts, json).await?
            {
                return Ok(exit);
            }
            let repo = args.open(Need::Write).await?;
            repo.load_index().await?;
            let (sa, pa) = split_target(&a);
            let (sb, pb) = split_target(&b);
            let sa = repo.find_snapshot(sa, source.as_deref()).await?;
            let sb = repo.find_snapshot(sb, source.as_deref()).await?;
            let na = repo.lookup(&sa.snapshot, pa).await?;
            let nb = repo.lookup(&sb.snapshot, pb).await?;
            let entries = cairn_core::repo::diff::diff_trees(&repo, &na, &nb).await?;
            if json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    let sign = match e.change {
                        cairn_core::repo::diff::Change::Added => "+",
                        cairn_core::repo::diff::Change::Removed => "-",
                        cairn_core::repo::diff::Change::Changed => "M",
                    };
                    println!("{sign} {}", e.path);
                }
                println!("{} differences", entries.len());
            }
            Ok(Exit::Success)
        }
    }
}

struct ManifestDiff {
    namespaces: Vec<String>,
    status: bool,
    all: bool,
    kube: cairn_kube::KubeArgs,
}

/// `cairn diff` on manifest snapshots (or a snapshot and `live`); `None` when the snapshots
/// are not manifest snapshots (the file diff applies).
async fn manifest_diff(
    args: &RepoArgs,
    a: &str,
    b: &str,
    source: Option<&str>,
    opts: &ManifestDiff,
    json: bool,
) -> Result<Option<Exit>> {
    use cairn_kube::collect::{CollectOptions, Filters};
    use cairn_kube::compare::{CompareOptions, ObjectChange, compare, compare_with_live};
    use cairn_kube::stored::{is_manifest_snapshot, load_changed_pair};

    if a.contains(':') || (b != "live" && b.contains(':')) {
        return Ok(None);
    }
    // Reading objects needs the identity: manifests are file contents.
    let repo = args.open(Need::Read).await?;
    repo.load_index().await?;
    let sa = repo.find_snapshot(a, source).await?;
    if !is_manifest_snapshot(&sa.snapshot) {
        if b == "live" {
            return Err(ExitError(
                Exit::Usage,
                format!(
                    "snapshot {} is not a manifest snapshot: `live` compares manifests",
                    sa.id.short()
                ),
            )
            .into());
        }
        return Ok(None);
    }
    let ns = opts.namespaces.clone();
    let keep = move |p: &cairn_kube::ObjectPath| {
        ns.is_empty()
            || match &p.namespace {
                Some(n) => ns.contains(n),
                None => p.group.is_empty() && p.resource == "namespaces" && ns.contains(&p.name),
            }
    };
    let compare_opts = CompareOptions { with_status: opts.status, all: opts.all };
    let (diffs, against) = if b == "live" {
        // Compare with what the export would have seen: its filters, narrowed by ours.
        let mut filters: Filters = sa
            .snapshot
            .meta
            .pointer("/manifests/filters")
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default();
        if !opts.namespaces.is_empty() {
            filters.namespaces = opts.namespaces.clone();
        }
        let client = opts.kube.client().await?;
        let collect_opts = CollectOptions { concurrency: 8, page_size: 500 };
        let (diffs, collected) = compare_with_live(
            &repo,
            &sa.snapshot,
            &keep,
            &client,
            &filters,
            &collect_opts,
            compare_opts,
        )
        .await?;
        for d in collected.denied.iter().chain(&collected.skipped) {
            eprintln!("cairn: live side incomplete: {d}");
        }
        (diffs, "the live cluster".to_string())
    } else {
        let sb = repo.find_snapshot(b, source).await?;
        if !is_manifest_snapshot(&sb.snapshot) {
            return Ok(None);
        }
        let (x, y) = load_changed_pair(&repo, &sa.snapshot, &sb.snapshot, &keep).await?;
        (compare(&x, &y, compare_opts), format!("snapshot {}", sb.id.short()))
    };
    if json {
        print_json(&diffs)?;
        return Ok(Some(Exit::Success));
    }
    let count = |c| diffs.iter().filter(|d| d.change == c).count();
    for d in &diffs {
        let sign = match d.change {
            ObjectChange::Added => "+",
            ObjectChange::Removed => "-",
            ObjectChange::Changed => "~",
        };
        println!("{sign} {}", d.object);
        for f in &d.fields {
            println!("    {}", f.line());
        }
    }
    println!(
        "snapshot {} → {against}: {} changed, {} removed, {} added",
        sa.id.short(),
        count(ObjectChange::Changed),
        count(ObjectChange::Removed),
        count(ObjectChange::Added)
    );
    Ok(Some(Exit::Success))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        // Duplicate ids or group names, bad defaults, conflicts naming unknown args.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
