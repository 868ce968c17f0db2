//! Running a worker Job end to end: the one implementation of the protocol described in
//! [`crate::podjob`] ([`run_worker`]), and the worker's report, one serde type written by
//! the worker into its termination message ([`write_termination_message`]) and read back by
//! whoever ran its Job ([`parse_termination_message`]).
//!
//! The message is the report's JSON object, plus `"truncated": true` when the report had to
//! be slimmed ([`Slim::slim`]) to fit what the kubelet keeps ([`TERMINATION_MESSAGE_MAX`]);
//! the full report is in the worker's log. A message that does not parse as the report (a
//! report cut as a last resort, or the tail of the log the kubelet substitutes when the
//! worker wrote nothing and failed: `FallbackToLogsOnError`) is returned as text.
//!
//! How a run ends ([`conclude`]):
//!
//! | termination message  | Job                                  | result                             |
//! |----------------------|--------------------------------------|------------------------------------|
//! | the report           | succeeded or failed                  | `Ok`: the report and its exit code |
//! | no report            | succeeded                            | `Error::Retryable`                 |
//! | no report            | failed, the container exited 2       | `Error::Invalid` (usage: flags, env) |
//! | no report            | failed, the container exited 4       | `Error::Integrity`                 |
//! | no report            | failed, the container exited 5       | `Error::Locked`                    |
//! | no report            | failed, any other exit (1, 3, 101 panic, 137 killed, …) | `Error::Retryable` |
//! | no report            | never ran, timed out, disappeared    | `Error::Retryable`, with why       |
//!
//! A worker reports its failures too (with its exit code): a report always wins over the
//! Job's status, and the caller decides what the reported exit code means. A worker that
//! ran but left no report crashed, was killed, or is not speaking this protocol: that is
//! retryable, unless its exit code is one of cairn's that a retry does not fix (2 usage: an
//! image that does not take the flags it is given; 4 integrity or credentials; 5 locked).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::podjob::{self, JobOutcome, TERMINATION_MESSAGE_MAX, WaitOptions, WorkerJob};
use crate::{classify, status_code};
use cairn_core::{Error, Exit, Result};

/// A report that can be made smaller when its JSON does not fit the termination message.
pub trait Slim: Serialize + Clone {
    /// Drop what whoever reads the message can do without (per-item lists, long texts): the
    /// worker's log keeps the full report.
    fn slim(&mut self);
}

/// What a worker reports through its termination message.
pub trait Report: Slim + DeserializeOwned {
    /// The exit code the worker ended with (cairn's scheme: [`cairn_core::Exit`]).
    fn exit_code(&self) -> u8;
}

/// The message as written: the report's fields, and `truncated` when it was slimmed.
#[derive(Serialize)]
struct Written<'a, R> {
    #[serde(flatten)]
    report: &'a R,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// The message as read.
#[derive(Deserialize)]
#[serde(bound = "R: DeserializeOwned")]
struct Read<R> {
    #[serde(flatten)]
    report: R,
    #[serde(default)]
    truncated: bool,
}

/// What a termination message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<R> {
    /// The worker's report; `truncated`: slimmed to fit (the full one is in its log).
    Report { report: R, truncated: bool },
    /// Text that is not a report: the tail of the worker's log, or a report cut short.
    Text(String),
    /// Nothing (or only white space).
    Absent,
}

/// Read a termination message as `R`.
pub fn parse_termination_message<R: Report>(message: Option<&str>) -> Message<R> {
    let Some(text) = message.map(str::trim).filter(|m| !m.is_empty()) else {
        return Message::Absent;
    };
    match serde_json::from_str::<Read<R>>(text) {
        Ok(Read { report, truncated }) => Message::Report { report, truncated },
        Err(_) => Message::Text(text.to_string()),
    }
}

/// The text of a report's termination message: its JSON; when that is longer than the
/// kubelet keeps, the JSON of the slimmed report marked `truncated`; when even that is too
/// long, the latter cut at [`TERMINATION_MESSAGE_MAX`] (it no longer parses: the reader
/// gets it as text).
pub fn termination_text<R: Slim>(report: &R) -> String {
    let json = |report: &R, truncated: bool| {
        serde_json::to_string(&Written { report, truncated }).unwrap_or_else(|e| {
            tracing::warn!("cannot serialise the report: {e}");
            String::new()
        })
    };
    let text = json(report, false);
    if text.len() <= TERMINATION_MESSAGE_MAX {
        return text;
    }
    let mut slim = report.clone();
    slim.slim();
    let mut text = json(&slim, true);
    if text.len() > TERMINATION_MESSAGE_MAX {
        tracing::warn!(
            bytes = text.len(),
            "the report does not fit the termination message even slimmed: cut"
        );
        cut(&mut text, TERMINATION_MESSAGE_MAX);
    }
    text
}

