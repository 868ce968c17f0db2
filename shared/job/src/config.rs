//! Flags every job shares: where the repository is and how to open it. Each flag has a
//! `CAIRN_*` environment fallback so that a Kubernetes Job can be configured from a
//! ConfigMap and a Secret.

use std::path::PathBuf;

use cairn_core::repo::blob_table::INDEX_SHARE;
use cairn_core::repo::{Access, IndexBudget, Repository, Store, Unlock, WriteKey};
use cairn_core::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// Repository location: a path or file:///path (default embedded store), s3://bucket/prefix,
    /// gs://bucket/prefix, az://container/prefix.
    #[arg(long, env = "CAIRN_REPO", global = true)]
    pub repo: Option<String>,
    /// age identity file (X25519 or SSH private key), or the identity text itself. Gives full
    /// access: restore, cat, check --read-data.
    #[arg(long, env = "CAIRN_IDENTITY", global = true, hide_env_values = true)]
    pub identity: Option<String>,
    /// Write credential file (from `cairn init --write-key-out`), or its text. Backups only:
    /// cannot decrypt file contents.
    #[arg(long, env = "CAIRN_WRITE_KEY", global = true, hide_env_values = true)]
    pub write_key: Option<String>,
    /// Read the passphrase from this file (else the CAIRN_PASSPHRASE variable).
    #[arg(long, env = "CAIRN_PASSPHRASE_FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// Memory this run may use, e.g. 384MiB: what grows with the bucket or the node's cores
    /// stays inside it. The repository's index stays in memory up to a quarter of it (past
    /// that it goes to --cache-dir); pack buffers take half. Default: 3/4 of the container's
    /// memory limit (cgroup), else 1GiB; at least 64MiB, never above the container's limit,
    /// which must be at least 256MiB.
    #[arg(long, env = "CAIRN_MEMORY_BUDGET", global = true, value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Directory for the index's local files when it outgrows its memory (the pod's
    /// emptyDir). Files are unlinked as they are created: nothing is left behind.
    /// Default: $TMPDIR, else /tmp.
    #[arg(long, env = "CAIRN_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

/// The least memory a run is allowed: below it, packs being built and uploaded, read
/// windows and buffers do not fit, whatever the repository's size.
pub const MIN_MEMORY_BUDGET: u64 = 64 << 20;
/// The least container memory limit a run is started under: the budget's floor plus what
/// no budget shrinks (the runtime, chunk batches, a pack fetched whole, the allocator's
/// slack), measured at up to ~200 MiB (tests/bench/README.md, scale).
pub const MIN_CONTAINER_LIMIT: u64 = 256 << 20;
/// The budget where no flag and no container limit says otherwise.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// The container's memory limit: cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        // v1 reports "no limit" as a number near 2^63.
        .filter(|&l| l < 1 << 60)
}

/// The run's memory budget: the flag, else 3/4 of the container's limit (the rest is
/// the runtime's, the page cache's and the allocator's slack), else the default. Refused
/// below [`MIN_MEMORY_BUDGET`] with a line naming where it came from, and in a container
/// whose limit is below [`MIN_CONTAINER_LIMIT`] or the budget asked for: an OOM kill
/// halfway through a backup says nothing.
pub fn memory_budget(flag: Option<u64>, limit: Option<u64>) -> Result<u64> {
    if let Some(l) = limit {
        if l < MIN_CONTAINER_LIMIT {
            return Err(Error::Invalid(format!(
                "the container's memory limit {} is below the {} a run needs; raise the pod's \
                 resources.limits.memory",
                mib(l),
                mib(MIN_CONTAINER_LIMIT)
            )));
        }
        if let Some(b) = flag.filter(|&b| b > l) {
            return Err(Error::Invalid(format!(
                "--memory-budget (CAIRN_MEMORY_BUDGET) {} is above the container's memory limit \
                 {}; the run would be killed, not slowed: leave it unset (3/4 of the limit) or \
                 lower it",
                mib(b),
                mib(l)
            )));
        }
    }
    let (budget, from) = match (flag, limit) {
        (Some(b), _) => (b, "--memory-budget (CAIRN_MEMORY_BUDGET)".to_string()),
        (None, Some(l)) => (l / 4 * 3, format!("3/4 of the container's memory limit {}", mib(l))),
        (None, None) => (DEFAULT_MEMORY_BUDGET, "the default".to_string()),
    };
    if budget < MIN_MEMORY_BUDGET {
        return Err(Error::Invalid(format!(
            "memory budget {} from {from} is below the {} a run needs; raise --memory-budget \
             (CAIRN_MEMORY_BUDGET) or the container's memory limit",
            mib(budget),
            mib(MIN_MEMORY_BUDGET)
        )));
    }
    Ok(budget)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Metadata and writing: a write key suffices.
    Write,
    /// File contents: an identity or passphrase.
    Read,
}

