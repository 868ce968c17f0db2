//! One-off worker Jobs: the pod that reads a volume into the repository (PVC ingest) or
//! writes a snapshot back into a volume (PVC restore).
//!
//! The protocol keeps every temporary object owned and therefore collectable:
//! 1. the Job is created **suspended** (no pod yet),
//! 2. the objects its pod needs (a Secret with the repository credentials, a PVC cloned from
//!    a snapshot) are created with an owner reference to the Job,
//! 3. the Job is resumed, and waited for with a deadline, failing early on what will never
//!    fix itself (image pulls, a missing Secret, a pod unschedulable for too long),
//! 4. the Job is deleted with background propagation: the garbage collector removes its
//!    pods and everything it owns.
//!
//! A crash at any point leaves at most a labelled Job (swept by the next run, taking its
//! dependants with it); objects created in step 2 are never ownerless.
//!
//! The worker reports through its termination message (`TERMINATION_LOG`): the orchestrator
//! needs no log access to collect results.
//!
//! [`crate::worker::run_worker`] runs the protocol; this module has its parts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};

use super::{classify, status_code};
use cairn_core::{Error, Result};

pub use crate::worker::write_termination_message;

/// Where a worker pod finds things.
pub const VOLUME_PATH: &str = "/cairn/volume";
pub const DEVICE_PATH: &str = "/cairn/device";
pub const TERMINATION_LOG: &str = "/cairn/termination-log";
/// The kubelet keeps at most this much of a termination message.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Flags every command that runs worker Jobs shares: how long to wait for what, and which
/// of its own environment variables (store credentials) the workers get.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// imagePullPolicy of the worker pods (Always, IfNotPresent, Never; default: the
    /// cluster's, by tag).
    #[arg(long, env = "CAIRN_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,
    /// How long one worker Job may run.
    #[arg(long, env = "CAIRN_JOB_TIMEOUT", default_value = "6h", value_parser = cairn_core::parse::duration)]
    pub job_timeout: Duration,
    /// How long a worker pod may stay unscheduled or unstarted.
    #[arg(long, env = "CAIRN_PENDING_TIMEOUT", default_value = "10m", value_parser = cairn_core::parse::duration)]
    pub pending_timeout: Duration,
    /// Deadline of the cleanup (also when the run is cancelled).
    #[arg(long, env = "CAIRN_CLEANUP_TIMEOUT", default_value = "2m", value_parser = cairn_core::parse::duration)]
    pub cleanup_timeout: Duration,
    /// How often waits look at the cluster.
    #[arg(long, env = "CAIRN_POLL", default_value = "2s", value_parser = cairn_core::parse::duration)]
    pub poll: Duration,
    /// Environment variables copied into the workers' credentials Secret when set (besides
    /// the repository and its key). Repeatable.
    #[arg(long = "pass-env", env = "CAIRN_PASS_ENV", value_delimiter = ',', default_value = DEFAULT_PASS_ENV)]
    pub pass_env: Vec<String>,
}

/// The store credentials the object_store backends read from the environment.
pub const DEFAULT_PASS_ENV: &str = "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_SESSION_TOKEN,\
AWS_REGION,AWS_DEFAULT_REGION,AWS_ENDPOINT_URL,AWS_ALLOW_HTTP,AZURE_STORAGE_ACCOUNT_NAME,\
AZURE_STORAGE_ACCOUNT_KEY,AZURE_STORAGE_SAS_KEY,GOOGLE_SERVICE_ACCOUNT_KEY,CAIRN_STORE_TIMEOUT";

impl WorkerArgs {
    pub fn wait_options(&self) -> WaitOptions {
        WaitOptions {
            timeout: self.job_timeout,
            pending_timeout: self.pending_timeout,
            poll: self.poll,
        }
    }

    /// `base` plus the pass-through variables that are set here.
    pub fn secret_env(&self, mut base: BTreeMap<String, String>) -> BTreeMap<String, String> {
        for name in &self.pass_env {
            if let Ok(v) = std::env::var(name) {
                base.insert(name.clone(), v);
            }
        }
        base
    }
}

/// How the worker's volume is attached.
#[derive(Debug, Clone)]
pub struct WorkerVolume {
    pub claim: String,
    pub read_only: bool,
    /// A raw block volume: attached as a device at [`DEVICE_PATH`] instead of mounted.
    pub block: bool,
}

/// Who the worker runs as. Reading every file of a volume needs root with `DAC_READ_SEARCH`
/// (or `DAC_OVERRIDE`); writing one back with owners needs `CHOWN`, `FOWNER` and friends.
/// Everything else is dropped, privilege escalation is off, the root filesystem read-only.
#[derive(Debug, Clone)]
pub struct WorkerSecurity {
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub fs_group: Option<i64>,
    pub capabilities: Vec<String>,
}

