//! `cairn-restore manifests`: apply objects of a manifest snapshot to a cluster, granularly
//! (whole snapshot, namespaces, resources, a label selector, single paths), in an order that
//! works (CRDs and namespaces first, workloads late), sanitised so the new cluster accepts
//! them, with server-side apply (field manager `cairn`). One object failing never stops the
//! others: every object gets a line in the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_core::repo::short_id;
use cairn_core::{Error, Exit};
use cairn_job::config::{Need, RepoArgs};
use cairn_job::report::{self, JobReport, Report};
use cairn_kube::layout::{ObjectPath, Resource, resource_matches};
use cairn_kube::list::get_object;
use cairn_kube::normalize::{SanitizeOptions, controller_of, never_restored, sanitize};
use cairn_kube::selector::Selector;
use cairn_kube::stored::{is_manifest_snapshot, object_files, read_objects};
use cairn_kube::transform::{self, Transforms};
use cairn_kube::{KubeArgs, classify, status_code};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Existing {
    /// Leave objects that exist alone (reported as skipped).
    Skip,
    /// Apply over them with force (reported as updated or unchanged).
    Update,
}

#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Snapshot id, unique prefix, or `latest` (of --source).
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    pub snapshot: String,
    /// Source name the export used.
    #[arg(long, env = "CAIRN_SOURCE", default_value = "manifests")]
    pub source: String,
    /// Only objects of this namespace (and the Namespace object itself). Repeatable.
    #[arg(long = "namespace", short = 'n', env = "CAIRN_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Only these resources (`deployments.apps`, `configmaps`, `Certificate`). Repeatable.
    #[arg(long = "resource", env = "CAIRN_RESOURCES", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Only objects matching this label selector (as kubectl -l).
    #[arg(long, short = 'l', env = "CAIRN_SELECTOR")]
    pub selector: Option<String>,
    /// Only these snapshot paths: a file (`namespaces/prod/apps/deployments/web.yaml`) or a
    /// directory (`namespaces/prod/core/`). Repeatable.
    #[arg(long = "path", env = "CAIRN_PATHS", value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Restore namespace OLD as NEW. Repeatable.
    #[arg(long = "namespace-map", value_parser = parse_map, env = "CAIRN_NAMESPACE_MAP", value_delimiter = ',')]
    pub namespace_map: Vec<(String, String)>,
    /// Restore PVCs, PVs and StatefulSet volumeClaimTemplates with another StorageClass:
    /// OLD=NEW, repeatable. Each NEW must exist in the target cluster (or be restored).
    #[arg(long = "storage-class-map", value_parser = parse_map, env = "CAIRN_STORAGE_CLASS_MAP", value_delimiter = ',')]
    pub storage_class_map: Vec<(String, String)>,
    /// Rewrite container images of every workload (containers, init and ephemeral
    /// containers): OLD=NEW where OLD is a registry or repository prefix
    /// (registry.a.example/team=registry.b.example/mirror), repeatable.
    #[arg(long = "image-map", value_parser = parse_map, env = "CAIRN_IMAGE_MAP", value_delimiter = ',')]
    pub image_map: Vec<(String, String)>,
    /// JSON Patch / merge patch rules selected by resource, namespace, name, labels and
    /// field conditions (README, "Restore transforms"). An object a rule does not apply to
    /// cleanly fails alone; the rest goes on.
    #[arg(long, env = "CAIRN_TRANSFORM_RULES")]
    pub transform_rules: Option<std::path::PathBuf>,
    /// What to do with objects that already exist.
    #[arg(long, value_enum, env = "CAIRN_EXISTING", default_value = "skip")]
    pub existing: Existing,
    /// Restore status too (through the status subresource).
    #[arg(long, env = "CAIRN_RESTORE_STATUS")]
    pub restore_status: bool,
    /// Keep Services' cluster IPs (they must be free in the target's service range).
    #[arg(long, env = "CAIRN_KEEP_CLUSTER_IPS")]
    pub keep_cluster_ips: bool,
    /// Keep Services' node ports.
    #[arg(long, env = "CAIRN_KEEP_NODE_PORTS")]
    pub keep_node_ports: bool,
    /// Also restore objects a restored controller would recreate (ReplicaSets of a
    /// Deployment, Pods of a ReplicaSet...), re-pointing their owner references.
    #[arg(long, env = "CAIRN_INCLUDE_OWNED")]
    pub include_owned: bool,
    /// Ask the server to validate everything (dry run) and print the plan; change nothing.
    #[arg(long, env = "CAIRN_DRY_RUN")]
    pub dry_run: bool,
    /// Objects applied at once within one ordering step.
    #[arg(long, env = "CAIRN_CONCURRENCY", default_value = "8")]
    pub concurrency: usize,
    /// How long to wait for a restored CRD to be Established.
    #[arg(long, env = "CAIRN_CRD_TIMEOUT", default_value = "60s", value_parser = cairn_job::config::parse_duration)]
    pub crd_timeout: Duration,
}