impl RepoArgs {
    pub fn url(&self) -> Result<&str> {
        self.repo
            .as_deref()
            .ok_or_else(|| Error::Invalid("no repository: pass --repo or set CAIRN_REPO".into()))
    }

    pub fn store(&self) -> Result<Store> {
        Store::open(self.url()?)
    }

    /// The store, creating a missing local directory (`cairn init`).
    pub fn store_or_create(&self) -> Result<Store> {
        Store::open_or_create(self.url()?)
    }

    fn passphrase(&self) -> Result<Option<String>> {
        if let Some(f) = &self.passphrase_file {
            let p = std::fs::read_to_string(f)
                .map_err(|e| Error::Invalid(format!("passphrase file {}: {e}", f.display())))?;
            return Ok(Some(p.trim_end_matches(['\n', '\r']).to_string()));
        }
        Ok(std::env::var("CAIRN_PASSPHRASE").ok().filter(|p| !p.is_empty()))
    }

    /// The identity holder's unlock, if one was given.
    pub fn unlock(&self) -> Result<Option<Unlock>> {
        if let Some(id) = &self.identity {
            let unlock =
                if id.trim_start().starts_with("AGE-SECRET-KEY-") || id.contains("-----BEGIN") {
                    Unlock::from_identity_text(id, "CAIRN_IDENTITY")?
                } else {
                    Unlock::from_identity_file(std::path::Path::new(id))?
                };
            return Ok(Some(unlock));
        }
        Ok(self.passphrase()?.map(|p| Unlock::Passphrase(p.into())))
    }

    pub fn write_key_value(&self) -> Result<Option<WriteKey>> {
        let Some(w) = &self.write_key else { return Ok(None) };
        let text = if w.trim_start().starts_with("CAIRN-WRITE-KEY-1") {
            w.clone()
        } else {
            std::fs::read_to_string(w)
                .map_err(|e| Error::Invalid(format!("write key file {w}: {e}")))?
        };
        WriteKey::from_text(&text).map(Some)
    }

    /// The environment a worker pod needs to open the repository with the access given here
    /// (`CAIRN_REPO` and the identity text, passphrase or write key): what goes into its
    /// credentials Secret.
    pub fn worker_env(&self, need: Need) -> Result<std::collections::BTreeMap<String, String>> {
        let mut env =
            std::collections::BTreeMap::from([("CAIRN_REPO".to_string(), self.url()?.to_string())]);
        if need == Need::Read {
            if let Some(id) = &self.identity {
                let text = if id.trim_start().starts_with("AGE-SECRET-KEY-")
                    || id.contains("-----BEGIN")
                {
                    id.clone()
                } else {
                    std::fs::read_to_string(id)
                        .map_err(|e| Error::Invalid(format!("identity file {id}: {e}")))?
                };
                env.insert("CAIRN_IDENTITY".into(), text);
            } else if let Some(p) = self.passphrase()? {
                env.insert("CAIRN_PASSPHRASE".into(), p);
            } else {
                return Err(Error::Denied(
                    "this needs file contents: pass --identity (or CAIRN_PASSPHRASE)".into(),
                ));
            }
        } else {
            let key = self.write_key_value()?.ok_or_else(|| {
                Error::Invalid("no write key: pass --write-key (or CAIRN_WRITE_KEY)".into())
            })?;
            env.insert("CAIRN_WRITE_KEY".into(), key.to_text());
        }
        Ok(env)
    }

    /// Where the index goes and how much of it stays in memory: a quarter of the budget.
    pub fn index_budget(&self) -> Result<IndexBudget> {
        let budget = memory_budget(self.memory_budget, cgroup_memory_limit())?;
        let memory = usize::try_from(budget).unwrap_or(usize::MAX) / INDEX_SHARE;
        Ok(match &self.cache_dir {
            Some(dir) => IndexBudget { memory, dir: dir.clone(), fallback_to_memory: false },
            None => IndexBudget { memory, ..IndexBudget::default() },
        })
    }

    /// Open the repository with the strongest access given, checking it covers `need`.
    pub async fn open(&self, need: Need) -> Result<Repository> {
        let budget = self.index_budget()?;
        let mut repo = self.open_unbudgeted(need).await?;
        repo.set_index_budget(budget);
        Ok(repo)
    }

