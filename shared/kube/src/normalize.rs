//! What to drop from an object: for storage (managedFields), for comparison (fields the
//! server or controllers change on their own), and for applying it again (fields the server
//! assigns, which would be refused or would bind the object to things that no longer exist).

use serde_json::{Map, Value};

use super::layout::ObjectPath;

/// Metadata the API server assigns: never applied, never compared.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// Labels a Job controller adds that name the old Job's uid.
const JOB_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];

/// PVC annotations the binder and provisioner set.
const PVC_BIND_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// Annotations controllers rewrite on their own: not differences anyone made.
const NOISE_ANNOTATIONS: &[&str] = &[
    "endpoints.kubernetes.io/last-change-trigger-time",
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Namespaces every cluster has: restoring them means nothing.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn strip_managed_fields(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.get_mut("metadata").and_then(Value::as_object_mut)
}

fn remove_empty(map: &mut Map<String, Value>, key: &str) {
    let empty = match map.get(key) {
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Null) => true,
        _ => false,
    };
    if empty {
        map.remove(key);
    }
}

fn remove_keys(map: Option<&mut Value>, keys: &[&str]) {
    if let Some(Value::Object(m)) = map {
        for k in keys {
            m.remove(*k);
        }
    }
}

/// The object as `cairn diff` compares it: no server-assigned metadata, no owner uids, no
/// status unless asked for.
pub fn for_diff(obj: &Value, with_status: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = metadata_mut(&mut o) {
        for k in SERVER_METADATA {
            m.remove(*k);
        }
        if let Some(Value::Array(owners)) = m.get_mut("ownerReferences") {
            for owner in owners {
                remove_keys(Some(owner), &["uid"]);
            }
        }
        remove_keys(m.get_mut("annotations"), NOISE_ANNOTATIONS);
        remove_keys(m.get_mut("labels"), JOB_UID_LABELS);
        remove_empty(m, "annotations");
        remove_empty(m, "labels");
    }
    // A Job's selector and template labels carry its uid.
    remove_keys(o.pointer_mut("/spec/selector/matchLabels"), JOB_UID_LABELS);
    remove_keys(o.pointer_mut("/spec/template/metadata/labels"), JOB_UID_LABELS);
    if !with_status && let Some(map) = o.as_object_mut() {
        map.remove("status");
    }
    o
}

/// Options of [`sanitize`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SanitizeOptions {
    pub restore_status: bool,
    pub keep_cluster_ips: bool,
    pub keep_node_ports: bool,
}

/// Make a stored object fit to apply to a cluster: drop what the server assigns and what
/// binds it to the old cluster. `pv_restored` says whether a PVC's bound volume is restored
/// in the same run (its `volumeName` is kept only then). Owner references are the restore
/// planner's business, not this function's.
pub fn sanitize(obj: &mut Value, path: &ObjectPath, opts: SanitizeOptions, pv_restored: bool) {
    if let Some(m) = metadata_mut(obj) {
        for k in SERVER_METADATA {
            m.remove(*k);
        }
    }
    if !opts.restore_status
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
    match (path.group.as_str(), path.resource.as_str()) {
        ("", "services") => {
            let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
            if let Some(spec) = spec {
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                if !opts.keep_cluster_ips && !headless {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                if !opts.keep_node_ports {
                    spec.remove("healthCheckNodePort");
                    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                        for p in ports {
                            remove_keys(Some(p), &["nodePort"]);
                        }
                    }
                }
            }
        }
        ("", "persistentvolumes") => {
            remove_keys(obj.pointer_mut("/spec/claimRef"), &["uid", "resourceVersion"]);
            remove_keys(
                obj.pointer_mut("/metadata/annotations"),
                &["pv.kubernetes.io/bound-by-controller"],
            );
        }
        ("", "persistentvolumeclaims") => {
            remove_keys(obj.pointer_mut("/metadata/annotations"), PVC_BIND_ANNOTATIONS);
            if !pv_restored {
                remove_keys(obj.pointer_mut("/spec"), &["volumeName"]);
            }
        }
        ("", "pods") => remove_keys(obj.pointer_mut("/spec"), &["nodeName"]),
        ("batch", "jobs") => {
            remove_keys(obj.pointer_mut("/spec"), &["selector"]);
            remove_keys(obj.pointer_mut("/spec/template/metadata/labels"), JOB_UID_LABELS);
            remove_keys(obj.pointer_mut("/metadata/labels"), JOB_UID_LABELS);
        }
        _ => {}
    }
    if let Some(m) = metadata_mut(obj) {
        remove_empty(m, "annotations");
        remove_empty(m, "labels");
    }
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations").and_then(|l| l.get(key)).and_then(Value::as_str)
}

