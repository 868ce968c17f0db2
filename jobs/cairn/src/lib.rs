//! The operator CLI: keys, repositories, snapshots, browsing, restore and check.

use anyhow::Result;
use cairn_core::exit::Exit;
use cairn_job::config::RepoArgs;
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::{Parser, Subcommand};

mod cmd;
mod store_url;
mod ui;

pub use cmd::SnapshotSelect;
pub use cmd::backup::BackupArgs;
pub use cmd::cat::CatArgs;
pub use cmd::check::CheckArgs;
pub use cmd::diff::DiffArgs;
pub use cmd::forget::ForgetArgs;
pub use cmd::init::InitArgs;
pub use cmd::key::KeyCommand;
pub use cmd::locks::UnlockArgs;
pub use cmd::ls::LsArgs;
pub use cmd::prune::PruneCmdArgs;
pub use cmd::repair::{RepairArgs, RepairCommand};
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
    /// Repair a damaged repository: rebuild the index from the packs, rewrite snapshots
    /// that lost data.
    #[command(subcommand)]
    Repair(RepairCommand),
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
    Diff(DiffArgs),
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
        /// Also serve GET /metrics here (Prometheus text: snapshots and the newest snapshot's
        /// time per source, no contents), e.g. 0.0.0.0:9464 for a ServiceMonitor. Only
        /// /metrics is served on this address.
        #[arg(long, env = "CAIRN_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Print version information as JSON.
    Version,
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
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

/// Each command's `run` gets its flags, the repository flags and the output mode.
async fn dispatch(cli: Cli) -> Result<Exit> {
    let mode = cmd::Mode::new(cli.output.json);
    let repo = &cli.repo;
    match cli.command {
        Command::Key(c) => cmd::key::run(c),
        Command::Init(a) => cmd::init::run(a, repo, mode).await,
        Command::Backup(a) => cmd::backup::run(a, repo, mode).await,
        Command::Forget(a) => cmd::forget::run(a, repo, mode).await,
        Command::Prune(a) => cmd::prune::run(a, repo, mode).await,
        Command::Repair(c) => cmd::repair::run(c, repo, mode).await,
        Command::Locks => cmd::locks::list(repo, mode).await,
        Command::Unlock(a) => cmd::locks::unlock(a, repo, mode).await,
        Command::Snapshots(a) => cmd::snapshots::run(a, repo, mode).await,
        Command::Ls(a) => cmd::ls::run(a, repo, mode).await,
        Command::Cat(a) => cmd::cat::run(a, repo).await,
        Command::Restore(a) => cmd::restore::run(a, repo, mode).await,
        Command::Diff(a) => cmd::diff::run(a, repo, mode).await,
        Command::Check(a) => cmd::check::run(a, repo, mode).await,
        Command::Ui { listen, metrics_listen } => ui::serve(repo, listen, metrics_listen).await,
        Command::Version => cmd::version::run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        // Duplicate ids or group names, bad defaults, conflicts naming unknown args.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    fn parse(argv: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("cairn").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn the_flags_scripts_and_tests_use_parse() {
        let wk = ["--repo", "file:///r", "--write-key", "wk"];
        let backup = [&wk[..], &["backup", "/d", "--source", "s", "--lock-lease", "2s"]].concat();
        let Command::Backup(b) = parse(&backup).command else { panic!("backup") };
        assert_eq!(
            (b.path.to_str(), b.source.as_str(), b.parent.as_str()),
            (Some("/d"), "s", "auto")
        );
        parse(&["backup", "s3://b/p", "--source", "s", "--parent", "none", "--exclude", "x"]);
        parse(&["backup", "/d", "--source", "s", "--tag", "a=b", "--cluster", "c", "--use-inode"]);
        let restore = ["restore", "latest", "--source", "s", "--cluster", "c", "--target", "-"];
        let Command::Restore(r) = parse(&restore).command else { panic!("restore") };
        assert_eq!((r.target.as_str(), r.format.as_str()), ("-", "auto"));
        assert_eq!(
            (r.select.source.as_deref(), r.select.cluster.as_deref()),
            (Some("s"), Some("c"))
        );
        parse(&[
            "restore",
            "x:p",
            "--target",
            "t",
            "--format",
            "tar",
            "--include",
            "a",
            "--no-owner",
        ]);
        let cli = parse(&["diff", "a", "live", "-n", "ns", "--json", "--status", "--all"]);
        assert!(cli.output.json);
        let Command::Diff(d) = cli.command else { panic!("diff") };
        assert_eq!((d.b.as_str(), d.namespaces.as_slice()), ("live", &["ns".to_string()][..]));
        let Command::Snapshots(s) = parse(&["--json", "snapshots", "--cluster", "c"]).command
        else {
            panic!("snapshots")
        };
        assert_eq!(s.select.cluster.as_deref(), Some("c"));
        parse(&["snapshots", "--source", "s", "--cluster", "c"]);
        parse(&["ls", "latest:sub", "--source", "s", "--cluster", "c"]);
        parse(&["cat", "latest:f", "--source", "s"]);
        parse(&["forget", "--keep-last", "1", "--dry-run", "--source", "s"]);
        parse(&["prune", "--dry-run", "--lock-wait", "1s"]);
        parse(&["check", "--read-data-subset", "10%"]);
        parse(&["init", "--recipient", "age1x", "--write-key-out", "/wk", "--compression", "5"]);
        parse(&["key", "generate", "--out", "/id"]);
        parse(&["unlock", "--stale"]);
        assert!(Cli::try_parse_from(["cairn", "unlock"]).is_err());
        assert!(
            Cli::try_parse_from(["cairn", "check", "--read-data", "--read-data-subset", "1%"])
                .is_err()
        );
    }
}
