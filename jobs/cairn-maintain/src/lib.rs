//! The maintenance job: forget (retention policy) → prune (two-phase GC) → check (structure,
//! plus the data of a random share of packs). One summary at the end; the exit code is the
//! worst outcome of the steps (README, "Exit codes").

use std::sync::Arc;

use anyhow::Context;
use cairn_core::Exit;
use cairn_core::repo::Repository;
use cairn_core::repo::check::{CheckOptions, CheckReport, check};
use cairn_core::repo::forget::{ForgetReport, forget};
use cairn_core::repo::lock::{Lock, LockKind};
use cairn_core::repo::prune::{PruneOptions, PruneReport, prune, prune_locked};
use cairn_job::config::{KeepArgs, LockArgs, PruneArgs, RepoArgs};
use cairn_job::metrics::{RepositoryState, SourceState};
use cairn_job::report::{self, JobReport, Report};
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::Parser;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-maintain",
    version,
    about = "Retention, garbage collection and verification of a cairn repository",
    long_about = "Retention, garbage collection and verification of a cairn repository, for a \
        CronJob beside the backup jobs.\n\n\
        1. forget: delete the snapshot records the --keep-* policy does not keep (skipped \
           when no --keep-* flag is given);\n\
        2. prune: delete packs marked by an earlier run once their grace period has passed, \
           mark newly unused packs, repack wasteful ones, compact the index; safe beside \
           running backups;\n\
        3. check: verify the structure, and the data of --check-subset of the packs.\n\n\
        With only the write key (CAIRN_WRITE_KEY) data packs are not repacked and the check \
        reads no data; an identity (CAIRN_IDENTITY or CAIRN_PASSPHRASE) enables both.\n\n\
        Exit codes: 0 ok, 1 retryable, 2 usage, 4 damage found or access denied, 5 another \
        prune holds the maintenance lock."
)]
pub struct Cli {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub keep: KeepArgs,
    #[command(flatten)]
    pub prune: PruneArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Share of packs whose data the check reads and verifies (0% for structure only).
    #[arg(long, env = "CAIRN_CHECK_SUBSET", default_value = "5%")]
    pub check_subset: String,
    /// Skip the prune step.
    #[arg(long, env = "CAIRN_NO_PRUNE")]
    pub no_prune: bool,
    /// Report what forget and prune would do; change nothing.
    #[arg(long, env = "CAIRN_DRY_RUN")]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn-maintain")
    }
}

/// What a maintenance run reports.
pub type Summary = Report<Maintenance>;

#[derive(Debug, Default, Serialize)]
pub struct Maintenance {
    pub forget: Option<ForgetReport>,
    pub prune: Option<PruneReport>,
    pub check: Option<CheckSummary>,
    /// What the repository holds, per source: what the run pushes as metrics.
    pub repository: Option<RepositoryState>,
    /// Steps skipped, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckSummary {
    pub ok: bool,
    pub data_share: f64,
    pub report: CheckReport,
}

fn parse_share(s: &str) -> anyhow::Result<f64> {
    cairn_core::parse::percentage(s, 100.0, true)
        .map_err(|e| cairn_core::exit::usage(format!("--check-subset: {e}")))
}

const PROG: &str = "cairn-maintain";

pub async fn run(cli: Cli) -> Exit {
    let report =
        report::run(PROG, Maintenance::default(), async |m: &mut Maintenance| steps(&cli, m).await)
            .await;
    report.print(PROG, cli.output.json);
    report.exit_class()
}

impl JobReport for Maintenance {
    fn render(r: &Report<Self>) -> String {
        render(r)
    }
}

async fn steps(cli: &Cli, summary: &mut Maintenance) -> anyhow::Result<Exit> {
    let share = parse_share(&cli.check_subset)?;
    let prune_opts = cli.prune.options(cli.lock.options("maintenance"), cli.dry_run)?;
    let repo = Arc::new(cli.repo.open(cairn_job::config::Need::Write).await.context("opening")?);
    // The maintenance lock first: a run locked out by another prune changes nothing.
    let lock = if cli.dry_run || cli.no_prune {
        None
    } else {
        Some(
            Lock::acquire(&repo, LockKind::Maintenance, &prune_opts.lock)
                .await
                .context("maintenance lock")?,
        )
    };
    let result = forget_and_prune(cli, summary, &repo, &prune_opts, lock.as_ref()).await;
    if let Some(l) = lock {
        l.release().await.context("releasing the maintenance lock")?;
    }
    if let Err(e) = result {
        summary.repository = publish_state(&repo, None).await;
        return Err(e);
    }

    let data_share = if repo.can_read_data() {
        share
    } else {
        if share > 0.0 {
            summary.notes.push(
                "check read no data: the write key cannot decrypt it (give an identity)".into(),
            );
        }
        0.0
    };
    let report =
        check(&repo, &CheckOptions { read_data_fraction: data_share }).await.context("check")?;
    let ok = report.ok();
    summary.repository = publish_state(&repo, Some(report.problems.len() as u64)).await;
    summary.check = Some(CheckSummary { ok, data_share, report });
    Ok(if ok { Exit::Success } else { Exit::Integrity })
}