/// Objects a restore never applies, with the reason. The cluster or a controller makes
/// these itself; applying the stored copy would fight it or mean nothing elsewhere.
/// Objects owned by a restored controller are the planner's business (see the restore).
pub fn never_restored(path: &ObjectPath, obj: &Value) -> Option<&'static str> {
    let (g, r) = (path.group.as_str(), path.resource.as_str());
    match (g, r) {
        ("", "nodes") => return Some("nodes belong to the cluster's machines"),
        ("storage.k8s.io", "csinodes") => {
            return Some("CSI nodes are registered by each node's kubelet");
        }
        ("storage.k8s.io", "volumeattachments") => {
            return Some("volume attachments are the attach controller's live state");
        }
        ("", "events") | ("events.k8s.io", "events") => return Some("events are history"),
        ("networking.k8s.io", "ipaddresses") => {
            return Some("allocated by the API server for Services");
        }
        ("networking.k8s.io", "servicecidrs") if path.name == "kubernetes" => {
            return Some("the API server's default service range");
        }
        ("coordination.k8s.io", "leases") => return Some("leases are live coordination state"),
        ("", "componentstatuses") => return Some("component statuses are computed"),
        ("certificates.k8s.io", "certificatesigningrequests") => {
            return Some("certificate requests are signed by the old cluster's CA");
        }
        ("discovery.k8s.io", "endpointslices")
            if label(obj, "endpointslice.kubernetes.io/managed-by").is_some() =>
        {
            return Some("endpoint slices are managed by a controller");
        }
        ("", "secrets")
            if obj.get("type").and_then(Value::as_str)
                == Some("kubernetes.io/service-account-token") =>
        {
            return Some("service-account tokens are minted by the new cluster");
        }
        ("", "configmaps") if path.name == "kube-root-ca.crt" => {
            return Some("published by the root CA controller");
        }
        ("", "namespaces") if SYSTEM_NAMESPACES.contains(&path.name.as_str()) => {
            return Some("every cluster has this namespace");
        }
        ("", "services")
            if label(obj, "provider") == Some("kubernetes")
                && label(obj, "component") == Some("apiserver") =>
        {
            return Some("the API server's own service");
        }
        ("apiregistration.k8s.io", "apiservices")
            if label(obj, "kube-aggregator.kubernetes.io/automanaged").is_some() =>
        {
            return Some("registered by the API server itself");
        }
        ("flowcontrol.apiserver.k8s.io", _)
            if annotation(obj, "apf.kubernetes.io/autoupdate-spec") == Some("true") =>
        {
            return Some("maintained by the API server");
        }
        _ => {}
    }
    if label(obj, "kubernetes.io/bootstrapping") == Some("rbac-defaults") {
        return Some("bootstrap RBAC the API server recreates");
    }
    None
}

