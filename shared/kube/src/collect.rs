//! List every object that a set of filters selects, streaming them into a bounded channel:
//! the manifest export stores them, `cairn diff SNAP live` compares them. Memory holds one
//! page per concurrent list plus the channel, whatever the cluster's size.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use super::layout::{ObjectPath, Resource, resource_matches};
use super::list::{AsyncPageSink, ListOptions, get_object, list_pages};
use super::selector::Selector;
use super::{classify, status_code};
use cairn_core::Result;

/// API groups that serve measurements, not objects: never exported.
const METRICS_GROUPS: &[&str] =
    &["metrics.k8s.io", "custom.metrics.k8s.io", "external.metrics.k8s.io"];

/// What an export selects. Recorded in the snapshot (`meta.manifests.filters`) so that a
/// later comparison with the live cluster looks at the same set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Filters {
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub resources: Vec<String>,
    pub exclude_resources: Vec<String>,
    pub selector: Option<String>,
    pub include_events: bool,
    /// Cluster-scoped objects: `None` = unless a namespace filter is given.
    pub cluster_resources: Option<bool>,
}

pub use cairn_core::filter::NamespaceFilter;

impl Filters {
    pub fn namespace_filter(&self) -> Result<NamespaceFilter> {
        NamespaceFilter::new(&self.namespaces, &self.exclude_namespaces)
    }

    pub fn selector(&self) -> Result<Option<Selector>> {
        self.selector.as_deref().map(Selector::parse).transpose()
    }

    /// The listable resources these filters select.
    pub fn select(&self, all: &[Resource], ns: &NamespaceFilter) -> Vec<Resource> {
        let cluster_scoped = self.cluster_resources.unwrap_or(!ns.active());
        let named = |filters: &[String], r: &Resource| {
            filters.iter().any(|f| resource_matches(f, &r.group, &r.resource, Some(&r.kind)))
        };
        all.iter()
            .filter(|r| r.can("list"))
            .filter(|r| !METRICS_GROUPS.contains(&r.group.as_str()))
            .filter(|r| {
                self.include_events
                    || !(r.resource == "events"
                        && (r.group.is_empty() || r.group == "events.k8s.io"))
            })
            .filter(|r| !(r.group.is_empty() && r.resource == "componentstatuses"))
            .filter(|r| r.namespaced || cluster_scoped)
            .filter(|r| self.resources.is_empty() || named(&self.resources, r))
            .filter(|r| !named(&self.exclude_resources, r))
            .cloned()
            .collect()
    }
}

/// What flows out of a collection.
#[derive(Debug)]
pub enum Exported {
    Object(ObjectPath, Value),
    /// A file beside the objects (`cluster/resource-versions.json`...).
    File(String, Vec<u8>),
}

/// How a collection went.
#[derive(Debug, Default)]
pub struct Collected {
    pub per_resource: BTreeMap<String, u64>,
    /// `deployments.apps` or `deployments.apps@ns` → list resourceVersion.
    pub resource_versions: BTreeMap<String, String>,
    /// Lists the identity may not make.
    pub denied: Vec<String>,
    /// Lists the server could not serve (an aggregated API down, a CRD deleted meanwhile).
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub concurrency: usize,
    pub page_size: u32,
}

#[derive(Debug, Clone)]
struct Task {
    resource: Resource,
    namespace: Option<String>,
}

enum TaskEnd {
    Done { objects: u64, resource_version: String },
    Denied(String),
    Skipped(String),
}

struct Sink<'a> {
    tx: &'a mpsc::Sender<Exported>,
    resource: &'a Resource,
    filter: &'a NamespaceFilter,
    objects: u64,
}

impl AsyncPageSink for &mut Sink<'_> {
    async fn page(&mut self, items: Vec<Value>) {
        for obj in items {
            let meta = obj.get("metadata");
            let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
            let ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
            if name.is_empty() || name.contains('/') {
                continue;
            }
            let r = self.resource;
            let keep = match (r.namespaced, ns) {
                (true, Some(ns)) => self.filter.matches(ns),
                (true, None) => false,
                // Namespace objects follow the namespace filter too.
                (false, _) if r.group.is_empty() && r.resource == "namespaces" => {
                    self.filter.matches(name)
                }
                (false, _) => true,
            };
            if !keep {
                continue;
            }
            let path =
                ObjectPath::new(if r.namespaced { ns } else { None }, &r.group, &r.resource, name);
            self.objects += 1;
            if self.tx.send(Exported::Object(path, obj)).await.is_err() {
                return; // the receiving side failed; its error is reported
            }
        }
    }
}