async fn forget_and_prune(
    cli: &Cli,
    summary: &mut Maintenance,
    repo: &Arc<Repository>,
    prune_opts: &PruneOptions,
    lock: Option<&Lock>,
) -> anyhow::Result<()> {
    let policy = cli.keep.policy();
    if policy.is_empty() {
        summary.notes.push("forget skipped: no --keep-* rule given".into());
    } else {
        let report =
            forget(repo, &policy, cli.keep.group_by, None, cli.dry_run).await.context("forget")?;
        tracing::info!(kept = report.kept, removed = report.removed, "forget done");
        summary.forget = Some(report);
    }

    if cli.no_prune {
        summary.notes.push("prune skipped (--no-prune)".into());
    } else {
        let report = match lock {
            Some(l) => prune_locked(repo.clone(), prune_opts, l).await,
            None => prune(repo.clone(), prune_opts).await,
        }
        .context("prune")?;
        tracing::info!(deleted = report.deleted_bytes, marked = report.marked_packs, "prune done");
        summary.prune = Some(report);
    }

    Ok(())
}

/// What the repository holds, for the metrics that alert when a source's backups stop
/// arriving: those hold even when the backup job itself died before it could report.
/// A failure to look is a warning, not a failed maintenance run.
async fn publish_state(repo: &Repository, check_problems: Option<u64>) -> Option<RepositoryState> {
    match repository_state(repo, check_problems).await {
        Ok(state) => {
            cairn_job::metrics::record_repository(&state);
            Some(state)
        }
        Err(e) => {
            tracing::warn!(error = %e, "repository metrics: cannot list the repository");
            None
        }
    }
}

async fn repository_state(
    repo: &Repository,
    check_problems: Option<u64>,
) -> cairn_core::Result<RepositoryState> {
    let packs = repo.store().list_info("packs/").await?;
    let snapshots = repo.snapshots().await?;
    let expired_locks =
        cairn_core::repo::lock::list_locks(repo).await?.iter().filter(|l| l.expired).count();
    Ok(RepositoryState {
        repository: repo.config().id.to_string(),
        size_bytes: packs.iter().map(|p| p.size).sum(),
        packs: packs.len() as u64,
        sources: SourceState::of(snapshots.iter().map(|e| &e.snapshot)),
        expired_locks: expired_locks as u64,
        check_problems,
    })
}

/// The one-screen summary.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cairn-maintain: {} in {:.1}s", s.exit, s.duration_ms as f64 / 1000.0);
    if let Some(f) = &s.forget {
        let verb = if f.dry_run { "would remove" } else { "removed" };
        let _ = writeln!(
            out,
            "forget: kept {} snapshots, {verb} {} ({} groups)",
            f.kept,
            f.removed,
            f.groups.len()
        );
    }
    if let Some(p) = &s.prune {
        for line in p.render().lines() {
            let _ = writeln!(out, "prune: {line}");
        }
    }
    if let Some(c) = &s.check {
        let r = &c.report;
        let _ = writeln!(
            out,
            "check: {} ({} snapshots, {} packs, data of {} packs read, {} unindexed)",
            if c.ok { "no problems" } else { "DAMAGE FOUND" },
            r.snapshots,
            r.packs,
            r.packs_read,
            r.unindexed_packs.len()
        );
        for p in &r.problems {
            let _ = writeln!(out, "  PROBLEM {} {}: {}", p.kind, p.object, p.detail);
        }
    }
    if let Some(r) = &s.repository {
        let _ = writeln!(
            out,
            "repository: {} packs, {} bytes, {} sources, {} expired locks",
            r.packs,
            r.size_bytes,
            r.sources.len(),
            r.expired_locks
        );
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "error: {e}");
    }
    out
}