    async fn open_unbudgeted(&self, need: Need) -> Result<Repository> {
        let store = self.store()?;
        if let Some(unlock) = self.unlock()? {
            return Repository::open(store, Access::Unlock(unlock)).await;
        }
        match (self.write_key_value()?, need) {
            (Some(w), Need::Write) => Repository::open(store, Access::Write(w)).await,
            (Some(_), Need::Read) => Err(Error::Denied(
                "this needs file contents: pass --identity (or CAIRN_PASSPHRASE); a write key cannot decrypt data".into(),
            )),
            (None, _) => Err(Error::Invalid(
                "no credential: pass --identity, CAIRN_PASSPHRASE, or --write-key".into(),
            )),
        }
    }
}

pub use cairn_core::parse::{
    duration as parse_duration, key_value as parse_key_value, size as parse_size,
};

/// What a backup job records about where its snapshot comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotLabels {
    /// Cluster name recorded in the snapshot (buckets shared by clusters).
    #[arg(long, env = "CAIRN_CLUSTER")]
    pub cluster: Option<String>,
    /// Tag as key=value. Repeatable.
    #[arg(long = "tag", value_parser = parse_key_value)]
    pub tags: Vec<(String, String)>,
}

impl SnapshotLabels {
    pub fn tag_map(&self) -> std::collections::BTreeMap<String, String> {
        self.tags.iter().cloned().collect()
    }

    /// The lock name for `source`: per cluster when one is named.
    pub fn lock_source(&self, source: &str) -> String {
        cairn_core::repo::lock::source_lock_name(source, self.cluster.as_deref())
    }
}

/// How file contents are cut, for every command that backs up files.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChunkingArgs {
    /// Also cut files matching this glob (relative path) into 4 KiB pages, as recognised
    /// databases are: VM disk images, databases cairn does not know. Repeatable.
    #[arg(long = "page-files", env = "CAIRN_PAGE_FILES", value_delimiter = ',')]
    pub page_files: Vec<String>,
    /// Do not recognise database files (SQLite, etcd/bbolt, PostgreSQL, InnoDB, qcow2);
    /// every file not named by --page-files gets content-defined chunks.
    #[arg(long, env = "CAIRN_NO_PAGE_DETECT")]
    pub no_page_detect: bool,
}

impl ChunkingArgs {
    pub fn policy(&self) -> cairn_core::fs::pages::ChunkingPolicy {
        cairn_core::fs::pages::ChunkingPolicy {
            force: None,
            no_detect: self.no_page_detect,
            page_files: self.page_files.clone(),
        }
    }

    /// The same flags as environment for a worker.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if !self.page_files.is_empty() {
            env.push(("CAIRN_PAGE_FILES".into(), self.page_files.join(",")));
        }
        if self.no_page_detect {
            env.push(("CAIRN_NO_PAGE_DETECT".into(), "true".into()));
        }
        env
    }
}

/// Lock flags for every command that writes.
#[derive(Debug, Clone, clap::Args)]
pub struct LockArgs {
    /// Wait this long for a held lock (same source, or another prune) before exiting with
    /// code 5.
    #[arg(long, env = "CAIRN_LOCK_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub lock_wait: std::time::Duration,
    /// Lease of our lock objects: refreshed every lease/5, considered dead by others after a
    /// lease without refresh (on the store's clock).
    #[arg(long, env = "CAIRN_LOCK_LEASE", default_value = "5m", value_parser = parse_duration)]
    pub lock_lease: std::time::Duration,
}

impl LockArgs {
    pub fn options(&self, purpose: &str) -> cairn_core::repo::lock::LockOptions {
        cairn_core::repo::lock::LockOptions {
            lease: self.lock_lease,
            wait: self.lock_wait,
            purpose: purpose.into(),
            holder: cairn_core::repo::lock::Holder::from_env(),
        }
    }
}

/// Retention policy flags (`cairn forget`, `cairn-maintain`).
#[derive(Debug, Clone, clap::Args)]
pub struct KeepArgs {
    /// Keep the N newest snapshots of each group.
    #[arg(long, env = "CAIRN_KEEP_LAST", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, env = "CAIRN_KEEP_HOURLY", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, env = "CAIRN_KEEP_DAILY", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, env = "CAIRN_KEEP_WEEKLY", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, env = "CAIRN_KEEP_MONTHLY", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, env = "CAIRN_KEEP_YEARLY", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot this close to the group's newest one (e.g. 7d).
    #[arg(long, env = "CAIRN_KEEP_WITHIN", value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Always keep snapshots with this tag (`key` or `key=value`). Repeatable.
    #[arg(long = "keep-tag", env = "CAIRN_KEEP_TAGS", value_delimiter = ',')]
    pub keep_tags: Vec<String>,
    /// Fields that form a group: a comma list of cluster, source, host.
    #[arg(long, env = "CAIRN_GROUP_BY", default_value = "cluster,source")]
    pub group_by: cairn_core::repo::forget::GroupBy,
}