impl WorkerSecurity {
    /// Root limited to reading: every file is readable, nothing else is allowed.
    pub fn reader() -> WorkerSecurity {
        WorkerSecurity {
            run_as_user: 0,
            run_as_group: 0,
            fs_group: None,
            capabilities: vec!["DAC_READ_SEARCH".into()],
        }
    }

    /// Root limited to writing files back with their owners, modes and times.
    pub fn writer() -> WorkerSecurity {
        WorkerSecurity {
            run_as_user: 0,
            run_as_group: 0,
            fs_group: None,
            capabilities: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// A non-root user (reads what that user, or `fs_group`, may read).
    pub fn non_root(uid: i64, fs_group: Option<i64>) -> WorkerSecurity {
        WorkerSecurity { run_as_user: uid, run_as_group: uid, fs_group, capabilities: Vec::new() }
    }
}

/// Everything a worker Job is made of.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The full command line.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A Secret whose keys become environment variables (credentials).
    pub env_secret: Option<String>,
    pub volume: Option<WorkerVolume>,
    pub security: WorkerSecurity,
    pub resources: Option<ResourceRequirements>,
    pub service_account: Option<String>,
    /// Run on this node (the node of a live volume's consumer).
    pub node: Option<String>,
    pub active_deadline: Duration,
}

impl WorkerJob {
    /// The Job object, suspended.
    pub fn build(&self) -> Job {
        let (volumes, mounts, devices) = self.volume_parts();
        let sec = &self.security;
        let container = Container {
            name: "worker".into(),
            image: Some(self.image.clone()),
            image_pull_policy: self.image_pull_policy.clone(),
            command: Some(self.command.clone()),
            env: Some(
                self.env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain([(CACHE_ENV, CACHE_PATH)])
                    .map(|(k, v)| EnvVar {
                        name: k.into(),
                        value: Some(v.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            env_from: self.env_secret.as_ref().map(|s| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource { name: s.clone(), optional: Some(false) }),
                    ..Default::default()
                }]
            }),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            volume_devices: (!devices.is_empty()).then_some(devices),
            resources: self.resources.clone(),
            termination_message_path: Some(TERMINATION_LOG.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(container_security(sec)),
            ..Default::default()
        };
        let affinity = self.node.as_deref().map(on_node);
        let meta = ObjectMeta {
            labels: Some(self.labels.clone()),
            annotations: Some(self.annotations.clone()),
            ..Default::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..meta.clone()
            },
            spec: Some(JobSpec {
                suspend: Some(true),
                // One attempt: the orchestrator decides what a failure means.
                backoff_limit: Some(0),
                active_deadline_seconds: Some(self.active_deadline.as_secs().max(1) as i64),
                // A safety net should the orchestrator die before deleting it.
                ttl_seconds_after_finished: Some(24 * 3600),
                template: PodTemplateSpec {
                    metadata: Some(meta),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        automount_service_account_token: Some(false),
                        service_account_name: self.service_account.clone(),
                        enable_service_links: Some(false),
                        security_context: Some(PodSecurityContext {
                            fs_group: sec.fs_group,
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        affinity,
                        containers: vec![container],
                        volumes: (!volumes.is_empty()).then_some(volumes),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The pod's volume, and how the container sees it (a mount, or a raw device).
    fn volume_parts(&self) -> (Vec<Volume>, Vec<VolumeMount>, Vec<VolumeDevice>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let mut devices = Vec::new();
        if let Some(v) = &self.volume {
            volumes.push(Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: v.claim.clone(),
                    read_only: Some(v.read_only),
                }),
                ..Default::default()
            });
            if v.block {
                devices.push(VolumeDevice { name: "data".into(), device_path: DEVICE_PATH.into() });
            } else {
                mounts.push(VolumeMount {
                    name: "data".into(),
                    mount_path: VOLUME_PATH.into(),
                    read_only: Some(v.read_only),
                    ..Default::default()
                });
            }
        }
        // The root filesystem is read-only: the index's local table goes here once it
        // outgrows its share of the memory budget.
        volumes.push(Volume {
            name: "cache".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "cache".into(),
            mount_path: CACHE_PATH.into(),
            ..Default::default()
        });
        (volumes, mounts, devices)
    }
}

/// Where a worker's index cache lives (an `emptyDir`), and the variable that tells it.
pub const CACHE_PATH: &str = "/var/cache/cairn";
const CACHE_ENV: &str = "CAIRN_CACHE_DIR";

/// An owner reference to `job`: what it owns goes when it goes.
pub fn owned_by(job: &Job) -> Result<OwnerReference> {
    let uid = job.metadata.uid.clone().ok_or_else(|| {
        Error::Retryable(format!("Job {:?} has no uid", job.metadata.name.as_deref()))
    })?;
    Ok(OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(false),
        // blockOwnerDeletion would need update rights on jobs/finalizers.
        block_owner_deletion: None,
    })
}

/// The worker container's security context: no escalation, read-only root, all
/// capabilities dropped but those asked for, the runtime's seccomp profile.
fn container_security(sec: &WorkerSecurity) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(sec.run_as_user != 0),
        run_as_user: Some(sec.run_as_user),
        run_as_group: Some(sec.run_as_group),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!sec.capabilities.is_empty()).then(|| sec.capabilities.clone()),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Required affinity to one node (where a live volume's consumer runs).
fn on_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Let a suspended Job run.
pub async fn resume(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "spec": { "suspend": false } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&format!("starting Job {ns}/{name}"), e))?;
    Ok(())
}

/// Delete a Job and (in the background) its pods and everything it owns. Gone already is fine.
pub async fn delete_job(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(classify(&format!("deleting Job {ns}/{name}"), e)),
    }
}

/// Bounds of a wait.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// The whole wait.
    pub timeout: Duration,
    /// How long a pod may stay unscheduled, or waiting on something that may still
    /// appear (a Secret, a volume), before the wait gives up.
    pub pending_timeout: Duration,
    pub poll: Duration,
}

