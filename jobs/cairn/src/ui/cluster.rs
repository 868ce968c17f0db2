//! "At this time" views of a manifest snapshot: which stored resource each view reads, and
//! the row it shows per object (from the object's spec and its recorded status).

use serde_json::{Value, json};

/// One table of the cluster view.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub name: &'static str,
    /// Directory names in the snapshot (§10.1): group (`core` for ""), plural resource.
    pub group_dir: &'static str,
    pub resource: &'static str,
    pub namespaced: bool,
    row: fn(&Value) -> Value,
}

pub const VIEWS: &[View] = &[
    View { name: "nodes", group_dir: "core", resource: "nodes", namespaced: false, row: node },
    View {
        name: "deployments",
        group_dir: "apps",
        resource: "deployments",
        namespaced: true,
        row: deployment,
    },
    View {
        name: "statefulsets",
        group_dir: "apps",
        resource: "statefulsets",
        namespaced: true,
        row: statefulset,
    },
    View {
        name: "daemonsets",
        group_dir: "apps",
        resource: "daemonsets",
        namespaced: true,
        row: daemonset,
    },
    View { name: "pods", group_dir: "core", resource: "pods", namespaced: true, row: pod },
    View {
        name: "pvcs",
        group_dir: "core",
        resource: "persistentvolumeclaims",
        namespaced: true,
        row: pvc,
    },
];

impl View {
    pub fn find(name: &str) -> Option<&'static View> {
        VIEWS.iter().find(|v| v.name == name)
    }

    /// The row for one object: view-specific fields plus `health` (`ok`, `warn`, `bad`).
    pub fn row(&self, obj: &Value) -> Value {
        (self.row)(obj)
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn conditions(v: &Value) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
    v.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().filter_map(
        |c| {
            Some((
                c.get("type")?.as_str()?,
                c.get("status")?.as_str()?,
                c.get("reason").and_then(Value::as_str),
            ))
        },
    )
}

fn images(v: &Value, containers: &str) -> Vec<String> {
    v.pointer(containers)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn node(v: &Value) -> Value {
    let ready = conditions(v).find(|(t, ..)| *t == "Ready").map(|(_, s, _)| s.to_string());
    // Pressure and unavailability conditions are bad news when True.
    let problems: Vec<String> = conditions(v)
        .filter(|(t, s, _)| *t != "Ready" && *s == "True")
        .map(|(t, ..)| t.to_string())
        .collect();
    let roles: Vec<String> = v
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string))
        .collect();
    let unschedulable = v.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
    let health = match ready.as_deref() {
        Some("True") if problems.is_empty() && !unschedulable => "ok",
        Some("True") => "warn",
        _ => "bad",
    };
    json!({
        "ready": ready.unwrap_or_else(|| "Unknown".into()),
        "problems": problems,
        "roles": roles,
        "unschedulable": unschedulable,
        "cpu": str_at(v, "/status/capacity/cpu"),
        "memory": str_at(v, "/status/capacity/memory"),
        "pods": str_at(v, "/status/capacity/pods"),
        "allocatableCpu": str_at(v, "/status/allocatable/cpu"),
        "allocatableMemory": str_at(v, "/status/allocatable/memory"),
        "kubelet": str_at(v, "/status/nodeInfo/kubeletVersion"),
        "health": health,
    })
}

fn replicas_health(desired: i64, ready: i64) -> &'static str {
    if ready >= desired {
        "ok"
    } else if ready > 0 {
        "warn"
    } else {
        "bad"
    }
}

fn deployment(v: &Value) -> Value {
    let desired = int_at(v, "/spec/replicas").unwrap_or(1);
    let ready = int_at(v, "/status/readyReplicas").unwrap_or(0);
    let paused = v.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    json!({
        "desired": desired,
        "ready": ready,
        "updated": int_at(v, "/status/updatedReplicas").unwrap_or(0),
        "available": int_at(v, "/status/availableReplicas").unwrap_or(0),
        "paused": paused,
        "images": images(v, "/spec/template/spec/containers"),
        "conditions": conditions(v).map(|(t, s, r)| json!({"type": t, "status": s, "reason": r})).collect::<Vec<_>>(),
        "health": replicas_health(desired, ready),
    })
}

fn statefulset(v: &Value) -> Value {
    let desired = int_at(v, "/spec/replicas").unwrap_or(1);
    let ready = int_at(v, "/status/readyReplicas").unwrap_or(0);
    json!({
        "desired": desired,
        "ready": ready,
        "current": int_at(v, "/status/currentReplicas").unwrap_or(0),
        "updated": int_at(v, "/status/updatedReplicas").unwrap_or(0),
        "images": images(v, "/spec/template/spec/containers"),
        "health": replicas_health(desired, ready),
    })
}