/// Write a worker's report where the kubelet reads the termination message
/// ([`termination_text`]). Missing directory (running outside a pod): nothing is written.
pub fn write_termination_message<R: Slim>(path: &Path, report: &R) {
    let text = termination_text(report);
    if path.parent().is_some_and(|p| p.is_dir())
        && let Err(e) = std::fs::write(path, text)
    {
        tracing::warn!(path = %path.display(), "cannot write the termination message: {e}");
    }
}

/// Cut `s` to at most `max` bytes, at a character boundary.
pub fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(end);
    }
}

/// One run of a worker Job: the Job, the objects its pod needs, and the bounds of the wait
/// and of the cleanup.
#[derive(Clone)]
pub struct WorkerRun {
    pub job: WorkerJob,
    /// The data of the credentials Secret, if the worker gets one: the Secret is named after
    /// the Job, carries its labels and annotations, is owned by it (gone with it), and its
    /// keys become the worker's environment (the Job's `env_secret`).
    pub secret: Option<BTreeMap<String, String>>,
    /// PVCs that exist only for the worker (a clone of a VolumeSnapshot): created in the
    /// Job's namespace with its labels and annotations (added to their own) and owned by it,
    /// after it is created and before it is resumed; deleted after it.
    pub claims: Vec<PersistentVolumeClaim>,
    pub wait: WaitOptions,
    /// Deadline of the cleanup, whatever happened before.
    pub cleanup_timeout: Duration,
}

/// The credentials stay out of logs.
impl std::fmt::Debug for WorkerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRun")
            .field("job", &self.job)
            .field("secret_keys", &self.secret.as_ref().map(|s| s.keys().collect::<Vec<_>>()))
            .field("claims", &self.objects().claims)
            .field("wait", &self.wait)
            .field("cleanup_timeout", &self.cleanup_timeout)
            .finish()
    }
}

impl WorkerRun {
    /// The Job as it is created: suspended, its environment from the Secret when there is one.
    pub fn build_job(&self) -> Job {
        let mut job = self.job.clone();
        if self.secret.is_some() {
            job.env_secret = Some(job.name.clone());
        }
        job.build()
    }

    /// The credentials Secret, owned by the Job.
    pub fn build_secret(&self, owner: &OwnerReference) -> Option<Secret> {
        let data = self.secret.clone()?;
        Some(Secret {
            metadata: self.dependant_meta(self.job.name.clone(), ObjectMeta::default(), owner),
            string_data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        })
    }

    /// The claims, owned by the Job.
    pub fn build_claims(&self, owner: &OwnerReference) -> Vec<PersistentVolumeClaim> {
        self.claims
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let name = c.metadata.name.clone().unwrap_or_default();
                c.metadata = self.dependant_meta(name, std::mem::take(&mut c.metadata), owner);
                c
            })
            .collect()
    }

    /// What the run creates and its cleanup deletes. A caller whose run may be cancelled
    /// (the future dropped) keeps this first, and deletes it when that happens.
    pub fn objects(&self) -> WorkerObjects {
        WorkerObjects {
            namespace: self.job.namespace.clone(),
            job: self.job.name.clone(),
            claims: self.claims.iter().filter_map(|c| c.metadata.name.clone()).collect(),
        }
    }

    fn dependant_meta(&self, name: String, own: ObjectMeta, owner: &OwnerReference) -> ObjectMeta {
        let mut labels = self.job.labels.clone();
        labels.extend(own.labels.unwrap_or_default());
        let mut annotations = self.job.annotations.clone();
        annotations.extend(own.annotations.unwrap_or_default());
        let mut owners = own.owner_references.unwrap_or_default();
        owners.push(owner.clone());
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.job.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(owners),
            ..own
        }
    }
}

/// A worker's report, with how its Job ended.
#[derive(Debug, Clone)]
pub struct WorkerReport<R> {
    pub report: R,
    /// The exit code the worker reported ([`Report::exit_code`]).
    pub exit_code: u8,
    /// The container's exit code as the kubelet saw it, when it saw one.
    pub container_exit_code: Option<i32>,
    /// Whether the Job counted as succeeded (the container exited 0).
    pub job_succeeded: bool,
    /// The report was slimmed to fit the termination message; the full one is in the log.
    pub truncated: bool,
}

impl<R> WorkerReport<R> {
    /// The reported exit code as cairn's exit.
    pub fn exit(&self) -> Exit {
        Exit::from_code(self.exit_code)
    }
}

/// How a worker run ended: its report (or why there is none), and what its cleanup could
/// not delete.
#[must_use]
#[derive(Debug)]
pub struct WorkerEnd<R> {
    pub result: Result<WorkerReport<R>>,
    /// One line per object left behind (each carries labels and an expiry: a sweep, or the
    /// Job's TTL, takes it). Empty when everything is gone or going.
    pub cleanup_errors: Vec<String>,
}

