//! `cairn-restore dump`: stream a dump (a snapshot of a `dump/<namespace>/<name>` source)
//! into a command's stdin in a pod (`psql`, `mysql`, `sqlite3`). The file is read back and
//! checked whole first (every chunk decrypted and verified against its id), so a damaged
//! snapshot fails before the command sees a byte; then it is read again and streamed through a
//! bounded channel: memory stays flat whatever the size. Should the stream still fail, the
//! exec is torn down rather than stdin closed as if the input were complete; a restore
//! command that applies its input in one transaction (`psql --single-transaction`; a
//! `sqlite3 .dump` carries its own BEGIN/COMMIT) then applies nothing.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cairn_core::fs::export::NodeReader;
use cairn_core::progress::human_bytes;
use cairn_core::records::{DumpMeta, SnapshotRecord};
use cairn_core::repo::{NodeKind, short_id};
use cairn_core::{Error, Exit};
use cairn_job::config::{Need, RepoArgs};
use cairn_job::report::{JobReport, Report};
use cairn_kube::KubeArgs;
use cairn_kube::exec::{self, Ended, Exec};
use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Snapshot id, unique prefix, or `latest` (of --source).
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    pub snapshot: String,
    /// The dump's source, dump/<namespace>/<name> (needed with `latest`).
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: Option<String>,
    /// Namespace of the target pod (default: the recorded one).
    #[arg(long = "target-namespace", env = "CAIRN_TARGET_NAMESPACE")]
    pub target_namespace: Option<String>,
    /// The target pod (default: the first running pod matching --selector, else the pod
    /// the dump was taken from).
    #[arg(long, env = "CAIRN_POD")]
    pub pod: Option<String>,
    /// Label selector choosing the target pod (the first running one by name).
    #[arg(long, short = 'l', env = "CAIRN_SELECTOR", conflicts_with = "pod")]
    pub selector: Option<String>,
    /// Container to run the command in (default: the recorded one).
    #[arg(long, env = "CAIRN_CONTAINER")]
    pub container: Option<String>,
    /// Deadline of the whole restore command.
    #[arg(long, env = "CAIRN_DUMP_TIMEOUT", default_value = "1h", value_parser = cairn_core::parse::duration)]
    pub timeout: Duration,
    /// Fail when the command has not read its input for this long (one that exits without
    /// reading it all is otherwise only seen at --timeout).
    #[arg(long, env = "CAIRN_STALL_TIMEOUT", default_value = "5m", value_parser = cairn_core::parse::duration)]
    pub stall_timeout: Duration,
    /// Stream at once, without reading the file back whole first (half the reads; a damaged
    /// snapshot is then found mid-stream, and the command's input cut short).
    #[arg(long, env = "CAIRN_NO_PRECHECK")]
    pub no_precheck: bool,
    /// The command that reads the dump on stdin, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What a dump restore reports.
#[derive(Debug, Default, Serialize)]
pub struct DumpRestore {
    pub snapshot: Option<String>,
    pub source: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub bytes: u64,
    /// The restore command's exit status (none: it did not run to the end).
    pub command_exit: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
}

impl JobReport for DumpRestore {
    fn render(r: &Report<Self>) -> String {
        if r.error.is_some() {
            return String::new();
        }
        format!(
            "restored dump {} ({}) into pod {} container {}: {} piped, command exited 0\n",
            r.snapshot.as_deref().map_or("", short_id),
            r.source.as_deref().unwrap_or_default(),
            r.pod.as_deref().unwrap_or_default(),
            r.container.as_deref().unwrap_or_default(),
            human_bytes(r.bytes)
        )
    }
}

