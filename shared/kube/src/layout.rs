//! Where an API object lives in a manifest snapshot, and how resources are named.
//!
//! ```text
//! cluster/<group>/<resource>/<name>.yaml               cluster-scoped objects
//! namespaces/<ns>/<group>/<resource>/<name>.yaml       namespaced objects
//! cluster/version.json, cluster/discovery.json, cluster/resource-versions.json
//! ```
//! `<group>` is `core` for the legacy group (`""`). Object names never contain `/` (the API
//! server refuses them), so the path is unambiguous and reversible.

use serde::{Deserialize, Serialize};

/// The directory name of the legacy (empty) API group.
pub const CORE_GROUP_DIR: &str = "core";
pub const CLUSTER_DIR: &str = "cluster";
pub const NAMESPACES_DIR: &str = "namespaces";
pub const VERSION_FILE: &str = "cluster/version.json";
pub const DISCOVERY_FILE: &str = "cluster/discovery.json";
pub const RESOURCE_VERSIONS_FILE: &str = "cluster/resource-versions.json";

/// A served resource, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub group: String,
    pub version: String,
    /// Plural name (`deployments`).
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
    #[serde(default)]
    pub verbs: Vec<String>,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// The name `kubectl` uses: `configmaps`, `deployments.apps`.
    pub fn name(&self) -> String {
        resource_name(&self.group, &self.resource)
    }

    pub fn group_dir(&self) -> &str {
        group_dir(&self.group)
    }

    /// URL path of the collection, in one namespace or across all of them.
    pub fn collection_url(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match (namespace, self.namespaced) {
            (Some(ns), true) => format!("{base}/namespaces/{ns}/{}", self.resource),
            _ => format!("{base}/{}", self.resource),
        }
    }

    pub fn can(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

pub fn resource_name(group: &str, resource: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}

pub fn group_dir(group: &str) -> &str {
    if group.is_empty() { CORE_GROUP_DIR } else { group }
}

/// The place of one object in a manifest snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectPath {
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// API group, `""` for core.
    pub group: String,
    pub resource: String,
    pub name: String,
}

impl ObjectPath {
    pub fn new(namespace: Option<&str>, group: &str, resource: &str, name: &str) -> Self {
        ObjectPath {
            namespace: namespace.map(str::to_string),
            group: group.to_string(),
            resource: resource.to_string(),
            name: name.to_string(),
        }
    }

    /// The file path in the snapshot.
    pub fn path(&self) -> String {
        let g = group_dir(&self.group);
        match &self.namespace {
            Some(ns) => format!("{NAMESPACES_DIR}/{ns}/{g}/{}/{}.yaml", self.resource, self.name),
            None => format!("{CLUSTER_DIR}/{g}/{}/{}.yaml", self.resource, self.name),
        }
    }

    /// Parse a snapshot file path back; `None` for files that are not objects.
    pub fn parse(path: &str) -> Option<ObjectPath> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (namespace, rest) = match parts.as_slice() {
            [CLUSTER_DIR, rest @ ..] => (None, rest),
            [NAMESPACES_DIR, ns, rest @ ..] if !ns.is_empty() => (Some(ns.to_string()), rest),
            _ => return None,
        };
        let [g, resource, file] = rest else { return None };
        let name = file.strip_suffix(".yaml")?;
        if name.is_empty() || resource.is_empty() || g.is_empty() {
            return None;
        }
        let group = if *g == CORE_GROUP_DIR { "" } else { g };
        Some(ObjectPath {
            namespace,
            group: group.to_string(),
            resource: resource.to_string(),
            name: name.to_string(),
        })
    }

    /// `kubectl`-style resource name.
    pub fn resource_name(&self) -> String {
        resource_name(&self.group, &self.resource)
    }

    /// `deployments.apps prod/web` — for reports.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.resource_name(), self.name),
            None => format!("{} {}", self.resource_name(), self.name),
        }
    }
}

/// Does a `--resource` filter name this resource? Accepted spellings, as `kubectl` takes
/// them: the plural (`deployments`), plural.group (`deployments.apps`), the kind
/// (`Deployment`, any case) and kind.group. Without a group any group matches.
pub fn resource_matches(filter: &str, group: &str, resource: &str, kind: Option<&str>) -> bool {
    let f = filter.to_ascii_lowercase();
    let (name, fgroup) = match f.split_once('.') {
        Some((n, g)) => (n.to_string(), Some(g.to_string())),
        None => (f.clone(), None),
    };
    if let Some(fg) = &fgroup
        && fg != group
        && !(fg == CORE_GROUP_DIR && group.is_empty())
    {
        return false;
    }
    name == resource || kind.is_some_and(|k| k.eq_ignore_ascii_case(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for p in [
            ObjectPath::new(Some("prod"), "apps", "deployments", "web"),
            ObjectPath::new(None, "", "namespaces", "prod"),
            ObjectPath::new(None, "apiextensions.k8s.io", "customresourcedefinitions", "a.b.c"),
            ObjectPath::new(Some("x"), "", "configmaps", "kube-root-ca.crt"),
        ] {
            assert_eq!(ObjectPath::parse(&p.path()), Some(p.clone()), "{}", p.path());
        }
        assert_eq!(
            ObjectPath::new(Some("prod"), "", "secrets", "s").path(),
            "namespaces/prod/core/secrets/s.yaml"
        );
        assert_eq!(ObjectPath::parse(VERSION_FILE), None);
        assert_eq!(ObjectPath::parse("namespaces/prod/apps/deployments"), None);
        assert_eq!(ObjectPath::parse("other/x/y/z.yaml"), None);
    }

    #[test]
    fn resource_filters_take_kubectl_spellings() {
        assert!(resource_matches("deployments.apps", "apps", "deployments", None));
        assert!(resource_matches("deployments", "apps", "deployments", None));
        assert!(resource_matches("Deployment", "apps", "deployments", Some("Deployment")));
        assert!(!resource_matches("deployments.extensions", "apps", "deployments", None));
        assert!(resource_matches("configmaps", "", "configmaps", None));
        assert!(resource_matches("configmaps.core", "", "configmaps", None));
        assert!(!resource_matches("secrets", "", "configmaps", Some("ConfigMap")));
        assert!(resource_matches(
            "certificates.cert-manager.io",
            "cert-manager.io",
            "certificates",
            None
        ));
    }

    #[test]
    fn collection_urls() {
        let r = Resource {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            namespaced: true,
            verbs: vec![],
        };
        assert_eq!(r.collection_url(Some("p")), "/apis/apps/v1/namespaces/p/deployments");
        assert_eq!(r.collection_url(None), "/apis/apps/v1/deployments");
        assert_eq!(r.name(), "deployments.apps");
    }
}
