//! Discovery: every served group at its preferred version, every resource with its verbs.
//! A group whose version cannot be listed (an aggregated API whose backend is down) is
//! recorded as a failure and skipped; only an API server that cannot list its groups at all
//! fails the call.

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};

use super::layout::Resource;
use super::{classify, status_code};
use cairn_core::Result;

#[derive(Debug, Clone)]
pub struct Discovery {
    pub resources: Vec<Resource>,
    /// `group/version` that could not be listed, with the reason.
    pub failures: Vec<(String, String)>,
    /// What discovery returned, for the snapshot (`cluster/discovery.json`).
    pub document: serde_json::Value,
}

pub async fn discover(client: &kube::Client, concurrency: usize) -> Result<Discovery> {
    let core = client
        .list_core_api_versions()
        .await
        .map_err(|e| classify("discovery of the core API (/api)", e))?;
    let groups: APIGroupList = client
        .list_api_groups()
        .await
        .map_err(|e| classify("discovery of API groups (/apis)", e))?;

    // (group, group/version) at the preferred version of each group.
    let mut wanted: Vec<(String, String)> = Vec::new();
    if core.versions.iter().any(|v| v == "v1") || core.versions.is_empty() {
        wanted.push((String::new(), "v1".into()));
    } else if let Some(v) = core.versions.first() {
        wanted.push((String::new(), v.clone()));
    }
    for g in &groups.groups {
        let gv = g
            .preferred_version
            .as_ref()
            .map(|p| p.group_version.clone())
            .or_else(|| g.versions.first().map(|v| v.group_version.clone()));
        if let Some(gv) = gv {
            wanted.push((g.name.clone(), gv));
        }
    }

    let lists: Vec<(String, String, std::result::Result<APIResourceList, kube::Error>)> =
        futures::stream::iter(wanted)
            .map(|(group, gv)| async move {
                let res = if group.is_empty() {
                    client.list_core_api_resources(&gv).await
                } else {
                    client.list_api_group_resources(&gv).await
                };
                (group, gv, res)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;

    let mut resources = Vec::new();
    let mut failures = Vec::new();
    let mut doc_resources = serde_json::Map::new();
    for (group, gv, res) in lists {
        let list = match res {
            Ok(l) => l,
            Err(e) => {
                // A 401/403 here is the whole identity being refused, not one group.
                if matches!(status_code(&e), Some(401)) {
                    return Err(classify(&format!("discovery of {gv}"), e));
                }
                let reason = classify(&format!("discovery of {gv}"), e).to_string();
                tracing::warn!(group_version = %gv, error = %reason, "API group skipped");
                failures.push((gv, reason));
                continue;
            }
        };
        let version = gv.rsplit('/').next().unwrap_or(&gv).to_string();
        for r in &list.resources {
            if r.name.contains('/') {
                continue; // subresource
            }
            resources.push(Resource {
                group: group.clone(),
                version: version.clone(),
                resource: r.name.clone(),
                kind: r.kind.clone(),
                namespaced: r.namespaced,
                verbs: r.verbs.clone(),
            });
        }
        doc_resources.insert(gv, serde_json::to_value(&list).unwrap_or_default());
    }
    resources.sort_by(|a, b| (&a.group, &a.resource).cmp(&(&b.group, &b.resource)));
    failures.sort();
    let document = serde_json::json!({
        "core": core,
        "groups": groups,
        "resources": doc_resources,
        "failures": failures.iter().map(|(gv, e)| serde_json::json!({"groupVersion": gv, "error": e})).collect::<Vec<_>>(),
    });
    Ok(Discovery { resources, failures, document })
}
