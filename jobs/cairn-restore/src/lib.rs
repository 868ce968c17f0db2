//! The restore job, launched from CI or by hand as a one-off Job: `etcd` writes an etcd
//! snapshot back to a file that `etcdutl snapshot restore` accepts (and can run it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cairn_core::fs::stream::verify_sha256_trailer;
use cairn_core::progress::human_bytes;
use cairn_core::repo::NodeKind;
use cairn_core::repo::short_id;
use cairn_core::{Error, Exit};
use cairn_job::config::{Need, RepoArgs};
use cairn_job::report::{self, JobReport, Report};
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::{Parser, Subcommand};
use serde::Serialize;

/// The database file inside an etcd snapshot (as `cairn-etcd-snapshot` stores it).
pub mod dump;
pub mod manifests;
pub mod pvc;

pub use cairn_core::records::ETCD_DB_FILE;
use cairn_core::records::{EtcdMeta, EtcdRecord, SnapshotRecord};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-restore",
    version,
    about = "Restore from a cairn repository",
    long_about = "Restore from a cairn repository; meant for one-off Jobs launched by CI or an \
        operator. Needs the identity (CAIRN_IDENTITY or CAIRN_PASSPHRASE): a write key cannot \
        decrypt.\n\n\
        Exit codes: 0 ok, 1 retryable, 2 usage (unknown snapshot, output exists, nothing \
        selected), 3 partial (manifests: some objects failed, each reported), 4 integrity \
        (checksum mismatch, damaged data) or access denied."
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
    /// Write an etcd snapshot to a file (SHA-256 trailer intact and verified); optionally run
    /// `etcdutl snapshot restore` into a data directory.
    Etcd(EtcdArgs),
    /// Apply objects of a manifest snapshot to a cluster: all, namespaces, resources, a label
    /// selector or single paths; CRDs and namespaces first; server-side apply as `cairn`.
    /// Exit 3 when any object failed (each is reported).
    Manifests(manifests::ManifestArgs),
    /// Write a snapshot into a PVC: created from the recorded spec (or --existing
    /// overwrite|merge), filled by a writer Job that mounts it; the writer's exit code is
    /// ours.
    Pvc(Box<pvc::PvcArgs>),
    /// Restore into a mounted volume or block device (inside the writer Job's pod).
    PvcWriter(pvc::WriterArgs),
    /// Stream a dump (source dump/<namespace>/<name>) into a command's stdin in a pod, e.g.
    /// `cairn-restore dump --source dump/prod/pg -- psql --single-transaction`.
    Dump(Box<dump::DumpArgs>),
}

#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// Snapshot id, unique prefix, or `latest` (of --source).
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    pub snapshot: String,
    /// Source name the etcd job used.
    #[arg(long, env = "CAIRN_SOURCE", default_value = "etcd")]
    pub source: String,
    /// Where to write the snapshot file.
    #[arg(long, env = "CAIRN_OUTPUT")]
    pub output: PathBuf,
    /// Replace --output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Also run `etcdutl snapshot restore` into this (new) data directory.
    #[arg(long, env = "CAIRN_ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Member name for the restored data directory.
    #[arg(long, env = "CAIRN_ETCD_NAME", requires = "data_dir")]
    pub name: Option<String>,
    /// Initial cluster, e.g. `m1=https://10.0.0.1:2380,m2=…`.
    #[arg(long, env = "CAIRN_ETCD_INITIAL_CLUSTER", requires = "data_dir")]
    pub initial_cluster: Option<String>,
    /// This member's peer URLs.
    #[arg(long, env = "CAIRN_ETCD_INITIAL_ADVERTISE_PEER_URLS", requires = "data_dir")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster token (a new one avoids talking to members of the old cluster).
    #[arg(long, env = "CAIRN_ETCD_INITIAL_CLUSTER_TOKEN", requires = "data_dir")]
    pub initial_cluster_token: Option<String>,
    /// Raise the revision by this much (Kubernetes: so watchers see a newer revision than
    /// any they cached; e.g. 1000000000).
    #[arg(long, env = "CAIRN_ETCD_BUMP_REVISION", requires = "data_dir")]
    pub bump_revision: Option<u64>,
    /// Mark the old revisions compacted (with --bump-revision), so clients re-list.
    #[arg(long, env = "CAIRN_ETCD_MARK_COMPACTED", requires = "bump_revision")]
    pub mark_compacted: bool,
    /// The etcdutl binary.
    #[arg(long, env = "CAIRN_ETCDUTL", default_value = "etcdutl")]
    pub etcdutl: PathBuf,
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn-restore")
    }
}

/// What an etcd restore reports.
pub type EtcdSummary = Report<EtcdRestore>;

#[derive(Debug, Default, Serialize)]
pub struct EtcdRestore {
    pub snapshot: Option<String>,
    pub output: Option<PathBuf>,
    pub bytes: u64,
    pub sha256: Option<String>,
    /// What the snapshot job recorded (revision, HashKV, member): check the restored member
    /// against it.
    pub recorded: Option<EtcdRecord>,
    pub data_dir: Option<PathBuf>,
}

impl JobReport for EtcdRestore {
    fn render(r: &Report<Self>) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (Some(output), None) = (&r.output, &r.error) else { return out };
        let _ = writeln!(
            out,
            "restored etcd snapshot {} to {} ({}, SHA-256 verified)",
            r.snapshot.as_deref().map_or("", short_id),
            output.display(),
            human_bytes(r.bytes)
        );
        if let Some(rec) = &r.recorded {
            let _ = writeln!(
                out,
                "  recorded: revision {}  HashKV {}  member {}",
                rec.revision, rec.hash_kv, rec.member.name
            );
        }
        if let Some(d) = &r.data_dir {
            let _ = writeln!(out, "  etcdutl snapshot restore → {}", d.display());
        }
        out
    }
}

