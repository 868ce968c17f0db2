//! Streamed dumps (k8up's `backupcommand`): a pod annotated with a command whose stdout is
//! the backup (`pg_dump`, `mysqldump`, `sqlite3 db .dump`). The orchestrator execs it and
//! chunks the stream into a snapshot of its own source, `dump/<namespace>/<name>`, as it
//! arrives: deduplicated like any file, never on a local disk, memory bounded by a channel of
//! eight 64 KiB pieces. The command's exit status and stderr tail are recorded; a non-zero
//! exit (or a timeout) saves no snapshot and fails that item.
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `backup.cairn.dev/dump-command` | JSON array (or one word): stdout is the dump | none |
//! | `backup.cairn.dev/dump-container` | where to run it | the first container |
//! | `backup.cairn.dev/dump-timeout` | deadline of the whole dump | 1h |
//! | `backup.cairn.dev/dump-name` | `<name>` of the source | the pod's controller (StatefulSet, Deployment, …) or the pod |
//! | `backup.cairn.dev/dump-file` | file name in the snapshot | `dump` |
//!
//! Several replicas of one workload share a name: one of them (the first by name) is dumped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::Exit;
use cairn_core::filter::NamespaceFilter;
use cairn_core::fs::stream::channel;
use cairn_core::fs::{BackupOptions, backup_stream};
use cairn_core::records::{DumpMeta, DumpRecord, SnapshotRecord, dump_source};
use cairn_core::repo::Repository;
use cairn_core::repo::lock::{BackupLocks, LockOptions};
use cairn_core::{Error, Result};
use cairn_job::config::ChunkingArgs;
use cairn_kube::exec::{self, Ended, Exec};
use cairn_kube::hooks::PodAnnotations;
use cairn_kube::list::list_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;

pub const DUMP_COMMAND: &str = "backup.cairn.dev/dump-command";
pub const DUMP_CONTAINER: &str = "backup.cairn.dev/dump-container";
pub const DUMP_TIMEOUT: &str = "backup.cairn.dev/dump-timeout";
pub const DUMP_NAME: &str = "backup.cairn.dev/dump-name";
pub const DUMP_FILE: &str = "backup.cairn.dev/dump-file";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_FILE: &str = "dump";

/// One dump to take.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpSpec {
    pub namespace: String,
    pub pod: String,
    /// The source's `<name>`.
    pub name: String,
    pub container: String,
    pub command: Vec<String>,
    pub timeout: Duration,
    pub file: String,
}

impl DumpSpec {
    pub fn source(&self) -> String {
        dump_source(&self.namespace, &self.name)
    }
}

/// How one dump went.
#[derive(Debug, Clone, Serialize)]
pub struct DumpResult {
    pub source: String,
    pub pod: String,
    pub ok: bool,
    pub exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub bytes: u64,
    pub new_bytes: u64,
    /// The command's exit status (none: it did not run to the end).
    pub command_exit: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DumpResult {
    /// An item that has not got anywhere (yet): failed, with `exit_code`.
    pub fn failed(source: String, pod: String, exit_code: u8, error: Option<String>) -> DumpResult {
        DumpResult {
            source,
            pod,
            ok: false,
            exit_code,
            snapshot: None,
            bytes: 0,
            new_bytes: 0,
            command_exit: None,
            stderr_tail: String::new(),
            duration_ms: 0,
            error,
        }
    }
}

/// The dump `pod` declares; a malformed annotation is an error naming it.
pub fn dump_spec(pod: &Pod) -> Result<Option<DumpSpec>> {
    let ann = PodAnnotations::of(pod);
    let Some(command) = ann.command(DUMP_COMMAND)? else { return Ok(None) };
    let container = ann.container(DUMP_CONTAINER)?;
    let timeout = ann.duration(DUMP_TIMEOUT, DEFAULT_TIMEOUT)?;
    let name = match ann.get(DUMP_NAME) {
        Some(n) => n.clone(),
        None => workload_name(pod),
    };
    if name.is_empty() || name.contains('/') {
        return Err(ann.bad(DUMP_NAME, format!("{name:?}: a name without '/'")));
    }
    let file = ann.get(DUMP_FILE).cloned().unwrap_or_else(|| DEFAULT_FILE.to_string());
    if file.is_empty() || file.contains('/') {
        return Err(ann.bad(DUMP_FILE, format!("{file:?}: a file name without '/'")));
    }
    let (namespace, pod_name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
    Ok(Some(DumpSpec {
        namespace: namespace.unwrap_or_default(),
        pod: pod_name.unwrap_or_default(),
        name,
        container,
        command,
        timeout,
        file,
    }))
}

/// A name that outlives the pod: its controller's (a ReplicaSet's without the template
/// hash, i.e. the Deployment's), else the pod's.
fn workload_name(pod: &Pod) -> String {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) =
        pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
    else {
        return pod_name;
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"))
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return deployment.to_string();
    }
    owner.name.clone()
}

/// One dump per (namespace, name), from the first running pod by name; bad annotations are
/// failed items of their own.
pub fn plan(mut pods: Vec<Pod>) -> (Vec<DumpSpec>, Vec<(String, String)>) {
    pods.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });
    let mut specs: BTreeMap<String, DumpSpec> = BTreeMap::new();
    let mut bad = Vec::new();
    for pod in &pods {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match dump_spec(pod) {
            Ok(Some(s)) => {
                specs.entry(s.source()).or_insert(s);
            }
            Ok(None) => {}
            Err(e) => bad.push((
                format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                ),
                e.to_string(),
            )),
        }
    }
    (specs.into_values().collect(), bad)
}