/// What one worker run creates: the Job, and the claims made for it. The Secret is not
/// listed: the garbage collector takes it with the Job (whoever runs workers may create
/// Secrets, not delete them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerObjects {
    pub namespace: String,
    pub job: String,
    pub claims: Vec<String>,
}

impl WorkerObjects {
    /// Delete the Job (in the background: the garbage collector takes its pods and whatever
    /// it owns), then the claims (the Job's pod has let go of them). Gone already is fine;
    /// every deletion is tried. `Err`: one line per deletion that failed.
    pub async fn delete(&self, client: &kube::Client) -> std::result::Result<(), Vec<String>> {
        let ns = &self.namespace;
        let mut errors = Vec::new();
        if let Err(e) = podjob::delete_job(client, ns, &self.job).await {
            errors.push(e.to_string());
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        for name in &self.claims {
            match claims.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => {
                    errors.push(classify(&format!("deleting PVC {ns}/{name}"), e).to_string())
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// [`WorkerObjects::delete`] within `timeout`.
    pub async fn delete_within(&self, client: &kube::Client, timeout: Duration) -> Vec<String> {
        match tokio::time::timeout(timeout, self.delete(client)).await {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(errors)) => errors,
            Err(_) => vec![format!(
                "deleting Job {}/{} and its claims did not finish within {}",
                self.namespace,
                self.job,
                humantime::format_duration(timeout)
            )],
        }
    }
}

/// Run a worker Job to its end: create it suspended; create the Secret and claims it
/// needs, owned by it; resume it; wait for it ([`podjob::wait`]); read its report
/// ([`conclude`]); delete it and its claims within the cleanup deadline, whatever happened
/// (unless its creation was refused: then nothing of this run exists).
///
/// Dropping the future (a cancelled run) skips the cleanup: keep [`WorkerRun::objects`]
/// and delete them then, or use [`run_worker_until`].
pub async fn run_worker<R: Report>(client: &kube::Client, run: WorkerRun) -> WorkerEnd<R> {
    let may_exist = AtomicBool::new(false);
    let result = start_and_wait(client, &run, &may_exist).await;
    let cleanup_errors = if may_exist.load(Ordering::Relaxed) {
        run.objects().delete_within(client, run.cleanup_timeout).await
    } else {
        Vec::new()
    };
    log_cleanup(&run.objects(), &cleanup_errors);
    WorkerEnd { result, cleanup_errors }
}

/// [`run_worker`], stopped when `cancel` completes (a shutdown signal): then the Job and
/// its claims are deleted within the cleanup deadline, and the result is a retryable
/// "cancelled by …".
pub async fn run_worker_until<R, S>(
    client: &kube::Client,
    run: WorkerRun,
    cancel: impl Future<Output = S>,
) -> WorkerEnd<R>
where
    R: Report,
    S: std::fmt::Display,
{
    let objects = run.objects();
    let timeout = run.cleanup_timeout;
    tokio::select! {
        end = run_worker(client, run) => end,
        why = cancel => {
            tracing::warn!(job = %format!("{}/{}", objects.namespace, objects.job), "cancelled by {why}: deleting the worker Job");
            let cleanup_errors = objects.delete_within(client, timeout).await;
            log_cleanup(&objects, &cleanup_errors);
            let left = if cleanup_errors.is_empty() { "deleted" } else { "left to expire" };
            WorkerEnd {
                result: Err(Error::Retryable(format!(
                    "cancelled by {why}; worker Job {}/{} {left}",
                    objects.namespace, objects.job
                ))),
                cleanup_errors,
            }
        }
    }
}

fn log_cleanup(objects: &WorkerObjects, errors: &[String]) {
    for e in errors {
        tracing::warn!(
            job = %format!("{}/{}", objects.namespace, objects.job),
            "cleanup: {e} (it expires: the next sweep, or the Job's TTL, takes it)"
        );
    }
}

async fn start_and_wait<R: Report>(
    client: &kube::Client,
    run: &WorkerRun,
    may_exist: &AtomicBool,
) -> Result<WorkerReport<R>> {
    let (ns, name) = (&run.job.namespace, &run.job.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    may_exist.store(true, Ordering::Relaxed);
    let job = match jobs.create(&PostParams::default(), &run.build_job()).await {
        Ok(job) => job,
        Err(e) => {
            // Refused (4xx, 409 included: that Job is not this run's): nothing to delete.
            // Otherwise (a lost connection, a timeout, a 5xx) the Job may exist.
            if status_code(&e).is_some_and(|c| (400..500).contains(&c)) {
                may_exist.store(false, Ordering::Relaxed);
            }
            return Err(classify(&format!("creating Job {ns}/{name}"), e));
        }
    };
    let owner = podjob::owned_by(&job)?;
    if let Some(secret) = run.build_secret(&owner) {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| classify(&format!("creating Secret {ns}/{name}"), e))?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for claim in run.build_claims(&owner) {
        let what = claim_description(&claim);
        claims
            .create(&PostParams::default(), &claim)
            .await
            .map_err(|e| classify(&format!("creating {what}"), e))?;
    }
    podjob::resume(client, ns, name).await?;
    tracing::info!(job = %format!("{ns}/{name}"), "worker Job started");
    let outcome = podjob::wait(client, ns, name, run.wait).await?;
    conclude(&format!("Job {ns}/{name}"), outcome)
}

/// `PVC ns/name`, and what it is made from.
fn claim_description(claim: &PersistentVolumeClaim) -> String {
    let m = &claim.metadata;
    let source = claim
        .spec
        .as_ref()
        .and_then(|s| s.data_source.as_ref())
        .map(|d| format!(" from {} {}", d.kind, d.name))
        .unwrap_or_default();
    format!(
        "PVC {}/{}{source}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// What a worker Job's end means (the table in the module's documentation). `job` names it
/// in errors (`Job ns/name`).
pub fn conclude<R: Report>(job: &str, outcome: JobOutcome) -> Result<WorkerReport<R>> {
    let JobOutcome { succeeded, exit_code, message, reason } = outcome;
    let text = match parse_termination_message::<R>(message.as_deref()) {
        Message::Report { report, truncated } => {
            let reported = report.exit_code();
            if let Some(code) = exit_code.filter(|&c| c != i32::from(reported)) {
                tracing::warn!(
                    job,
                    reported,
                    exit_code = code,
                    "the worker exited with another code than it reported"
                );
            }
            return Ok(WorkerReport {
                exit_code: reported,
                report,
                container_exit_code: exit_code,
                job_succeeded: succeeded,
                truncated,
            });
        }
        Message::Text(text) => Some(text),
        Message::Absent => None,
    };
    let tail = text.map(|t| format!("; log: {t}")).unwrap_or_default();
    if succeeded {
        return Err(Error::Retryable(format!("{job} succeeded without a report{tail}")));
    }
    let why = reason.unwrap_or_else(|| format!("{job} ended without a report"));
    let exit = exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
    let msg = format!("{why}{exit}{tail}");
    Err(match exit_code.and_then(|c| u8::try_from(c).ok()).map(Exit::from_code) {
        Some(Exit::Usage) => Error::Invalid(msg),
        Some(Exit::Integrity) => Error::Integrity(msg),
        Some(Exit::Locked) => Error::Locked(msg),
        _ => Error::Retryable(msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct TestReport {
        exit_code: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failures: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }

    impl Slim for TestReport {
        fn slim(&mut self) {
            self.failures.clear();
            if let Some(e) = &mut self.error {
                cut(e, 1024);
            }
        }
    }

    impl Report for TestReport {
        fn exit_code(&self) -> u8 {
            self.exit_code
        }
    }

    fn report(failures: usize) -> TestReport {
        TestReport {
            exit_code: 3,
            snapshot: Some("ab".into()),
            failures: (0..failures).map(|i| format!("/some/long/path/{i}: denied")).collect(),
            error: None,
        }
    }

    #[test]
    fn a_report_that_fits_is_written_whole_and_reads_back() {
        let r = report(2);
        let text = termination_text(&r);
        assert!(!text.contains("truncated"), "{text}");
        assert_eq!(
            parse_termination_message::<TestReport>(Some(&format!("\n{text}  \n"))),
            Message::Report { report: r, truncated: false }
        );
    }

    #[test]
    fn a_long_report_is_slimmed_and_marked_truncated() {
        let r = report(500);
        let text = termination_text(&r);
        assert!(text.len() <= TERMINATION_MESSAGE_MAX);
        let Message::Report { report, truncated } =
            parse_termination_message::<TestReport>(Some(&text))
        else {
            panic!("not a report: {text}")
        };
        assert!(truncated);
        assert_eq!(report, TestReport { failures: Vec::new(), ..r });
    }

    #[test]
    fn a_report_too_long_even_slimmed_is_cut_at_a_character_boundary() {
        // Multi-byte characters straddle the cut: it must not split one (nor panic).
        let r = TestReport { error: None, snapshot: Some("żółw🐢".repeat(1000)), ..report(0) };
        let text = termination_text(&r);
        assert!(text.len() <= TERMINATION_MESSAGE_MAX && text.len() > TERMINATION_MESSAGE_MAX - 4);
        assert!(matches!(parse_termination_message::<TestReport>(Some(&text)), Message::Text(_)));
        let mut s = "aé".to_string();
        cut(&mut s, 2);
        assert_eq!(s, "a");
    }

    #[test]
    fn what_is_not_a_report_is_text_or_absent() {
        assert_eq!(parse_termination_message::<TestReport>(None), Message::Absent);
        assert_eq!(parse_termination_message::<TestReport>(Some(" \n")), Message::Absent);
        let log = "thread 'main' panicked at src/main.rs:1:1\nboom";
        assert_eq!(
            parse_termination_message::<TestReport>(Some(log)),
            Message::Text(log.to_string())
        );
        // What the kubelet keeps of a longer message: cut mid-way.
        let cut_short = &termination_text(&report(2))[..20];
        assert_eq!(
            parse_termination_message::<TestReport>(Some(cut_short)),
            Message::Text(cut_short.to_string())
        );
        // Another worker's report (a field missing).
        assert!(matches!(
            parse_termination_message::<TestReport>(Some(r#"{"files": 3}"#)),
            Message::Text(_)
        ));
    }

    #[test]
    fn termination_messages_are_written_where_the_kubelet_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        write_termination_message(&path, &report(500));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= TERMINATION_MESSAGE_MAX);
        assert!(matches!(
            parse_termination_message::<TestReport>(Some(&text)),
            Message::Report { truncated: true, .. }
        ));
        // Outside a pod (no such directory): nothing, and no error.
        write_termination_message(&dir.path().join("missing/t"), &report(0));
    }

    fn test_run(secret: bool) -> WorkerRun {
        use crate::podjob::{WorkerSecurity, WorkerVolume};
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cairn-clone-data-run1", "labels": {"extra": "x"}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"},
            },
        }))
        .unwrap();
        WorkerRun {
            job: WorkerJob {
                namespace: "ns".into(),
                name: "cairn-ingest-data-run1".into(),
                labels: BTreeMap::from([("app.kubernetes.io/managed-by".into(), "cairn".into())]),
                annotations: BTreeMap::from([("cairn.dev/created-at".into(), "now".into())]),
                image: "cairn-pvc-ingest:1".into(),
                image_pull_policy: None,
                command: vec!["cairn-pvc-ingest".into(), "ingest".into()],
                env: Vec::new(),
                env_secret: None,
                volume: Some(WorkerVolume {
                    claim: "cairn-clone-data-run1".into(),
                    read_only: true,
                    block: false,
                }),
                security: WorkerSecurity::reader(),
                resources: None,
                service_account: None,
                node: None,
                active_deadline: Duration::from_secs(60),
            },
            secret: secret.then(|| BTreeMap::from([("CAIRN_REPO".into(), "s3://b/r".into())])),
            claims: vec![claim],
            wait: WaitOptions {
                timeout: Duration::from_secs(60),
                pending_timeout: Duration::from_secs(10),
                poll: Duration::from_secs(1),
            },
            cleanup_timeout: Duration::from_secs(30),
        }
    }

    fn created_job(run: &WorkerRun) -> Job {
        let mut job = run.build_job();
        job.metadata.uid = Some("uid-1".into());
        job
    }

    #[test]
    fn the_job_is_suspended_and_reads_the_secret_named_after_it() {
        let run = test_run(true);
        let job = serde_json::to_value(run.build_job()).unwrap();
        assert_eq!(job["spec"]["suspend"], true);
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "cairn-ingest-data-run1");
        assert_eq!(c["envFrom"][0]["secretRef"]["optional"], false);
        // Without a Secret, the Job's own env_secret stands.
        let job = serde_json::to_value(test_run(false).build_job()).unwrap();
        assert!(job["spec"]["template"]["spec"]["containers"][0].get("envFrom").is_none());
    }

    #[test]
    fn the_secret_is_labelled_annotated_and_owned_by_the_job() {
        let run = test_run(true);
        let owner = podjob::owned_by(&created_job(&run)).unwrap();
        assert_eq!(
            (owner.api_version.as_str(), owner.kind.as_str(), owner.uid.as_str()),
            ("batch/v1", "Job", "uid-1")
        );
        assert_eq!(owner.name, "cairn-ingest-data-run1");
        assert_eq!(owner.controller, Some(false));
        assert_eq!(owner.block_owner_deletion, None);
        let secret = run.build_secret(&owner).unwrap();
        let m = &secret.metadata;
        assert_eq!(m.name.as_deref(), Some("cairn-ingest-data-run1"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        assert_eq!(m.labels.as_ref(), Some(&run.job.labels));
        assert_eq!(m.annotations.as_ref(), Some(&run.job.annotations));
        assert_eq!(m.owner_references.as_deref(), Some(std::slice::from_ref(&owner)));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.string_data, run.secret);
        assert!(test_run(false).build_secret(&owner).is_none());
        // Its values stay out of logs.
        let debug = format!("{run:?}");
        assert!(debug.contains("CAIRN_REPO") && !debug.contains("s3://b/r"), "{debug}");
    }

    #[test]
    fn claims_join_the_job_namespace_labels_and_ownership() {
        let run = test_run(true);
        let owner = podjob::owned_by(&created_job(&run)).unwrap();
        let claims = run.build_claims(&owner);
        let m = &claims[0].metadata;
        assert_eq!(m.name.as_deref(), Some("cairn-clone-data-run1"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        let labels = m.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "cairn");
        assert_eq!(labels["extra"], "x", "its own labels stay");
        assert_eq!(m.annotations.as_ref(), Some(&run.job.annotations));
        assert_eq!(m.owner_references.as_deref(), Some(std::slice::from_ref(&owner)));
        assert_eq!(claims[0].spec, run.claims[0].spec);
        assert_eq!(
            claim_description(&claims[0]),
            "PVC ns/cairn-clone-data-run1 from VolumeSnapshot snap"
        );
        assert_eq!(
            run.objects(),
            WorkerObjects {
                namespace: "ns".into(),
                job: "cairn-ingest-data-run1".into(),
                claims: vec!["cairn-clone-data-run1".into()],
            }
        );
    }

    #[test]
    fn a_job_without_a_uid_cannot_own_anything() {
        let run = test_run(true);
        let err = podjob::owned_by(&run.build_job()).unwrap_err();
        assert!(matches!(err, Error::Retryable(_)), "{err}");
    }

    fn outcome(succeeded: bool, exit: Option<i32>, message: Option<&str>) -> JobOutcome {
        JobOutcome { succeeded, exit_code: exit, message: message.map(String::from), reason: None }
    }

    fn class(r: Result<WorkerReport<TestReport>>) -> (&'static str, String) {
        match r.unwrap_err() {
            Error::Retryable(m) => ("retryable", m),
            Error::Invalid(m) => ("invalid", m),
            Error::Integrity(m) => ("integrity", m),
            Error::Locked(m) => ("locked", m),
            e => panic!("unexpected class: {e}"),
        }
    }

    #[test]
    fn a_report_is_the_workers_word_whatever_the_job_says() {
        let text = termination_text(&report(1));
        for (succeeded, exit) in [(true, Some(0)), (false, Some(3)), (false, None)] {
            let r =
                conclude::<TestReport>("Job ns/x", outcome(succeeded, exit, Some(&text))).unwrap();
            assert_eq!(r.exit_code, 3, "the reported code");
            assert_eq!(r.exit(), Exit::Partial);
            assert_eq!(r.container_exit_code, exit);
            assert_eq!(r.job_succeeded, succeeded);
            assert!(!r.truncated);
            assert_eq!(r.report, report(1));
        }
        let long = termination_text(&report(500));
        let r = conclude::<TestReport>("Job ns/x", outcome(false, Some(3), Some(&long))).unwrap();
        assert!(r.truncated && r.report.failures.is_empty());
    }

    #[test]
    fn no_report_is_retryable_unless_the_exit_code_says_otherwise() {
        let (c, m) = class(conclude("Job ns/x", outcome(true, Some(0), None)));
        assert_eq!((c, m.as_str()), ("retryable", "Job ns/x succeeded without a report"));
        let (c, m) = class(conclude("Job ns/x", outcome(true, Some(0), Some("hello"))));
        assert_eq!(
            (c, m.as_str()),
            ("retryable", "Job ns/x succeeded without a report; log: hello")
        );
        // A usage error before any report (flags the image does not know).
        let (c, m) = class(conclude(
            "Job ns/x",
            outcome(false, Some(2), Some("error: unexpected argument")),
        ));
        assert_eq!(
            (c, m.as_str()),
            (
                "invalid",
                "Job ns/x ended without a report (exit 2); log: error: unexpected argument"
            )
        );
        assert_eq!(class(conclude("Job ns/x", outcome(false, Some(4), None))).0, "integrity");
        assert_eq!(class(conclude("Job ns/x", outcome(false, Some(5), None))).0, "locked");
        for code in [1, 3, 101, 137, 143, -1, 258] {
            assert_eq!(
                class(conclude("Job ns/x", outcome(false, Some(code), None))).0,
                "retryable"
            );
        }
        // A report cut short by the kubelet is no report.
        let cut_short = &termination_text(&report(2))[..30];
        let (c, m) = class(conclude("Job ns/x", outcome(false, Some(1), Some(cut_short))));
        assert_eq!(c, "retryable");
        assert!(m.ends_with(&format!("(exit 1); log: {cut_short}")), "{m}");
    }

    #[test]
    fn a_worker_that_never_ran_fails_with_why() {
        let never = JobOutcome {
            reason: Some("Job ns/x: ErrImagePull: pull access denied".into()),
            ..Default::default()
        };
        let (c, m) = class(conclude("Job ns/x", never));
        assert_eq!((c, m.as_str()), ("retryable", "Job ns/x: ErrImagePull: pull access denied"));
        let failed = JobOutcome {
            exit_code: Some(137),
            message: Some("Killed".into()),
            reason: Some("Job ns/x failed: BackoffLimitExceeded".into()),
            ..Default::default()
        };
        let (c, m) = class(conclude("Job ns/x", failed));
        assert_eq!(
            (c, m.as_str()),
            ("retryable", "Job ns/x failed: BackoffLimitExceeded (exit 137); log: Killed")
        );
    }

    /// A fake API server on a local port, answering with `answer(method, path, body)` and
    /// recording every request (method, path without the query, body).
    struct FakeApi {
        client: kube::Client,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>,
    }

    type Answer = dyn Fn(&str, &str, &serde_json::Value) -> (u16, serde_json::Value) + Send + Sync;

    impl FakeApi {
        fn start(
            answer: impl Fn(&str, &str, &serde_json::Value) -> (u16, serde_json::Value)
            + Send
            + Sync
            + 'static,
        ) -> FakeApi {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let answer: std::sync::Arc<Answer> = std::sync::Arc::new(answer);
            let log = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let (answer, log) = (answer.clone(), log.clone());
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        let mut out = stream;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let mut parts = line.split_whitespace();
                            let method = parts.next().unwrap_or_default().to_string();
                            let path = parts.next().unwrap_or_default().to_string();
                            let mut length = 0;
                            loop {
                                let mut header = String::new();
                                reader.read_line(&mut header).unwrap();
                                if header.trim().is_empty() {
                                    break;
                                }
                                if let Some((k, v)) = header.split_once(':')
                                    && k.eq_ignore_ascii_case("content-length")
                                {
                                    length = v.trim().parse().unwrap();
                                }
                            }
                            let mut body = vec![0; length];
                            reader.read_exact(&mut body).unwrap();
                            let body = serde_json::from_slice(&body).unwrap_or_default();
                            let path = path.split('?').next().unwrap_or_default().to_string();
                            let (code, reply) = answer(&method, &path, &body);
                            log.lock().unwrap().push((method, path, body));
                            let reply = reply.to_string();
                            let head = format!(
                                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                reply.len()
                            );
                            if out
                                .write_all(head.as_bytes())
                                .and_then(|_| out.write_all(reply.as_bytes()))
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            });
            let mut config = kube::Config::new(url.parse().unwrap());
            config.default_retry = false; // as KubeArgs::client has it
            FakeApi { client: kube::Client::try_from(config).unwrap(), seen }
        }

        /// `METHOD path` of each request so far.
        fn requests(&self) -> Vec<String> {
            self.seen.lock().unwrap().iter().map(|(m, p, _)| format!("{m} {p}")).collect()
        }

        fn body(&self, request: &str) -> serde_json::Value {
            let seen = self.seen.lock().unwrap();
            let found = seen.iter().find(|(m, p, _)| format!("{m} {p}") == request);
            found.map(|r| r.2.clone()).unwrap_or_else(|| panic!("no {request}"))
        }
    }

    const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
    const JOB: &str = "/apis/batch/v1/namespaces/ns/jobs/cairn-ingest-data-run1";
    const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
    const CLAIMS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";
    const CLAIM: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/cairn-clone-data-run1";
    const PODS: &str = "/api/v1/namespaces/ns/pods";

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": if code < 300 { "Success" } else { "Failure" },
            "message": reason, "reason": reason, "code": code,
        });
        (code, body)
    }