fn daemonset(v: &Value) -> Value {
    let desired = int_at(v, "/status/desiredNumberScheduled").unwrap_or(0);
    let ready = int_at(v, "/status/numberReady").unwrap_or(0);
    json!({
        "desired": desired,
        "ready": ready,
        "available": int_at(v, "/status/numberAvailable").unwrap_or(0),
        "misscheduled": int_at(v, "/status/numberMisscheduled").unwrap_or(0),
        "images": images(v, "/spec/template/spec/containers"),
        "health": replicas_health(desired, ready),
    })
}

fn pod(v: &Value) -> Value {
    let statuses: Vec<&Value> = v
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let containers =
        v.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len) as i64;
    let ready = statuses.iter().filter(|s| s.get("ready") == Some(&Value::Bool(true))).count();
    let restarts: i64 =
        statuses.iter().filter_map(|s| s.get("restartCount").and_then(Value::as_i64)).sum();
    // The reason a container is not running says more than the phase (CrashLoopBackOff...).
    let waiting = statuses
        .iter()
        .filter_map(|s| s.pointer("/state/waiting/reason").and_then(Value::as_str))
        .next()
        .map(str::to_string);
    let phase = str_at(v, "/status/phase").unwrap_or("Unknown");
    let health = match phase {
        "Succeeded" => "ok",
        "Running" if ready as i64 == containers && waiting.is_none() => "ok",
        "Running" | "Pending" => "warn",
        _ => "bad",
    };
    json!({
        "phase": phase,
        "reason": waiting.or_else(|| str_at(v, "/status/reason").map(str::to_string)),
        "ready": format!("{ready}/{containers}"),
        "restarts": restarts,
        "node": str_at(v, "/spec/nodeName"),
        "ip": str_at(v, "/status/podIP"),
        "images": images(v, "/spec/containers"),
        "health": if waiting_is_bad(v) { "bad" } else { health },
    })
}

fn waiting_is_bad(v: &Value) -> bool {
    v.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten().any(
        |s| {
            matches!(
                s.pointer("/state/waiting/reason").and_then(Value::as_str),
                Some(
                    "CrashLoopBackOff"
                        | "ImagePullBackOff"
                        | "ErrImagePull"
                        | "CreateContainerError"
                )
            )
        },
    )
}

fn pvc(v: &Value) -> Value {
    let phase = str_at(v, "/status/phase").unwrap_or("Unknown");
    json!({
        "phase": phase,
        "capacity": str_at(v, "/status/capacity/storage"),
        "requested": str_at(v, "/spec/resources/requests/storage"),
        "storageClass": str_at(v, "/spec/storageClassName"),
        "volume": str_at(v, "/spec/volumeName"),
        "accessModes": v.pointer("/spec/accessModes").cloned().unwrap_or(Value::Null),
        "health": match phase { "Bound" => "ok", "Pending" => "warn", _ => "bad" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_show_desired_against_ready() {
        let d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": "nginx:1"}]}}},
                       "status": {"readyReplicas": 1, "updatedReplicas": 3}});
        let r = View::find("deployments").unwrap().row(&d);
        assert_eq!(r["desired"], 3);
        assert_eq!(r["ready"], 1);
        assert_eq!(r["health"], "warn");
        assert_eq!(r["images"][0], "nginx:1");
        // No replicas field means one; no status means none ready.
        let r = View::find("deployments").unwrap().row(&json!({"spec": {}}));
        assert_eq!((r["desired"].as_i64(), r["ready"].as_i64()), (Some(1), Some(0)));
        assert_eq!(r["health"], "bad");
    }

    #[test]
    fn nodes_report_readiness_pressure_and_capacity() {
        let n = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}},
            "status": {"capacity": {"cpu": "4", "memory": "16Gi"},
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "True"}]}});
        let r = View::find("nodes").unwrap().row(&n);
        assert_eq!(r["ready"], "True");
        assert_eq!(r["problems"][0], "DiskPressure");
        assert_eq!(r["roles"][0], "control-plane");
        assert_eq!(r["cpu"], "4");
        assert_eq!(r["health"], "warn");
        assert_eq!(View::find("nodes").unwrap().row(&json!({}))["health"], "bad");
    }

    #[test]
    fn pods_sum_restarts_and_surface_waiting_reasons() {
        let p = json!({"spec": {"containers": [{"image": "a"}, {"image": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2},
                {"ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = View::find("pods").unwrap().row(&p);
        assert_eq!(r["ready"], "1/2");
        assert_eq!(r["restarts"], 7);
        assert_eq!(r["reason"], "CrashLoopBackOff");
        assert_eq!(r["health"], "bad");
        assert_eq!(r["node"], "n1");
    }

    #[test]
    fn pvcs_show_phase_and_sizes() {
        let c = json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast"},
                       "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}});
        let r = View::find("pvcs").unwrap().row(&c);
        assert_eq!((r["capacity"].as_str(), r["requested"].as_str()), (Some("2Gi"), Some("1Gi")));
        assert_eq!(r["health"], "ok");
        assert!(View::find("secrets").is_none());
    }
}