/// The pods of the selected namespaces that declare a dump.
pub async fn select(client: &kube::Client, ns_filter: &NamespaceFilter) -> Result<Vec<Pod>> {
    let apis: Vec<Api<Pod>> = match ns_filter.literal() {
        Some(names) => names.iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
        None => vec![Api::all(client.clone())],
    };
    let mut out = Vec::new();
    for api in apis {
        for pod in list_all(&api, &ListParams::default().limit(500), "Pods").await? {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let annotated =
                pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(DUMP_COMMAND));
            if annotated && ns_filter.matches(&ns) {
                out.push(pod);
            }
        }
    }
    Ok(out)
}

/// What a dump needs besides its spec.
pub struct DumpCtx<'a> {
    pub client: &'a kube::Client,
    pub repo: &'a Arc<Repository>,
    pub lock: &'a LockOptions,
    pub cluster: Option<&'a str>,
    pub tags: BTreeMap<String, String>,
    pub chunking: &'a ChunkingArgs,
}

/// Take one dump; never fails the run: the result says how it went.
pub async fn run_one(ctx: &DumpCtx<'_>, spec: &DumpSpec) -> DumpResult {
    let started = Instant::now();
    let pod = format!("{}/{}", spec.namespace, spec.pod);
    let mut result = DumpResult::failed(spec.source(), pod, Exit::Retryable.code(), None);
    if let Err(e) = take(ctx, spec, &mut result).await {
        let line = cairn_core::exit::one_line(&e);
        tracing::error!(source = %result.source, "{line}");
        result.exit_code = Exit::from_error(&e).code();
        result.error = Some(line);
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

async fn take(ctx: &DumpCtx<'_>, spec: &DumpSpec, result: &mut DumpResult) -> anyhow::Result<()> {
    let source = spec.source();
    let lock_name = cairn_core::repo::lock::source_lock_name(&source, ctx.cluster);
    let locks = BackupLocks::acquire(ctx.repo, &lock_name, ctx.lock).await?;
    let outcome = stream(ctx, spec, &locks, result).await;
    let released = locks.release().await;
    outcome?;
    released?;
    Ok(())
}

async fn stream(
    ctx: &DumpCtx<'_>,
    spec: &DumpSpec,
    locks: &BackupLocks,
    result: &mut DumpResult,
) -> anyhow::Result<()> {
    let (tx, reader) = channel(8);
    let opts = BackupOptions {
        source: spec.source(),
        cluster: ctx.cluster.map(str::to_string),
        tags: ctx.tags.clone(),
        guard: Some(locks.guard()),
        chunking: ctx.chunking.policy(),
        ..Default::default()
    };
    let store = backup_stream(ctx.repo.clone(), Box::new(reader), &spec.file, opts);
    let exec = async {
        let out = exec::stdout_to(
            ctx.client,
            &Exec {
                namespace: &spec.namespace,
                pod: &spec.pod,
                container: Some(&spec.container),
                command: &spec.command,
                timeout: spec.timeout,
            },
            &tx,
        )
        .await;
        // A command that did not succeed ends the stream with an error: nothing is saved.
        if !out.ended.ok() {
            let _ =
                tx.send(Err(std::io::Error::other(format!("dump command {}", out.ended)))).await;
        }
        drop(tx);
        out
    };
    let (prepared, out) = tokio::join!(store, exec);
    // The store failed first (the command then saw its stdout closed): its error explains.
    if let Err(e) = prepared.as_ref()
        && matches!(out.ended, Ended::Failed(_) | Ended::Exited(0))
    {
        return Err(anyhow::anyhow!("storing the dump: {e}"));
    }
    result.command_exit = match out.ended {
        Ended::Exited(c) => Some(c),
        _ => None,
    };
    result.stderr_tail = out.stderr_tail.clone();
    if !out.ended.ok() {
        let last = out.stderr_tail.lines().last().unwrap_or_default();
        let why = match &out.ended {
            Ended::TimedOut => {
                format!("timed out after {}", humantime::format_duration(spec.timeout))
            }
            other => other.to_string(),
        };
        let line = if last.is_empty() { why } else { format!("{why}: {last}") };
        return Err(Error::Retryable(format!(
            "dump command in pod {}/{} {line} (nothing saved)",
            spec.namespace, spec.pod
        ))
        .into());
    }
    let mut prepared = prepared?;
    prepared.snapshot.meta = DumpMeta {
        dump: DumpRecord {
            namespace: spec.namespace.clone(),
            pod: spec.pod.clone(),
            container: Some(spec.container.clone()),
            command: spec.command.clone(),
            file: spec.file.clone(),
            bytes: out.stdout_bytes,
            exit_code: 0,
            stderr_tail: out.stderr_tail,
            duration_ms: out.duration.as_millis() as u64,
        },
    }
    .to_meta();
    let saved = prepared.commit(ctx.repo, Some(&locks.guard())).await?;
    let s = &saved.snapshot.summary;
    result.ok = true;
    result.exit_code = Exit::Success.code();
    result.snapshot = Some(saved.id.to_hex());
    result.bytes = s.bytes;
    result.new_bytes = s.new_bytes;
    tracing::info!(source = %result.source, bytes = s.bytes, new_bytes = s.new_bytes, "dump saved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        ann: &[(&str, &str)],
        owner: Option<(&str, &str)>,
        hash: Option<&str>,
    ) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "namespace": "prod",
                "annotations": ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>()},
            "spec": {"containers": [{"name": "db"}]},
            "status": {"phase": "Running"},
        });
        if let Some((kind, owner)) = owner {
            v["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1",
                "kind": kind, "name": owner, "uid": "u", "controller": true}]);
        }
        if let Some(h) = hash {
            v["metadata"]["labels"] = serde_json::json!({"pod-template-hash": h});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_source_is_named_after_the_workload() {
        let cmd = (DUMP_COMMAND, r#"["pg_dumpall"]"#);
        let d = pod("web-7d9f-abcde", &[cmd], Some(("ReplicaSet", "web-7d9f")), Some("7d9f"));
        assert_eq!(dump_spec(&d).unwrap().unwrap().source(), "dump/prod/web");
        let s = pod("pg-0", &[cmd], Some(("StatefulSet", "pg")), None);
        assert_eq!(dump_spec(&s).unwrap().unwrap().source(), "dump/prod/pg");
        let bare = pod("solo", &[cmd], None, None);
        let spec = dump_spec(&bare).unwrap().unwrap();
        assert_eq!(
            (spec.source().as_str(), spec.file.as_str(), spec.container.as_str()),
            ("dump/prod/solo", "dump", "db")
        );
        let named = pod("pg-0", &[cmd, (DUMP_NAME, "main"), (DUMP_FILE, "all.sql")], None, None);
        let spec = dump_spec(&named).unwrap().unwrap();
        assert_eq!((spec.source().as_str(), spec.file.as_str()), ("dump/prod/main", "all.sql"));
    }

    #[test]
    fn replicas_are_dumped_once_and_bad_annotations_fail_alone() {
        let cmd = (DUMP_COMMAND, "dump");
        let pods = vec![
            pod("pg-1", &[cmd], Some(("StatefulSet", "pg")), None),
            pod("pg-0", &[cmd], Some(("StatefulSet", "pg")), None),
            pod("bad", &[(DUMP_COMMAND, "two words")], None, None),
            pod("bad2", &[cmd, (DUMP_FILE, "a/b")], None, None),
        ];
        let (specs, bad) = plan(pods);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].pod, "pg-0");
        assert_eq!(bad.len(), 2);
        assert!(bad[0].1.contains(DUMP_COMMAND) && bad[1].1.contains(DUMP_FILE), "{bad:?}");
    }
}