pub(crate) fn parse_map(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("{s:?}: expected OLD=NEW")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    Skipped,
    Failed,
    WouldCreate,
    WouldUpdate,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    /// Where it is in the snapshot.
    pub path: String,
    /// `deployments.apps prod/web`, with the namespace as restored.
    pub object: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the transforms changed, `pointer: old → new`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// What a manifest restore reports.
pub type ManifestSummary = Report<ManifestRestore>;

#[derive(Debug, Default, Serialize)]
pub struct ManifestRestore {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub dry_run: bool,
    pub counts: BTreeMap<String, u64>,
    pub objects: Vec<ObjectReport>,
}

impl ManifestRestore {
    pub fn failed(&self) -> usize {
        self.objects.iter().filter(|o| o.action == Action::Failed).count()
    }
}

impl JobReport for ManifestRestore {
    fn render(r: &Report<Self>) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if r.error.is_some() {
            return out;
        }
        let Some(id) = r.snapshot.as_deref() else { return out };
        let verb = if r.dry_run { "dry run of manifest restore" } else { "manifest restore" };
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(out, "{verb} from snapshot {}: {}", short_id(id), counts.join(", "));
        for o in &r.objects {
            let show = matches!(
                o.action,
                Action::Failed | Action::WouldCreate | Action::WouldUpdate | Action::Updated
            );
            if show {
                let action = serde_json::to_value(o.action).ok();
                let action = action.as_ref().and_then(Value::as_str).unwrap_or("?");
                let _ = match &o.reason {
                    Some(why) => writeln!(out, "  {action:<12} {}: {why}", o.object),
                    None => writeln!(out, "  {action:<12} {}", o.object),
                };
                for c in &o.changes {
                    let _ = writeln!(out, "  {:<12}   {c}", "");
                }
            }
        }
        out
    }
}

/// One object ready to apply.
#[derive(Debug, Clone)]
struct Planned {
    from: ObjectPath,
    /// Namespace as restored (after --namespace-map).
    namespace: Option<String>,
    name: String,
    resource: Resource,
    obj: Value,
    /// Original uid (for re-pointing owner references of dependents).
    old_uid: Option<String>,
    /// Has owner references to objects of this restore: applied after them.
    owned: bool,
    /// What the transforms changed.
    changes: Vec<String>,
}

impl Planned {
    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.resource.name(), self.name),
            None => format!("{} {}", self.resource.name(), self.name),
        }
    }

    fn url(&self) -> String {
        self.resource.collection_url(self.namespace.as_deref())
    }
}

/// Apply order: what others depend on first. Custom resources come after their CRDs
/// because CRDs are step 0 and everything unknown is last.
fn step(group: &str, resource: &str) -> u8 {
    match (group, resource) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => 0,
        ("", "namespaces") => 1,
        ("storage.k8s.io", "storageclasses") | ("scheduling.k8s.io", "priorityclasses") => 2,
        ("", "serviceaccounts") => 3,
        ("", "secrets") | ("", "configmaps") => 4,
        ("", "persistentvolumes") => 5,
        ("", "persistentvolumeclaims") => 6,
        ("rbac.authorization.k8s.io", _) => 7,
        ("", "services") => 8,
        ("apps", _) | ("batch", _) | ("", "pods") | ("", "replicationcontrollers") => 9,
        _ => 10,
    }
}

fn report(
    from: &ObjectPath,
    object: String,
    action: Action,
    reason: Option<String>,
) -> ObjectReport {
    ObjectReport { path: from.path(), object, action, reason, changes: Vec::new() }
}

/// The transforms the flags ask for; a bad rules file or map is a usage error.
fn transforms(args: &ManifestArgs) -> anyhow::Result<Transforms> {
    let rules = match &args.transform_rules {
        Some(f) => Some(std::fs::read(f).map_err(|e| {
            cairn_core::exit::usage(format!("--transform-rules {}: {e}", f.display()))
        })?),
        None => None,
    };
    let what = args.transform_rules.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
    Ok(Transforms::new(
        &args.storage_class_map,
        &args.image_map,
        rules.as_deref().map(|r| (what.as_str(), r)),
    )?)
}

