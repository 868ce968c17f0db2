//! Backup hooks: commands declared on the pods that mount a PVC, run in those pods before
//! its CSI snapshot is cut (flush and freeze) and after (resume). The annotations mirror
//! Velero's `pre.hook.backup.velero.io/*`:
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `backup.cairn.dev/pre-hook` | command before the cut: a JSON array, or one word | none |
//! | `backup.cairn.dev/post-hook` | command after the cut | none |
//! | `backup.cairn.dev/hook-container` | container to run them in | the first |
//! | `backup.cairn.dev/hook-timeout` | deadline of each | 30s |
//! | `backup.cairn.dev/hook-on-error` | `fail` (the PVC fails, no snapshot) or `continue` (the snapshot is cut, recorded as not application-consistent) | fail |
//!
//! A post hook runs once its pod's pre hook was started, whatever happened next (the pre
//! hook failed or hung, the snapshot failed, the run was cancelled): [`Registry`] holds
//! every post hook that is due, so a cancelled run can still run them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::records::{HookPhase, HookRun, HooksRecord};
use cairn_core::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use parking_lot::Mutex;

use crate::exec::{self, Ended, Exec};
use crate::list::list_all;

pub const PRE_HOOK: &str = "backup.cairn.dev/pre-hook";
pub const POST_HOOK: &str = "backup.cairn.dev/post-hook";
pub const HOOK_CONTAINER: &str = "backup.cairn.dev/hook-container";
pub const HOOK_TIMEOUT: &str = "backup.cairn.dev/hook-timeout";
pub const HOOK_ON_ERROR: &str = "backup.cairn.dev/hook-on-error";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a failed hook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The PVC fails; no snapshot is cut (after a pre hook) .
    Fail,
    /// Go on; the snapshot is recorded as not application-consistent.
    Continue,
}

impl OnError {
    fn as_str(self) -> &'static str {
        match self {
            OnError::Fail => "fail",
            OnError::Continue => "continue",
        }
    }
}

/// The hooks one pod declares.
#[derive(Debug, Clone, PartialEq)]
pub struct PodHooks {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pre: Option<Vec<String>>,
    pub post: Option<Vec<String>>,
    pub timeout: Duration,
    pub on_error: OnError,
}

impl PodHooks {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// A command annotation: a JSON array of strings, or a single word (no shell: as Velero,
/// put `/bin/sh -c` in the array when a shell is wanted).
pub fn parse_command(value: &str) -> std::result::Result<Vec<String>, String> {
    let v = value.trim();
    let cmd: Vec<String> = if v.starts_with('[') {
        serde_json::from_str(v).map_err(|e| format!("not a JSON array of strings: {e}"))?
    } else if v.is_empty() || v.contains(char::is_whitespace) {
        return Err(
            "a command with arguments must be a JSON array, e.g. [\"/bin/sh\", \"-c\", \"…\"]"
                .into(),
        );
    } else {
        vec![v.to_string()]
    };
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err("empty command".into());
    }
    Ok(cmd)
}

/// A pod's annotations, read with errors that name the pod and the key (hooks and dumps
/// share the reading of commands, containers and durations).
pub struct PodAnnotations<'a> {
    pod: &'a Pod,
    ann: BTreeMap<String, String>,
}

impl<'a> PodAnnotations<'a> {
    pub fn of(pod: &'a Pod) -> PodAnnotations<'a> {
        PodAnnotations { pod, ann: pod.metadata.annotations.clone().unwrap_or_default() }
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.ann.get(key)
    }

    /// A malformed annotation: `pod NS/NAME: KEY: why`.
    pub fn bad(&self, key: &str, why: impl std::fmt::Display) -> Error {
        let m = &self.pod.metadata;
        Error::Invalid(format!(
            "pod {}/{}: {key}: {why}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        ))
    }

    /// A command annotation ([`parse_command`]), if present.
    pub fn command(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.get(key).map(|v| parse_command(v).map_err(|why| self.bad(key, why))).transpose()
    }

    /// The container named by `key`, which must exist; else the pod's first.
    pub fn container(&self, key: &str) -> Result<String> {
        let mut names = self.pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| &c.name));
        match self.get(key) {
            Some(c) if names.any(|n| n == c) => Ok(c.clone()),
            Some(c) => Err(self.bad(key, format!("no container {c:?} in the pod"))),
            None => names.next().cloned().ok_or_else(|| self.bad("spec", "no containers")),
        }
    }

    /// A duration annotation, else `default`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration> {
        match self.get(key) {
            Some(t) => cairn_core::parse::duration(t).map_err(|e| self.bad(key, e)),
            None => Ok(default),
        }
    }
}