impl KeepArgs {
    pub fn policy(&self) -> cairn_core::repo::forget::KeepPolicy {
        cairn_core::repo::forget::KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            tags: self.keep_tags.clone(),
        }
    }
}

/// Garbage-collection flags (`cairn prune`, `cairn-maintain`).
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Delete marked packs only once the mark is this old on the store's clock (and every
    /// backup running when it was written has ended). At least twice the lock lease.
    #[arg(long, env = "CAIRN_PRUNE_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Unindexed packs (left by crashed backups) older than this are marked.
    #[arg(long, env = "CAIRN_PRUNE_UNINDEXED_AGE", default_value = "1h", value_parser = parse_duration)]
    pub unindexed_age: std::time::Duration,
    /// Repack partly used packs until unused space is at most this share of used space.
    #[arg(long, env = "CAIRN_MAX_UNUSED", default_value = "5%")]
    pub max_unused: String,
    /// Copy at most this much live data per run when repacking (e.g. 10GiB, or unlimited).
    #[arg(long, env = "CAIRN_MAX_REPACK", default_value = "unlimited")]
    pub max_repack: String,
}

impl PruneArgs {
    pub fn options(
        &self,
        lock: cairn_core::repo::lock::LockOptions,
        dry_run: bool,
    ) -> Result<cairn_core::repo::prune::PruneOptions> {
        let max_unused = cairn_core::parse::percentage(&self.max_unused, 1000.0, true)
            .map_err(|e| Error::Invalid(format!("--max-unused: {e}")))?;
        Ok(cairn_core::repo::prune::PruneOptions {
            grace: self.grace,
            unindexed_age: self.unindexed_age,
            max_unused,
            max_repack: parse_size(&self.max_repack)?,
            dry_run,
            lock,
        })
    }
}

#[cfg(test)]
mod chunking_tests {
    use super::ChunkingArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        chunking: ChunkingArgs,
    }

    /// What the orchestrator hands its ingest pods is what they would parse themselves.
    #[test]
    fn chunking_flags_pass_to_workers_as_environment() {
        let cli = Cli::parse_from(["x", "--page-files", "**/*.img,vm/*.raw", "--no-page-detect"]);
        let env = cli.chunking.env();
        assert_eq!(
            env,
            vec![
                ("CAIRN_PAGE_FILES".to_string(), "**/*.img,vm/*.raw".to_string()),
                ("CAIRN_NO_PAGE_DETECT".to_string(), "true".to_string()),
            ]
        );
        let policy = cli.chunking.policy();
        assert_eq!(policy.page_files, vec!["**/*.img", "vm/*.raw"]);
        assert!(policy.no_detect && policy.force.is_none());
        assert!(Cli::parse_from(["x"]).chunking.env().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget_comes_from_the_flag_then_the_limit_then_the_default() {
        assert_eq!(memory_budget(Some(100 << 20), Some(1 << 30)).unwrap(), 100 << 20);
        assert_eq!(memory_budget(None, Some(512 << 20)).unwrap(), 384 << 20);
        assert_eq!(memory_budget(None, None).unwrap(), DEFAULT_MEMORY_BUDGET);
    }

    /// A budget no run fits in is refused at start, naming where it came from (exit 2).
    #[test]
    fn a_budget_below_the_floor_is_refused_naming_its_source() {
        let e = memory_budget(Some(10 << 20), None).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert_eq!(e.exit(), cairn_core::Exit::Usage);
        assert!(e.to_string().contains("--memory-budget"), "{e}");
        let e = memory_budget(None, Some(64 << 20)).unwrap_err();
        assert!(e.to_string().contains("container's memory limit 64 MiB"), "{e}");
        let e = memory_budget(Some(100 << 20), Some(200 << 20)).unwrap_err();
        assert!(e.to_string().contains("limit 200 MiB is below the 256 MiB"), "{e}");
        let e = memory_budget(Some(1 << 30), Some(512 << 20)).unwrap_err();
        assert!(e.to_string().contains("above the container's memory limit 512 MiB"), "{e}");
        assert_eq!(e.exit(), cairn_core::Exit::Usage);
        assert_eq!(memory_budget(Some(512 << 20), Some(512 << 20)).unwrap(), 512 << 20);
    }
}