/// How a worker Job ended.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobOutcome {
    pub succeeded: bool,
    /// The worker's exit code, when it ran.
    pub exit_code: Option<i32>,
    /// Its termination message (a JSON summary), or the tail of its log.
    pub message: Option<String>,
    /// Why it failed, in one line, when it did.
    pub reason: Option<String>,
}

/// Wait for a worker Job to end, with a deadline, failing early on states that will not
/// fix themselves. Returns the outcome; `Err` only when the API cannot be read.
pub async fn wait(
    client: &kube::Client,
    ns: &str,
    name: &str,
    opts: WaitOptions,
) -> Result<JobOutcome> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut pending_since: Option<Instant> = None;
    let mut last_seen = String::new();
    loop {
        let job = match jobs.get_opt(name).await {
            Ok(Some(j)) => j,
            Ok(None) => {
                return Ok(failed(format!("Job {ns}/{name} disappeared while running")));
            }
            Err(e) => return Err(classify(&format!("reading Job {ns}/{name}"), e)),
        };
        let lp = ListParams::default().labels(&format!("job-name={name}"));
        let pod_list = pods
            .list(&lp)
            .await
            .map_err(|e| classify(&format!("listing pods of Job {ns}/{name}"), e))?;
        let mut outcome = JobOutcome::default();
        let mut blocked: Option<String> = None;
        let mut pending = false;
        for pod in &pod_list.items {
            match judge_pod(pod) {
                PodState::Ended { exit_code, message } => {
                    outcome.exit_code = Some(exit_code);
                    outcome.message = message;
                }
                PodState::Fatal(why) => blocked = Some(why),
                PodState::Pending(why) => {
                    pending = true;
                    last_seen = why;
                }
                PodState::Running => {}
            }
        }
        let status = job.status.unwrap_or_default();
        let job_failed =
            status.conditions.iter().flatten().find(|c| {
                (c.type_ == "Failed" || c.type_ == "FailureTarget") && c.status == "True"
            });
        if status.succeeded.unwrap_or(0) > 0 {
            outcome.succeeded = true;
            return Ok(outcome);
        }
        if let Some(c) = job_failed {
            // The pod's own exit and message say more than the Job's reason; wait a moment
            // for the terminated state to be visible when it is not yet.
            if outcome.exit_code.is_none()
                && started.elapsed() < opts.timeout
                && let Some(code) = pod_exit_after_failure(&pods, &lp, opts.poll).await
            {
                outcome.exit_code = Some(code.0);
                outcome.message = code.1;
            }
            outcome.reason = Some(format!(
                "Job {ns}/{name} failed: {}{}",
                c.reason.clone().unwrap_or_default(),
                c.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ));
            return Ok(outcome);
        }
        if let Some(why) = blocked {
            return Ok(failed(format!("Job {ns}/{name}: {why}")));
        }
        if pending || pod_list.items.is_empty() {
            let since = *pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() > opts.pending_timeout {
                let why =
                    if last_seen.is_empty() { "no pod was created".into() } else { last_seen };
                return Ok(failed(format!(
                    "Job {ns}/{name}: pod not running after {}: {why}",
                    humantime::format_duration(opts.pending_timeout)
                )));
            }
        } else {
            pending_since = None;
        }
        if started.elapsed() > opts.timeout {
            return Ok(failed(format!(
                "Job {ns}/{name} did not finish within {}",
                humantime::format_duration(opts.timeout)
            )));
        }
        tokio::time::sleep(opts.poll).await;
    }
}

