//! The PVC backup job. `run` (the CronJob) orchestrates: for each selected PVC a CSI
//! VolumeSnapshot, a temporary PVC cloned from it, an ingest Job that reads the clone into
//! the repository, and cleanup. `ingest` is the same binary inside that Job's pod.

pub mod dump;
pub mod ingest;
pub mod orchestrate;

use cairn_core::Exit;
use cairn_job::config::RepoArgs;
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-pvc-ingest",
    version,
    about = "Back up PVCs through CSI snapshots into a cairn repository",
    long_about = "Back up PVCs through CSI snapshots into a cairn repository.\n\n\
        `run` (the CronJob) selects PVCs (namespaces, label selector, the \
        backup.cairn.dev/enabled annotation), and for each: finds its CSI driver, picks a \
        VolumeSnapshotClass (the PVC's backup.cairn.dev/snapshot-class annotation, else the \
        driver's default class), cuts a VolumeSnapshot, waits until it is ready, clones it \
        into a temporary PVC of the same StorageClass, runs an ingest Job that mounts the \
        clone read-only and backs it up as source pvc/<namespace>/<name> (incremental \
        against the previous snapshot of that PVC), collects the Job's summary from its \
        termination message, and deletes the Job, the clone and the VolumeSnapshot. Every \
        temporary object is labelled app.kubernetes.io/managed-by=cairn with the run id and \
        an expiry; each run first sweeps what crashed runs left.\n\n\
        `ingest` is what runs inside the ingest pod.\n\n\
        Exit codes: 0 ok, 1 retryable (nothing backed up: cluster, store or snapshots \
        failing), 2 usage, 3 partial (some PVCs failed, each listed; the others are saved), \
        4 credentials refused, 5 another run of this instance (or an ingest of this PVC) is \
        running."
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
    /// Orchestrate: snapshot, clone and ingest every selected PVC (the CronJob).
    Run(Box<orchestrate::RunArgs>),
    /// Back up a mounted volume or block device (inside the ingest pod).
    Ingest(Box<ingest::IngestArgs>),
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn-pvc-ingest")
    }

    /// The orchestrator deletes what it created when it is stopped: most of the pod's
    /// grace period (150 s in k8s-manifests/base), not the default.
    fn term_grace(&self) -> std::time::Duration {
        match self.command {
            Command::Run(_) => std::time::Duration::from_secs(140),
            Command::Ingest(_) => cairn_job::TERM_GRACE,
        }
    }
}

pub async fn run(cli: Cli) -> Exit {
    match &cli.command {
        Command::Run(args) => orchestrate::run(&cli.repo, args, cli.output.json).await,
        Command::Ingest(args) => ingest::run(&cli.repo, args, cli.output.json).await,
    }
}