async fn run_task(
    client: &kube::Client,
    task: &Task,
    tx: &mpsc::Sender<Exported>,
    filter: &NamespaceFilter,
    opts: &ListOptions,
) -> Result<TaskEnd> {
    let what = match &task.namespace {
        Some(ns) => format!("{} in namespace {ns}", task.resource.name()),
        None => task.resource.name(),
    };
    let mut attempt = 0;
    loop {
        let mut sink = Sink { tx, resource: &task.resource, filter, objects: 0 };
        let result =
            list_pages(client, &task.resource, task.namespace.as_deref(), opts, &mut sink).await;
        match result {
            Ok(rv) => return Ok(TaskEnd::Done { objects: sink.objects, resource_version: rv }),
            Err(e) => match status_code(&e) {
                Some(401 | 403) => {
                    tracing::warn!(resource = %what, "list denied");
                    return Ok(TaskEnd::Denied(format!("list {what}: {}", classify("", e))));
                }
                // Throttled or a gateway timeout: worth a few more tries.
                Some(429 | 504) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(resource = %what, error = %e, attempt, "list throttled, retrying");
                    tokio::time::sleep(Duration::from_millis(1000 * (1 << attempt))).await;
                }
                // Gone since discovery (a CRD deleted), or an aggregated API that fails.
                Some(404 | 405 | 429 | 500..=599) => {
                    tracing::warn!(resource = %what, error = %e, "resource skipped");
                    return Ok(TaskEnd::Skipped(format!("{what}: {}", classify("", e))));
                }
                _ if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(resource = %what, error = %e, attempt, "list failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (1 << attempt))).await;
                }
                _ => return Err(classify(&format!("listing {what}"), e)),
            },
        }
    }
}

/// List every object of `resources` that the filters select into `tx`. Returns counts, the
/// lists' resourceVersions, and what was denied or skipped. An API server that stops
/// answering fails the call (after retries); a denied list does not.
pub async fn collect(
    client: &kube::Client,
    filters: &Filters,
    resources: &[Resource],
    opts: &CollectOptions,
    tx: &mpsc::Sender<Exported>,
) -> Result<Collected> {
    let filter = filters.namespace_filter()?;
    let selector = filters.selector()?;
    let list_opts = ListOptions {
        page_size: opts.page_size.max(1),
        label_selector: selector.as_ref().map(|s| s.as_str().to_string()),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for r in resources {
        match (filter.literal(), r.namespaced) {
            (Some(names), true) => {
                for ns in &names {
                    tasks.push(Task { resource: r.clone(), namespace: Some(ns.clone()) });
                }
            }
            _ => tasks.push(Task { resource: r.clone(), namespace: None }),
        }
    }
    tracing::info!(resources = resources.len(), lists = tasks.len(), "listing");
    let ends: Vec<(Task, Result<TaskEnd>)> = futures::stream::iter(tasks)
        .map(|task| {
            let (filter, list_opts) = (&filter, &list_opts);
            async move {
                let end = run_task(client, &task, tx, filter, list_opts).await;
                (task, end)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut out = Collected::default();
    for (task, end) in ends {
        match end? {
            TaskEnd::Done { objects, resource_version } => {
                *out.per_resource.entry(task.resource.name()).or_default() += objects;
                let key = match &task.namespace {
                    Some(ns) => format!("{}@{ns}", task.resource.name()),
                    None => task.resource.name(),
                };
                out.resource_versions.insert(key, resource_version);
            }
            TaskEnd::Denied(why) => out.denied.push(why),
            TaskEnd::Skipped(why) => out.skipped.push(why),
        }
    }
    // With plain namespace names and no cluster-wide list of namespaces, still keep the
    // Namespace objects themselves (labels, annotations): restoring a namespace needs them.
    // A Role in the namespace may grant `get namespaces`; without it this is only a note.
    if let Some(names) = filter.literal()
        && !out.resource_versions.contains_key("namespaces")
    {
        for ns in &names {
            match get_object(client, &format!("/api/v1/namespaces/{ns}")).await {
                Ok(Some(mut obj)) if selector.as_ref().is_none_or(|s| s.matches(&obj)) => {
                    if let Some(o) = obj.as_object_mut() {
                        o.insert("apiVersion".into(), "v1".into());
                        o.insert("kind".into(), "Namespace".into());
                    }
                    *out.per_resource.entry("namespaces".into()).or_default() += 1;
                    let path = ObjectPath::new(None, "", "namespaces", ns);
                    let _ = tx.send(Exported::Object(path, obj)).await;
                }
                Ok(_) => {}
                Err(e) => out.skipped.push(format!("namespace object {ns}: {e}")),
            }
        }
    }
    out.denied.sort();
    out.skipped.sort();
    Ok(out)
}