/// Every StorageClass the map points at must be there: in the target cluster, or among the
/// objects restored.
async fn check_storage_classes(
    client: &kube::Client,
    transforms: &Transforms,
    plan: &[Planned],
) -> anyhow::Result<()> {
    for class in transforms.target_storage_classes() {
        let restored = plan.iter().any(|p| {
            p.resource.group == "storage.k8s.io"
                && p.resource.resource == "storageclasses"
                && p.name == class
        });
        if restored {
            continue;
        }
        let url = format!("/apis/storage.k8s.io/v1/storageclasses/{class}");
        if get_object(client, &url).await?.is_none() {
            return Err(cairn_core::exit::usage(format!(
                "--storage-class-map: StorageClass {class} does not exist in the target cluster"
            )));
        }
    }
    Ok(())
}

pub async fn restore_manifests(
    repo_args: &RepoArgs,
    args: &ManifestArgs,
    summary: &mut ManifestRestore,
) -> anyhow::Result<()> {
    summary.dry_run = args.dry_run;
    let transforms = transforms(args)?;
    let selector = args
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| cairn_core::exit::usage(e.to_string()))?;
    let ns_map: HashMap<String, String> = args.namespace_map.iter().cloned().collect();
    let repo = repo_args.open(Need::Read).await.context("opening the repository")?;
    repo.load_index().await.context("loading the index")?;
    let entry = repo
        .find_snapshot(&args.snapshot, Some(&args.source))
        .await
        .with_context(|| format!("finding snapshot {} of {}", args.snapshot, args.source))?;
    summary.snapshot = Some(entry.id.to_hex());
    if !is_manifest_snapshot(&entry.snapshot) {
        return Err(cairn_core::exit::usage(format!(
            "snapshot {} (source {}) is not a manifest snapshot",
            entry.id.short(),
            entry.snapshot.source
        )));
    }
    let paths: Vec<String> =
        args.paths.iter().map(|p| p.trim_start_matches('/').to_string()).collect();
    let keep = |p: &ObjectPath| -> bool {
        let ns_ok = args.namespaces.is_empty()
            || match &p.namespace {
                Some(ns) => args.namespaces.contains(ns),
                None => {
                    p.group.is_empty()
                        && p.resource == "namespaces"
                        && args.namespaces.contains(&p.name)
                }
            };
        let path = p.path();
        let path_ok = paths.is_empty()
            || paths
                .iter()
                .any(|q| path == *q || path.starts_with(&format!("{}/", q.trim_end_matches('/'))));
        ns_ok && path_ok
    };
    let files =
        object_files(&repo, &entry.snapshot, &keep).await.context("reading the snapshot tree")?;
    let objects = read_objects(&repo, files, 16).await.context("reading objects")?;
    let selected: Vec<(ObjectPath, Value)> = objects
        .into_iter()
        .filter(|(p, o)| {
            let kind = o.get("kind").and_then(Value::as_str);
            args.resources.is_empty()
                || args.resources.iter().any(|f| resource_matches(f, &p.group, &p.resource, kind))
        })
        .filter(|(_, o)| selector.as_ref().is_none_or(|s| s.matches(o)))
        .collect();
    if selected.is_empty() {
        return Err(Error::NotFound(format!(
            "no object of snapshot {} matches the selection",
            entry.id.short()
        ))
        .into());
    }
    let plan = plan(selected, args, &ns_map, &transforms, summary);
    let client = args.kube.client().await.context("connecting to the cluster")?;
    client
        .apiserver_version()
        .await
        .map_err(|e| classify("asking the API server for its version", e))?;
    check_storage_classes(&client, &transforms, &plan).await?;
    apply_plan(&client, plan, args, summary).await;
    for o in &summary.objects {
        let key = serde_json::to_value(o.action).ok().and_then(|v| v.as_str().map(str::to_string));
        *summary.counts.entry(key.unwrap_or_default()).or_default() += 1;
    }
    Ok(())
}