/// The hooks `pod` declares, `None` when it declares none. A malformed annotation is an
/// error naming it (the PVC then fails as a configuration error).
pub fn pod_hooks(pod: &Pod) -> Result<Option<PodHooks>> {
    let ann = PodAnnotations::of(pod);
    let (pre, post) = (ann.command(PRE_HOOK)?, ann.command(POST_HOOK)?);
    if pre.is_none() && post.is_none() {
        return Ok(None);
    }
    let container = ann.container(HOOK_CONTAINER)?;
    let timeout = ann.duration(HOOK_TIMEOUT, DEFAULT_TIMEOUT)?;
    let on_error = match ann.get(HOOK_ON_ERROR).map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("fail") => OnError::Fail,
        Some("continue") => OnError::Continue,
        Some(other) => return Err(ann.bad(HOOK_ON_ERROR, format!("{other:?}: fail or continue"))),
    };
    let (namespace, pod) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
    Ok(Some(PodHooks {
        namespace: namespace.unwrap_or_default(),
        pod: pod.unwrap_or_default(),
        container,
        pre,
        post,
        timeout,
        on_error,
    }))
}

/// Whether `pod` mounts one of `claims`.
pub fn mounts_any(pod: &Pod, claims: &[&str]) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| claims.contains(&c.claim_name.as_str()))
        })
    })
}

/// The hooks of the running pods in `ns` that mount any of `claims`, by pod name.
pub async fn for_claims(client: &kube::Client, ns: &str, claims: &[&str]) -> Result<Vec<PodHooks>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = list_all(&api, &ListParams::default().limit(500), "Pods").await?;
    let mut out = Vec::new();
    for pod in pods {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if running && !deleting && mounts_any(&pod, claims) {
            out.extend(pod_hooks(&pod)?);
        }
    }
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// Post hooks that are due (their pre hook started, or the pod has only a post hook), so a
/// cancelled run can still run them.
#[derive(Debug, Default, Clone)]
pub struct Registry(Arc<Mutex<BTreeMap<u64, PodHooks>>>);

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Registry {
    fn add(&self, hooks: &PodHooks) -> u64 {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.lock().insert(id, hooks.clone());
        id
    }

    fn take(&self, id: u64) -> Option<PodHooks> {
        self.0.lock().remove(&id)
    }

    /// Run every post hook still due (a cancelled run, before it deletes its temporaries).
    pub async fn release_all(&self, client: &kube::Client) -> Vec<HookRun> {
        let due: Vec<PodHooks> = std::mem::take(&mut *self.0.lock()).into_values().collect();
        let mut runs = Vec::new();
        for h in &due {
            if let Some(cmd) = &h.post {
                let run = run_one(client, h, HookPhase::Post, cmd).await;
                tracing::warn!(pod = %h.key(), outcome = %run.outcome, "post hook run on cancellation");
                runs.push(run);
            }
        }
        runs
    }
}

/// The hooks of one cut: pre hooks run, post hooks due.
#[derive(Debug)]
pub struct Session {
    registry: Registry,
    due: Vec<u64>,
    record: HooksRecord,
    /// Why the cut must not happen (a pre hook failed under `fail`).
    pub refused: Option<String>,
}

impl Session {
    /// What the snapshot records.
    pub fn record(&self) -> HooksRecord {
        self.record.clone()
    }

    /// A post hook failed under `fail`: what to report.
    pub fn post_failure(&self) -> Option<String> {
        self.record
            .runs
            .iter()
            .find(|r| r.phase == HookPhase::Post && r.outcome != "ok" && r.on_error == "fail")
            .map(describe)
    }
}

/// Run the pre hooks of `hooks` in order (every post hook becomes due as its pre hook
/// starts). The first failure under `fail` stops the rest and sets `refused`.
pub async fn run_pre(client: &kube::Client, registry: &Registry, hooks: &[PodHooks]) -> Session {
    let mut s = Session {
        registry: registry.clone(),
        due: Vec::new(),
        record: HooksRecord { application_consistent: true, runs: Vec::new() },
        refused: None,
    };
    for h in hooks {
        if h.post.is_some() {
            s.due.push(registry.add(h));
        }
        let Some(cmd) = &h.pre else { continue };
        let run = run_one(client, h, HookPhase::Pre, cmd).await;
        let ok = run.outcome == "ok";
        tracing::info!(pod = %h.key(), outcome = %run.outcome, "pre hook");
        if !ok {
            s.record.application_consistent = false;
            if h.on_error == OnError::Fail {
                s.refused = Some(describe(&run));
            }
        }
        s.record.runs.push(run);
        if s.refused.is_some() {
            break;
        }
    }
    s
}

/// Run the post hooks that are due, in order, each once.
pub async fn run_post(client: &kube::Client, s: &mut Session) {
    for id in std::mem::take(&mut s.due) {
        let Some(h) = s.registry.take(id) else { continue };
        let Some(cmd) = &h.post else { continue };
        let run = run_one(client, &h, HookPhase::Post, cmd).await;
        tracing::info!(pod = %h.key(), outcome = %run.outcome, "post hook");
        s.record.runs.push(run);
    }
}