pub(crate) const PROG: &str = "cairn-restore";

pub async fn run(cli: Cli) -> Exit {
    let json = cli.output.json;
    match &cli.command {
        Command::Pvc(args) => pvc::run(&cli.repo, args, json).await,
        Command::PvcWriter(args) => pvc::run_writer(&cli.repo, args, json).await,
        Command::Manifests(args) => {
            let report = manifests::execute(&cli.repo, args).await;
            report.print(PROG, json);
            report.exit_class()
        }
        Command::Dump(args) => {
            let report = report::run(
                PROG,
                dump::DumpRestore::default(),
                async |d: &mut dump::DumpRestore| dump::restore(&cli.repo, args, d).await,
            )
            .await;
            report.print(PROG, json);
            report.exit_class()
        }
        Command::Etcd(args) => {
            let report = report::run(PROG, EtcdRestore::default(), async |e: &mut EtcdRestore| {
                restore_etcd(&cli.repo, args, e).await.map(|()| Exit::Success)
            })
            .await;
            report.print(PROG, json);
            report.exit_class()
        }
    }
}

async fn restore_etcd(
    repo: &RepoArgs,
    args: &EtcdArgs,
    summary: &mut EtcdRestore,
) -> anyhow::Result<()> {
    if args.output.exists() && !args.force {
        return Err(cairn_core::exit::usage(format!(
            "{} exists (use --force to replace it)",
            args.output.display()
        )));
    }
    if let Some(d) = &args.data_dir
        && d.exists()
    {
        return Err(cairn_core::exit::usage(format!(
            "data directory {} exists; etcdutl restores into a new one",
            d.display()
        )));
    }
    let repo = Arc::new(repo.open(Need::Read).await.context("opening the repository")?);
    repo.load_index().await?;
    let snap = repo.find_snapshot(&args.snapshot, Some(&args.source)).await?;
    summary.snapshot = Some(snap.id.to_hex());
    summary.recorded = EtcdMeta::of(&snap.snapshot)?.map(|m| m.etcd);
    let node = repo.lookup(&snap.snapshot, ETCD_DB_FILE).await.map_err(|e| match e {
        Error::NotFound(_) => Error::NotFound(format!(
            "snapshot {} has no {ETCD_DB_FILE}: not an etcd snapshot",
            snap.id.short()
        )),
        other => other,
    })?;
    if node.kind != NodeKind::File {
        return Err(Error::Integrity(format!("{ETCD_DB_FILE} is not a file")).into());
    }

    // Written under a temporary name and renamed once verified: a failed restore never
    // leaves a plausible-looking file behind.
    let partial = partial_path(&args.output);
    let handle = tokio::runtime::Handle::current();
    let (repo2, node2, partial2) = (repo.clone(), node.clone(), partial.clone());
    let written = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&partial2)
            .with_context(|| format!("creating {}", partial2.display()))?;
        cairn_core::fs::write_file_to(&repo2, &handle, &node2, &mut f, false, |_| {})?;
        f.sync_all()?;
        Ok(())
    })
    .await?;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("writing {}", args.output.display())));
    }
    let verified = verify_sha256_trailer(&partial).context("reading back the file")?;
    let digest = match verified {
        Ok(d) => d,
        Err(m) => {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Integrity(format!("restored {ETCD_DB_FILE}: {m}")).into());
        }
    };
    if let Some(want) = summary.recorded.as_ref().map(|r| r.sha256.as_str())
        && want != hex::encode(digest)
    {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Integrity(format!(
            "restored {ETCD_DB_FILE} has SHA-256 {} but the snapshot job recorded {want}",
            hex::encode(digest)
        ))
        .into());
    }
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("renaming into {}", args.output.display()))?;
    summary.output = Some(args.output.clone());
    summary.bytes = node.size;
    summary.sha256 = Some(hex::encode(digest));

    if let Some(dir) = &args.data_dir {
        run_etcdutl(args, dir).await?;
        summary.data_dir = Some(dir.clone());
    }
    Ok(())
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".cairn-partial");
    output.with_file_name(name)
}

async fn run_etcdutl(args: &EtcdArgs, dir: &Path) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(&args.etcdutl);
    cmd.arg("snapshot").arg("restore").arg(&args.output).arg("--data-dir").arg(dir);
    let opt = |cmd: &mut tokio::process::Command, flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            cmd.arg(flag).arg(v);
        }
    };
    opt(&mut cmd, "--name", &args.name);
    opt(&mut cmd, "--initial-cluster", &args.initial_cluster);
    opt(&mut cmd, "--initial-advertise-peer-urls", &args.initial_advertise_peer_urls);
    opt(&mut cmd, "--initial-cluster-token", &args.initial_cluster_token);
    if let Some(n) = args.bump_revision {
        cmd.arg("--bump-revision").arg(n.to_string());
    }
    if args.mark_compacted {
        cmd.arg("--mark-compacted");
    }
    tracing::info!(command = ?cmd.as_std(), "running etcdutl");
    let out = match tokio::time::timeout(std::time::Duration::from_secs(3600), cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(cairn_core::exit::usage(format!(
                "{} not found: put etcdutl on the PATH or pass --etcdutl (the restore image ships it)",
                args.etcdutl.display()
            )));
        }
        Ok(Err(e)) => return Err(e).context("starting etcdutl"),
        Err(_) => return Err(Error::Retryable("etcdutl ran for over an hour".into()).into()),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
        return Err(Error::Invalid(format!(
            "etcdutl snapshot restore failed ({}): {last}",
            out.status
        ))
        .into());
    }
    Ok(())
}