/// Decide what to apply and how: skip what the cluster makes itself, sanitise, map
/// namespaces, and sort out owner references.
fn plan(
    selected: Vec<(ObjectPath, Value)>,
    args: &ManifestArgs,
    ns_map: &HashMap<String, String>,
    transforms: &Transforms,
    summary: &mut ManifestRestore,
) -> Vec<Planned> {
    let uid = |o: &Value| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string);
    let selected_uids: HashSet<String> = selected.iter().filter_map(|(_, o)| uid(o)).collect();
    let pvs: HashSet<String> = selected
        .iter()
        .filter(|(p, _)| p.group.is_empty() && p.resource == "persistentvolumes")
        .map(|(p, _)| p.name.clone())
        .collect();
    // Services with a selector: their Endpoints are the endpoints controller's.
    let selector_services: HashSet<(Option<String>, String)> = selected
        .iter()
        .filter(|(p, o)| {
            p.group.is_empty() && p.resource == "services" && o.pointer("/spec/selector").is_some()
        })
        .map(|(p, _)| (p.namespace.clone(), p.name.clone()))
        .collect();
    let map_ns = |ns: &str| ns_map.get(ns).cloned().unwrap_or_else(|| ns.to_string());
    let opts = SanitizeOptions {
        restore_status: args.restore_status,
        keep_cluster_ips: args.keep_cluster_ips,
        keep_node_ports: args.keep_node_ports,
    };
    let mut out = Vec::new();
    for (path, mut obj) in selected {
        let namespace = path.namespace.as_deref().map(map_ns);
        let name = if path.group.is_empty() && path.resource == "namespaces" {
            map_ns(&path.name)
        } else {
            path.name.clone()
        };
        let shown = match &namespace {
            Some(ns) => format!("{} {ns}/{name}", path.resource_name()),
            None => format!("{} {name}", path.resource_name()),
        };
        let left_out = left_out(&path, &obj, &selector_services, &selected_uids, args);
        if let Some((action, why)) = left_out {
            summary.objects.push(report(&path, shown, action, Some(why)));
            continue;
        }
        let Some(api_version) = obj.get("apiVersion").and_then(Value::as_str).map(str::to_string)
        else {
            continue;
        };
        let version = api_version.rsplit('/').next().unwrap_or(&api_version).to_string();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let old_uid = uid(&obj);
        let pv_restored = obj
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .is_some_and(|v| pvs.contains(v));
        sanitize(&mut obj, &path, opts, pv_restored);
        let owned = rehome(&mut obj, &path, namespace.as_deref(), &name, &selected_uids, &map_ns);
        // The transforms see the object as it will be applied; one that does not apply
        // cleanly fails this object alone, which is then not applied at all.
        let before = obj.clone();
        if let Err(why) = transforms.apply(&path, &mut obj) {
            summary.objects.push(report(&path, shown, Action::Failed, Some(why)));
            continue;
        }
        let changes = transform::changes(&before, &obj);
        let resource = Resource {
            group: path.group.clone(),
            version,
            resource: path.resource.clone(),
            kind,
            namespaced: path.namespace.is_some(),
            verbs: Vec::new(),
        };
        out.push(Planned { from: path, namespace, name, resource, obj, old_uid, owned, changes });
    }
    out.sort_by_key(|p| (p.owned, step(&p.resource.group, &p.resource.resource), p.from.clone()));
    out
}

/// Why a stored object is not restored, and as what, if it is not.
fn left_out(
    path: &ObjectPath,
    obj: &Value,
    selector_services: &HashSet<(Option<String>, String)>,
    selected_uids: &HashSet<String>,
    args: &ManifestArgs,
) -> Option<(Action, String)> {
    if let Some(why) = never_restored(path, obj) {
        return Some((Action::Skipped, why.into()));
    }
    if path.group.is_empty()
        && path.resource == "endpoints"
        && selector_services.contains(&(path.namespace.clone(), path.name.clone()))
    {
        return Some((Action::Skipped, "managed by the endpoints controller".into()));
    }
    if !args.include_owned
        && let Some((_, kind, owner, owner_uid)) = controller_of(obj)
        && selected_uids.contains(&owner_uid)
    {
        return Some((Action::Skipped, format!("recreated by its controller {kind} {owner}")));
    }
    if obj.get("apiVersion").and_then(Value::as_str).is_none() {
        return Some((Action::Failed, "stored object has no apiVersion".into()));
    }
    None
}