async fn run_one(client: &kube::Client, h: &PodHooks, phase: HookPhase, cmd: &[String]) -> HookRun {
    let started = now();
    let out = exec::run(
        client,
        &Exec {
            namespace: &h.namespace,
            pod: &h.pod,
            container: Some(&h.container),
            command: cmd,
            timeout: h.timeout,
        },
    )
    .await;
    let (outcome, exit_code, message) = match &out.ended {
        Ended::Exited(0) => ("ok", Some(0), out.stderr_tail.clone()),
        Ended::Exited(c) => ("failed", Some(*c), out.stderr_tail.clone()),
        Ended::TimedOut => {
            ("timeout", None, format!("cut off after {}", humantime::format_duration(h.timeout)))
        }
        Ended::Failed(why) => ("error", None, why.clone()),
    };
    HookRun {
        phase,
        pod: h.key(),
        container: Some(h.container.clone()),
        command: cmd.to_vec(),
        started,
        ended: now(),
        outcome: outcome.to_string(),
        exit_code,
        message,
        on_error: h.on_error.as_str().to_string(),
    }
}

/// One line about a hook that did not succeed.
pub fn describe(r: &HookRun) -> String {
    let phase = match r.phase {
        HookPhase::Pre => "pre",
        HookPhase::Post => "post",
    };
    let how = match (r.outcome.as_str(), r.exit_code) {
        ("failed", Some(c)) => format!("exited {c}"),
        ("timeout", _) => "timed out".to_string(),
        (o, _) => o.to_string(),
    };
    let container = r.container.as_deref().map(|c| format!(" container {c}")).unwrap_or_default();
    let last = r.message.lines().last().unwrap_or_default();
    if last.is_empty() {
        format!("{phase} hook in pod {}{container} {how}", r.pod)
    } else {
        format!("{phase} hook in pod {}{container} {how}: {last}", r.pod)
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ann: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "prod",
                "annotations": ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>()},
            "spec": {"containers": [{"name": "db"}, {"name": "sidecar"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn commands_are_json_arrays_or_one_word() {
        assert_eq!(parse_command("sync").unwrap(), ["sync"]);
        assert_eq!(parse_command(r#"["/bin/sh", "-c", "a b"]"#).unwrap(), ["/bin/sh", "-c", "a b"]);
        assert!(parse_command("fsfreeze -f /data").unwrap_err().contains("JSON array"));
        assert!(parse_command("[]").unwrap_err().contains("empty"));
        assert!(parse_command(r#"["a", 1]"#).unwrap_err().contains("JSON array"));
    }

    #[test]
    fn annotations_become_hooks_with_defaults() {
        assert_eq!(pod_hooks(&pod(&[])).unwrap(), None);
        let h = pod_hooks(&pod(&[(PRE_HOOK, "sync")])).unwrap().unwrap();
        assert_eq!(
            (h.container.as_str(), h.timeout, h.on_error),
            ("db", DEFAULT_TIMEOUT, OnError::Fail)
        );
        assert_eq!(h.post, None);
        let h = pod_hooks(&pod(&[
            (POST_HOOK, "resume"),
            (HOOK_CONTAINER, "sidecar"),
            (HOOK_TIMEOUT, "5s"),
            (HOOK_ON_ERROR, "Continue"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.container.as_str(), h.timeout, h.on_error),
            ("sidecar", Duration::from_secs(5), OnError::Continue)
        );
        assert!(mounts_any(&pod(&[]), &["data"]) && !mounts_any(&pod(&[]), &["other"]));
    }

    #[test]
    fn bad_annotations_name_the_pod_and_the_key() {
        for (ann, want) in [
            ((PRE_HOOK, "two words"), PRE_HOOK),
            ((HOOK_CONTAINER, "nope"), HOOK_CONTAINER),
            ((HOOK_TIMEOUT, "soon"), HOOK_TIMEOUT),
            ((HOOK_ON_ERROR, "ignore"), HOOK_ON_ERROR),
        ] {
            let p = pod(&[(PRE_HOOK, "sync"), ann]);
            let e = pod_hooks(&p).unwrap_err().to_string();
            assert!(e.contains("prod/db-0") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_failure_is_one_line_with_the_stderr_end() {
        let r = HookRun {
            phase: HookPhase::Pre,
            pod: "prod/db-0".into(),
            container: Some("db".into()),
            command: vec!["x".into()],
            started: String::new(),
            ended: String::new(),
            outcome: "failed".into(),
            exit_code: Some(3),
            message: "warming up\ndatabase is locked".into(),
            on_error: "fail".into(),
        };
        assert_eq!(
            describe(&r),
            "pre hook in pod prod/db-0 container db exited 3: database is locked"
        );
    }
}