fn failed(reason: String) -> JobOutcome {
    JobOutcome { reason: Some(reason), ..Default::default() }
}

/// After the Job failed, the pod's terminated state may lag by a poll or two.
async fn pod_exit_after_failure(
    pods: &Api<Pod>,
    lp: &ListParams,
    poll: Duration,
) -> Option<(i32, Option<String>)> {
    for _ in 0..5 {
        if let Ok(list) = pods.list(lp).await {
            for pod in &list.items {
                if let PodState::Ended { exit_code, message } = judge_pod(pod) {
                    return Some((exit_code, message));
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    None
}

#[derive(Debug, PartialEq)]
enum PodState {
    Running,
    /// Not running yet, for a reason that may pass.
    Pending(String),
    /// Will never run as it is.
    Fatal(String),
    Ended {
        exit_code: i32,
        message: Option<String>,
    },
}

/// Container waiting reasons that no amount of waiting fixes.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerError",
];

fn judge_pod(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else { return PodState::Pending("no status yet".into()) };
    for cs in status.container_statuses.iter().flatten() {
        if let Some(state) = &cs.state {
            if let Some(t) = &state.terminated {
                return PodState::Ended {
                    exit_code: t.exit_code,
                    message: t.message.clone().filter(|m| !m.trim().is_empty()),
                };
            }
            if let Some(w) = &state.waiting {
                let reason = w.reason.clone().unwrap_or_default();
                let why = format!(
                    "{reason}{}",
                    w.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                );
                if FATAL_WAITING.contains(&reason.as_str()) {
                    return PodState::Fatal(why);
                }
                return PodState::Pending(why);
            }
        }
    }
    match status.phase.as_deref() {
        Some("Running") => PodState::Running,
        Some("Failed") => PodState::Ended {
            exit_code: 1,
            message: status.message.clone().or_else(|| status.reason.clone()),
        },
        _ => {
            let unscheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            PodState::Pending(match unscheduled {
                Some(c) => format!(
                    "unschedulable: {}",
                    c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default()
                ),
                None => format!("phase {}", status.phase.as_deref().unwrap_or("unknown")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };

    fn pod_with(status: PodStatus) -> Pod {
        Pod { status: Some(status), ..Default::default() }
    }

    fn waiting(reason: &str) -> Pod {
        pod_with(PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some("detail".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
    }

    #[test]
    fn pod_states_are_judged_by_what_can_still_change() {
        assert_eq!(
            judge_pod(&waiting("ImagePullBackOff")),
            PodState::Fatal("ImagePullBackOff: detail".into())
        );
        assert_eq!(
            judge_pod(&waiting("ContainerCreating")),
            PodState::Pending("ContainerCreating: detail".into())
        );
        let unschedulable = pod_with(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/3 nodes are available".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            judge_pod(&unschedulable),
            PodState::Pending("unschedulable: 0/3 nodes are available".into())
        );
        let ended = pod_with(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![ContainerStatus {
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 4,
                        message: Some("{\"exit_code\":4}".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            judge_pod(&ended),
            PodState::Ended { exit_code: 4, message: Some("{\"exit_code\":4}".into()) }
        );
    }

    #[test]
    fn the_job_is_suspended_locked_down_and_reports_through_its_termination_log() {
        let job = WorkerJob {
            namespace: "ns".into(),
            name: "cairn-ingest-x".into(),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            annotations: BTreeMap::new(),
            image: "cairn-pvc-ingest:1".into(),
            image_pull_policy: None,
            command: vec!["cairn-pvc-ingest".into(), "ingest".into()],
            env: vec![("CAIRN_SOURCE".into(), "pvc/ns/x".into())],
            env_secret: Some("creds".into()),
            volume: Some(WorkerVolume { claim: "tmp".into(), read_only: true, block: false }),
            security: WorkerSecurity::reader(),
            resources: None,
            service_account: None,
            node: Some("node-1".into()),
            active_deadline: Duration::from_secs(3600),
        }
        .build();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["spec"]["suspend"], true);
        assert_eq!(v["spec"]["backoffLimit"], 0);
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        let c = &pod["containers"][0];
        assert_eq!(c["terminationMessagePath"], TERMINATION_LOG);
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        // The index cache: an emptyDir the read-only root cannot stand in for.
        assert_eq!(c["volumeMounts"][1]["mountPath"], CACHE_PATH);
        assert_eq!(pod["volumes"][1]["name"], "cache");
        assert!(pod["volumes"][1]["emptyDir"].is_object());
        assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "CAIRN_CACHE_DIR"));
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["securityContext"]["capabilities"]["add"][0], "DAC_READ_SEARCH");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "creds");
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0]["values"][0],
            "node-1"
        );
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);
    }
}