/// Point a stored object at its new home: keep owner references into this restore (re-pointed
/// once the owner exists) and drop the rest (the garbage collector deletes objects whose owner
/// is gone), set namespace and name, follow the namespace map in RoleBinding subjects.
/// Returns whether the object keeps an owner.
fn rehome(
    obj: &mut Value,
    path: &ObjectPath,
    namespace: Option<&str>,
    name: &str,
    selected_uids: &HashSet<String>,
    map_ns: &dyn Fn(&str) -> String,
) -> bool {
    let mut owned = false;
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(Value::Array(refs)) = m.get_mut("ownerReferences") {
            refs.retain(|r| {
                r.get("uid").and_then(Value::as_str).is_some_and(|u| selected_uids.contains(u))
            });
            owned = !refs.is_empty();
        }
        if !owned {
            m.remove("ownerReferences");
        }
        if let Some(ns) = namespace {
            m.insert("namespace".into(), Value::String(ns.to_string()));
        }
        m.insert("name".into(), Value::String(name.to_string()));
    }
    if path.group == "rbac.authorization.k8s.io"
        && let Some(Value::Array(subjects)) = obj.get_mut("subjects")
    {
        for s in subjects {
            if let Some(Value::String(ns)) = s.get_mut("namespace") {
                *ns = map_ns(ns);
            }
        }
    }
    owned
}

/// What the server said to one object.
struct Applied {
    action: Action,
    reason: Option<String>,
    new_uid: Option<String>,
}

async fn apply_plan(
    client: &kube::Client,
    plan: Vec<Planned>,
    args: &ManifestArgs,
    summary: &mut ManifestRestore,
) {
    let mut uids: HashMap<String, String> = HashMap::new();
    // Group consecutive objects of one step; steps run in order, objects within one at once.
    let mut groups: Vec<Vec<Planned>> = Vec::new();
    for p in plan {
        let key = (p.owned, step(&p.resource.group, &p.resource.resource));
        match groups.last_mut() {
            Some(g) if (g[0].owned, step(&g[0].resource.group, &g[0].resource.resource)) == key => {
                g.push(p)
            }
            _ => groups.push(vec![p]),
        }
    }
    for group in groups {
        let is_crds = step(&group[0].resource.group, &group[0].resource.resource) == 0;
        let group: Vec<Planned> = group
            .into_iter()
            .map(|mut p| {
                repoint_owners(&mut p.obj, &uids);
                p
            })
            .collect();
        let results: Vec<(Planned, Applied)> = futures::stream::iter(group)
            .map(|p| async move {
                let applied = apply_one(client, &p, args).await;
                (p, applied)
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
        let mut crds = Vec::new();
        for (p, a) in results {
            if let (Some(old), Some(new)) = (&p.old_uid, &a.new_uid) {
                uids.insert(old.clone(), new.clone());
            }
            if is_crds && a.action != Action::Failed && !args.dry_run {
                crds.push(p.name.clone());
            }
            let mut r = report(&p.from, p.display(), a.action, a.reason);
            r.changes = p.changes;
            summary.objects.push(r);
        }
        for crd in crds {
            if let Err(e) = wait_established(client, &crd, args.crd_timeout).await {
                tracing::warn!(crd = %crd, error = %e, "CRD not established");
                summary.objects.push(ObjectReport {
                    path: String::new(),
                    object: format!("customresourcedefinitions.apiextensions.k8s.io {crd}"),
                    action: Action::Failed,
                    reason: Some(format!("not Established: {e}")),
                    changes: Vec::new(),
                });
            }
        }
    }
    summary.objects.sort_by(|a, b| a.path.cmp(&b.path));
}

/// Point owner references at the owners' new uids; drop those whose owner did not make it.
fn repoint_owners(obj: &mut Value, uids: &HashMap<String, String>) {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if let Some(Value::Array(refs)) = m.get_mut("ownerReferences") {
        refs.retain_mut(|r| {
            let new = r.get("uid").and_then(Value::as_str).and_then(|u| uids.get(u)).cloned();
            match new {
                Some(n) => {
                    r["uid"] = Value::String(n);
                    true
                }
                None => false,
            }
        });
        if refs.is_empty() {
            m.remove("ownerReferences");
        }
    }
}

fn uid_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string)
}

async fn apply_one(client: &kube::Client, p: &Planned, args: &ManifestArgs) -> Applied {
    match apply_inner(client, p, args).await {
        Ok(a) => a,
        Err(e) => Applied { action: Action::Failed, reason: Some(e.to_string()), new_uid: None },
    }
}