/// The controller owning an object: (apiVersion, kind, name, uid).
pub fn controller_of(obj: &Value) -> Option<(String, String, String, String)> {
    let owners = obj.pointer("/metadata/ownerReferences")?.as_array()?;
    owners.iter().find(|o| o.get("controller").and_then(Value::as_bool) == Some(true)).map(|o| {
        let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        (s("apiVersion"), s("kind"), s("name"), s("uid"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(ns: Option<&str>, g: &str, r: &str, n: &str) -> ObjectPath {
        ObjectPath::new(ns, g, r, n)
    }

    #[test]
    fn services_lose_allocated_addresses_but_headless_stays_headless() {
        let mut svc = json!({"apiVersion":"v1","kind":"Service",
            "metadata":{"name":"web","namespace":"p","uid":"u","resourceVersion":"9","creationTimestamp":"t"},
            "spec":{"clusterIP":"10.0.0.7","clusterIPs":["10.0.0.7"],"type":"NodePort",
                    "ports":[{"port":80,"nodePort":30080}]},
            "status":{"loadBalancer":{}}});
        sanitize(
            &mut svc,
            &path(Some("p"), "", "services", "web"),
            SanitizeOptions::default(),
            false,
        );
        assert_eq!(
            svc,
            json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"p"},
                   "spec":{"type":"NodePort","ports":[{"port":80}]}})
        );
        let mut headless =
            json!({"metadata":{"name":"db"},"spec":{"clusterIP":"None","clusterIPs":["None"]}});
        sanitize(
            &mut headless,
            &path(Some("p"), "", "services", "db"),
            SanitizeOptions::default(),
            false,
        );
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut kept = json!({"metadata":{"name":"w"},"spec":{"clusterIP":"10.0.0.9","ports":[{"nodePort":30001}]}});
        let opts =
            SanitizeOptions { keep_cluster_ips: true, keep_node_ports: true, ..Default::default() };
        sanitize(&mut kept, &path(Some("p"), "", "services", "w"), opts, false);
        assert_eq!(kept["spec"]["clusterIP"], "10.0.0.9");
        assert_eq!(kept["spec"]["ports"][0]["nodePort"], 30001);
    }

    #[test]
    fn claims_jobs_and_pods_forget_their_old_cluster() {
        let mut pvc = json!({"metadata":{"name":"data","annotations":{
                "pv.kubernetes.io/bind-completed":"yes","volume.kubernetes.io/selected-node":"n1","keep":"me"}},
            "spec":{"volumeName":"pvc-123","storageClassName":"standard"}});
        sanitize(
            &mut pvc,
            &path(Some("p"), "", "persistentvolumeclaims", "data"),
            SanitizeOptions::default(),
            false,
        );
        assert_eq!(pvc["metadata"]["annotations"], json!({"keep":"me"}));
        assert!(pvc["spec"].get("volumeName").is_none());
        let mut pvc2 = json!({"metadata":{"name":"d"},"spec":{"volumeName":"pv1"}});
        sanitize(
            &mut pvc2,
            &path(Some("p"), "", "persistentvolumeclaims", "d"),
            SanitizeOptions::default(),
            true,
        );
        assert_eq!(pvc2["spec"]["volumeName"], "pv1");

        let mut job = json!({"metadata":{"name":"j","labels":{"controller-uid":"x","app":"a"}},
            "spec":{"selector":{"matchLabels":{"controller-uid":"x"}},
                    "template":{"metadata":{"labels":{"batch.kubernetes.io/controller-uid":"x","job-name":"j"}}}}});
        sanitize(
            &mut job,
            &path(Some("p"), "batch", "jobs", "j"),
            SanitizeOptions::default(),
            false,
        );
        assert!(job["spec"].get("selector").is_none());
        assert_eq!(job["spec"]["template"]["metadata"]["labels"], json!({"job-name":"j"}));
        assert_eq!(job["metadata"]["labels"], json!({"app":"a"}));

        let mut pod = json!({"metadata":{"name":"p"},"spec":{"nodeName":"n1","containers":[]}});
        sanitize(&mut pod, &path(Some("p"), "", "pods", "p"), SanitizeOptions::default(), false);
        assert!(pod["spec"].get("nodeName").is_none());
    }

    #[test]
    fn diff_view_ignores_server_noise_and_status() {
        let a = json!({"metadata":{"name":"x","resourceVersion":"1","uid":"a","generation":1,
                "ownerReferences":[{"kind":"Deployment","name":"w","uid":"u1"}]},
            "spec":{"replicas":2},"status":{"readyReplicas":2}});
        let b = json!({"metadata":{"name":"x","resourceVersion":"7","uid":"b","generation":3,"annotations":{},
                "ownerReferences":[{"kind":"Deployment","name":"w","uid":"u2"}]},
            "spec":{"replicas":2},"status":{"readyReplicas":0}});
        assert_eq!(for_diff(&a, false), for_diff(&b, false));
        assert_ne!(for_diff(&a, true), for_diff(&b, true));
    }

    #[test]
    fn cluster_owned_objects_are_never_restored() {
        let token = json!({"type":"kubernetes.io/service-account-token"});
        assert!(never_restored(&path(Some("p"), "", "secrets", "t"), &token).is_some());
        assert!(
            never_restored(&path(Some("p"), "", "secrets", "t"), &json!({"type":"Opaque"}))
                .is_none()
        );
        assert!(never_restored(&path(None, "", "namespaces", "kube-system"), &json!({})).is_some());
        assert!(never_restored(&path(None, "", "namespaces", "prod"), &json!({})).is_none());
        let role = json!({"metadata":{"labels":{"kubernetes.io/bootstrapping":"rbac-defaults"}}});
        assert!(
            never_restored(
                &path(None, "rbac.authorization.k8s.io", "clusterroles", "admin"),
                &role
            )
            .is_some()
        );
        assert!(
            never_restored(&path(Some("p"), "coordination.k8s.io", "leases", "l"), &json!({}))
                .is_some()
        );
        // Node-level state a real node registers (found restoring a real node's cluster).
        for r in ["csinodes", "volumeattachments"] {
            assert!(never_restored(&path(None, "storage.k8s.io", r, "n"), &json!({})).is_some());
        }
    }

    #[test]
    fn controller_reference() {
        let o = json!({"metadata":{"ownerReferences":[
            {"apiVersion":"v1","kind":"X","name":"a","uid":"1"},
            {"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"2","controller":true}]}});
        assert_eq!(
            controller_of(&o),
            Some(("apps/v1".into(), "ReplicaSet".into(), "web-1".into(), "2".into()))
        );
        assert_eq!(controller_of(&json!({"metadata":{}})), None);
    }
}