pub async fn restore(
    repo: &RepoArgs,
    args: &DumpArgs,
    out: &mut DumpRestore,
) -> anyhow::Result<Exit> {
    if args.snapshot == "latest" && args.source.is_none() {
        return Err(cairn_core::exit::usage(
            "--source dump/<namespace>/<name> is needed with --snapshot latest",
        ));
    }
    let repo = Arc::new(repo.open(Need::Read).await.context("opening the repository")?);
    repo.load_index().await?;
    let snap = repo.find_snapshot(&args.snapshot, args.source.as_deref()).await?;
    let Some(DumpMeta { dump: record }) = DumpMeta::of(&snap.snapshot)? else {
        return Err(cairn_core::exit::usage(format!(
            "snapshot {} ({}) is not a dump",
            snap.id.short(),
            snap.snapshot.source
        )));
    };
    out.snapshot = Some(snap.id.to_hex());
    out.source = Some(snap.snapshot.source.clone());
    let node = repo.lookup(&snap.snapshot, &record.file).await?;
    if node.kind != NodeKind::File {
        return Err(Error::Integrity(format!("{} in the dump is not a file", record.file)).into());
    }
    let client = args.kube.client().await.context("connecting to the cluster")?;
    let namespace = args.target_namespace.clone().unwrap_or_else(|| record.namespace.clone());
    let pod = match (&args.pod, &args.selector) {
        (Some(p), _) => p.clone(),
        (None, Some(sel)) => first_running(&client, &namespace, sel).await?,
        (None, None) => record.pod.clone(),
    };
    let container = args.container.clone().or_else(|| record.container.clone());
    out.pod = Some(format!("{namespace}/{pod}"));
    out.container = container.clone();

    let handle = tokio::runtime::Handle::current();
    if !args.no_precheck {
        read_back(&repo, &node).await?;
    }
    // Producer: the file in 64 KiB pieces through a channel of eight.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let producer = produce(repo.clone(), node.clone(), handle, tx);
    let started = Instant::now();
    tracing::info!(pod = %format!("{namespace}/{pod}"), command = ?args.command, bytes = node.size, "streaming the dump into the command");
    let ended = exec::stdin_from(
        &client,
        &Exec {
            namespace: &namespace,
            pod: &pod,
            container: container.as_deref(),
            command: &args.command,
            timeout: args.timeout,
        },
        rx,
        args.stall_timeout,
    )
    .await;
    let sent = producer.await?;
    out.command_exit = match ended.ended {
        Ended::Exited(c) => Some(c),
        _ => None,
    };
    out.stderr_tail = ended.stderr_tail.clone();
    out.stdout_tail = ended.stdout_tail.clone();
    let sent = sent.map_err(|e| {
        Error::Integrity(format!("reading the dump: {e} (the command's input was cut)"))
    })?;
    out.bytes = sent;
    let last = ended.stderr_tail.lines().last().unwrap_or_default().to_string();
    match ended.ended {
        Ended::Exited(0) if sent == node.size => {
            tracing::info!(bytes = sent, secs = started.elapsed().as_secs_f64(), "dump restored");
            Ok(Exit::Success)
        }
        Ended::Exited(0) => Err(Error::Retryable(format!(
            "the command exited 0 having read {sent} of {} bytes",
            node.size
        ))
        .into()),
        Ended::TimedOut => Err(Error::Retryable(format!(
            "the restore command did not end within {}",
            humantime::format_duration(args.timeout)
        ))
        .into()),
        other => {
            let tail = if last.is_empty() { String::new() } else { format!(": {last}") };
            Err(Error::Retryable(format!("the restore command {other}{tail}")).into())
        }
    }
}

/// Send the file in 64 KiB pieces; a read error goes down the channel (the exec is then torn
/// down) and is returned.
fn produce(
    repo: Arc<cairn_core::repo::Repository>,
    node: cairn_core::repo::Node,
    handle: tokio::runtime::Handle,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> tokio::task::JoinHandle<std::io::Result<u64>> {
    tokio::task::spawn_blocking(move || {
        let mut reader = NodeReader::new(&repo, handle, &node);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(sent),
                Ok(n) => n,
                Err(e) => {
                    let why = e.to_string();
                    let _ = tx.blocking_send(Err(e));
                    return Err(std::io::Error::other(why));
                }
            };
            if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                // The command stopped reading; its exit status explains.
                return Ok(sent);
            }
            sent += n as u64;
        }
    })
}

/// Read the file whole (every chunk fetched, decrypted and checked against its id) before a
/// byte reaches the command.
async fn read_back(
    repo: &Arc<cairn_core::repo::Repository>,
    node: &cairn_core::repo::Node,
) -> anyhow::Result<()> {
    let (repo2, node2, h2) = (repo.clone(), node.clone(), tokio::runtime::Handle::current());
    let read = tokio::task::spawn_blocking(move || {
        std::io::copy(&mut NodeReader::new(&repo2, h2, &node2), &mut std::io::sink())
    })
    .await?;
    let n = read.map_err(|e| Error::Integrity(format!("reading the dump back: {e}")))?;
    if n != node.size {
        return Err(Error::Integrity(format!(
            "the dump reads back as {n} bytes, recorded {}",
            node.size
        ))
        .into());
    }
    Ok(())
}

async fn first_running(client: &kube::Client, ns: &str, selector: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = cairn_kube::list::list_all(
        &api,
        &ListParams::default().labels(selector).limit(500),
        "Pods",
    )
    .await?;
    let mut names: Vec<String> = pods
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names.into_iter().next().ok_or_else(|| {
        cairn_core::exit::usage(format!("no running pod in {ns} matches {selector:?}"))
    })
}