    /// An API server on which the worker runs to its end, reporting `message`; `refuse`
    /// answers one request (`METHOD path`) with an error status instead.
    fn cluster(message: &'static str, refuse: Option<(&'static str, u16)>) -> FakeApi {
        FakeApi::start(move |method, path, body| {
            if let Some((req, code)) = refuse
                && format!("{method} {path}") == req
            {
                return status(code, "refused");
            }
            match (method, path) {
                ("POST", JOBS) => {
                    let mut job = body.clone();
                    job["metadata"]["uid"] = "uid-1".into();
                    (201, job)
                }
                ("POST", SECRETS | CLAIMS) => (201, body.clone()),
                ("PATCH", JOB) => (200, serde_json::json!({"metadata": {"name": "x"}})),
                ("GET", JOB) => (
                    200,
                    serde_json::json!({"metadata": {"name": "x"}, "status": {"succeeded": 1}}),
                ),
                ("GET", PODS) => (
                    200,
                    serde_json::json!({"metadata": {}, "items": [{"status": {
                        "phase": "Succeeded",
                        "containerStatuses": [{
                            "name": "worker", "image": "i", "imageID": "", "ready": false,
                            "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "message": message}},
                        }],
                    }}]}),
                ),
                ("DELETE", JOB | CLAIM) => status(200, "deleted"),
                _ => status(404, "not played"),
            }
        })
    }

    fn fast(mut run: WorkerRun) -> WorkerRun {
        run.wait.poll = Duration::from_millis(10);
        run
    }

    #[tokio::test]
    async fn a_run_creates_owned_dependants_before_resuming_and_cleans_up() {
        let message: &'static str = termination_text(&report(1)).leak();
        let api = cluster(message, None);
        let end = run_worker::<TestReport>(&api.client, fast(test_run(true))).await;
        let got = end.result.unwrap();
        assert_eq!((got.exit_code, got.report), (3, report(1)));
        assert!(end.cleanup_errors.is_empty(), "{:?}", end.cleanup_errors);
        assert_eq!(
            api.requests(),
            [
                format!("POST {JOBS}"),
                format!("POST {SECRETS}"),
                format!("POST {CLAIMS}"),
                format!("PATCH {JOB}"),
                format!("GET {JOB}"),
                format!("GET {PODS}"),
                format!("DELETE {JOB}"),
                format!("DELETE {CLAIM}"),
            ]
        );
        assert_eq!(api.body(&format!("POST {JOBS}"))["spec"]["suspend"], true);
        for dependant in [SECRETS, CLAIMS] {
            let owner = &api.body(&format!("POST {dependant}"))["metadata"]["ownerReferences"][0];
            assert_eq!(
                (owner["kind"].as_str(), owner["uid"].as_str()),
                (Some("Job"), Some("uid-1"))
            );
        }
        assert_eq!(api.body(&format!("PATCH {JOB}"))["spec"]["suspend"], false);
        assert_eq!(api.body(&format!("DELETE {JOB}"))["propagationPolicy"], "Background");
    }

    #[tokio::test]
    async fn a_run_that_fails_after_the_job_exists_still_deletes_it() {
        let api = cluster("", Some(("POST /api/v1/namespaces/ns/secrets", 403)));
        let end = run_worker::<TestReport>(&api.client, fast(test_run(true))).await;
        assert!(matches!(end.result, Err(Error::Denied(_))), "{:?}", end.result);
        let requests = api.requests();
        assert!(!requests.contains(&format!("PATCH {JOB}")), "never resumed: {requests:?}");
        assert!(requests.ends_with(&[format!("DELETE {JOB}"), format!("DELETE {CLAIM}")]));
        // Succeeded without a report: retryable, and cleaned up.
        let api = cluster("", None);
        let end = run_worker::<TestReport>(&api.client, fast(test_run(true))).await;
        assert!(matches!(&end.result, Err(Error::Retryable(m)) if m.contains("without a report")));
        assert!(api.requests().contains(&format!("DELETE {JOB}")));
    }

    #[tokio::test]
    async fn a_refused_job_leaves_nothing_to_delete_but_a_failed_create_might() {
        for (code, deleted) in [(403, false), (409, false), (500, true)] {
            let api = cluster("", Some(("POST /apis/batch/v1/namespaces/ns/jobs", code)));
            let end = run_worker::<TestReport>(&api.client, fast(test_run(true))).await;
            assert!(end.result.is_err());
            assert_eq!(api.requests().contains(&format!("DELETE {JOB}")), deleted, "{code}");
        }
    }

    #[tokio::test]
    async fn what_cleanup_cannot_delete_is_reported_not_fatal() {
        let message: &'static str = termination_text(&report(0)).leak();
        let api = cluster(
            message,
            Some(("DELETE /apis/batch/v1/namespaces/ns/jobs/cairn-ingest-data-run1", 403)),
        );
        let end = run_worker::<TestReport>(&api.client, fast(test_run(true))).await;
        assert!(end.result.is_ok());
        assert_eq!(end.cleanup_errors.len(), 1, "{:?}", end.cleanup_errors);
        assert!(end.cleanup_errors[0].contains("deleting Job ns/cairn-ingest-data-run1"));
        assert!(api.requests().contains(&format!("DELETE {CLAIM}")), "the claim is still tried");
    }

    #[tokio::test]
    async fn a_cancelled_run_deletes_its_job() {
        // The Job never ends.
        let api = FakeApi::start(|method, path, body| match (method, path) {
            ("POST", JOBS) => {
                let mut job = body.clone();
                job["metadata"]["uid"] = "uid-1".into();
                (201, job)
            }
            ("GET", JOB) => (200, serde_json::json!({"metadata": {"name": "x"}})),
            ("GET", PODS) => (200, serde_json::json!({"metadata": {}, "items": []})),
            ("DELETE", _) => status(200, "deleted"),
            _ => (201, body.clone()),
        });
        let cancel = tokio::time::sleep(Duration::from_millis(300));
        let end =
            run_worker_until::<TestReport, _>(&api.client, fast(test_run(true)), async move {
                cancel.await;
                "SIGTERM"
            })
            .await;
        let Err(Error::Retryable(m)) = end.result else { panic!("{:?}", end.result) };
        assert_eq!(m, "cancelled by SIGTERM; worker Job ns/cairn-ingest-data-run1 deleted");
        let requests = api.requests();
        assert!(requests.contains(&format!("GET {JOB}")), "it was waiting: {requests:?}");
        assert!(requests.ends_with(&[format!("DELETE {JOB}"), format!("DELETE {CLAIM}")]));
    }
}