async fn apply_inner(
    client: &kube::Client,
    p: &Planned,
    args: &ManifestArgs,
) -> cairn_core::Result<Applied> {
    let url = format!("{}/{}", p.url(), p.name);
    let existing = get_object(client, &url).await?;
    if let Some(e) = &existing
        && args.existing == Existing::Skip
    {
        return Ok(Applied {
            action: Action::Skipped,
            reason: Some("exists".into()),
            new_uid: uid_of(e),
        });
    }
    let mut params = PatchParams::apply("cairn").force();
    params.dry_run = args.dry_run;
    // Right after a CRD is Established its resource can take a moment to be served.
    let deadline = Instant::now() + Duration::from_secs(15);
    let applied: Value = loop {
        let req = kube::core::Request::new(p.url())
            .patch(&p.name, &params, &Patch::Apply(&p.obj))
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        match client.request::<Value>(req).await {
            Ok(v) => break v,
            Err(e) if status_code(&e) == Some(404) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(classify("apply", e)),
        }
    };
    if args.restore_status && !args.dry_run && p.obj.get("status").is_some() {
        let status = serde_json::json!({
            "apiVersion": p.obj.get("apiVersion"), "kind": p.obj.get("kind"),
            "metadata": {"name": p.name, "namespace": p.namespace},
            "status": p.obj.get("status"),
        });
        let req = kube::core::Request::new(p.url())
            .patch_subresource("status", &p.name, &params, &Patch::Apply(&status))
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        if let Err(e) = client.request::<Value>(req).await {
            return Ok(Applied {
                action: if existing.is_some() { Action::Updated } else { Action::Created },
                reason: Some(format!("status not restored: {}", classify("status", e))),
                new_uid: uid_of(&applied),
            });
        }
    }
    // "Unchanged" is judged on content, not on resourceVersion: a controller writing status
    // between our read and our apply must not turn a no-op into an update.
    let action = match (&existing, args.dry_run) {
        (None, false) => Action::Created,
        (None, true) => Action::WouldCreate,
        (Some(old), _) if same_content(old, &applied) => Action::Unchanged,
        (Some(_), false) => Action::Updated,
        (Some(_), true) => Action::WouldUpdate,
    };
    Ok(Applied { action, reason: None, new_uid: uid_of(&applied) })
}

/// The same object but for server noise and status.
fn same_content(a: &Value, b: &Value) -> bool {
    let view = |v: &Value| cairn_kube::normalize::for_diff(v, false);
    view(a) == view(b)
}

async fn wait_established(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> cairn_core::Result<()> {
    let url = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
    let deadline = Instant::now() + timeout;
    loop {
        let crd = get_object(client, &url).await?;
        let established = crd
            .as_ref()
            .and_then(|c| c.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        if established {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Retryable(format!("CRD {name} not Established after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Run a manifest restore and return its report (failures are reported on stderr too).
pub async fn execute(repo: &RepoArgs, args: &ManifestArgs) -> ManifestSummary {
    report::run(crate::PROG, ManifestRestore::default(), async |m: &mut ManifestRestore| {
        restore_manifests(repo, args, m).await?;
        Ok(if m.failed() > 0 { Exit::Partial } else { Exit::Success })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_puts_dependencies_first() {
        let mut steps: Vec<(u8, &str)> = [
            ("apps", "deployments"),
            ("", "configmaps"),
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("cert-manager.io", "certificates"),
            ("", "namespaces"),
            ("", "persistentvolumeclaims"),
            ("", "persistentvolumes"),
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("", "serviceaccounts"),
            ("", "services"),
        ]
        .iter()
        .map(|(g, r)| (step(g, r), *r))
        .collect();
        steps.sort();
        let names: Vec<&str> = steps.iter().map(|s| s.1).collect();
        assert_eq!(
            names,
            vec![
                "customresourcedefinitions",
                "namespaces",
                "serviceaccounts",
                "configmaps",
                "persistentvolumes",
                "persistentvolumeclaims",
                "rolebindings",
                "services",
                "deployments",
                "certificates"
            ]
        );
    }

    #[test]
    fn owner_references_follow_new_uids_or_go() {
        let mut obj = json!({"metadata":{"ownerReferences":[
            {"kind":"A","name":"a","uid":"old-a"},{"kind":"B","name":"b","uid":"old-b"}]}});
        let uids = HashMap::from([("old-a".to_string(), "new-a".to_string())]);
        repoint_owners(&mut obj, &uids);
        assert_eq!(
            obj["metadata"]["ownerReferences"],
            json!([{"kind":"A","name":"a","uid":"new-a"}])
        );
        repoint_owners(&mut obj, &HashMap::new());
        assert!(obj["metadata"].get("ownerReferences").is_none());
    }
}
