//! The Helm chart (`k8s-manifests/helm/cairn`, #20): `helm lint --strict`; `helm template`
//! against `kubectl kustomize` of the base and of each overlay with the equivalent values
//! (object for object, field for field, less the labels of the chart's `cairn.helmLabels`);
//! values.schema.json refusing bad values with the field's name; the optional objects
//! (PrometheusRule, ServiceMonitor, UI, restore RBAC, OTLP settings); no `cluster-admin`
//! anywhere; and `helm install` into the test world with a CronJob triggered to success.
//!
//! All but the install need only the helm and kubectl binaries, not the world: without
//! `CAIRN_TEST_BIN` they are taken from the build cache of `tests/env/build.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::manifests::{create_secret, kubectl};
use cairn_tests::prometheus::{one, wait_for};
use cairn_tests::{env, repos, unique};
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests").canonicalize().unwrap()
}

fn chart() -> PathBuf {
    manifests_dir().join("helm/cairn")
}

/// `k8s-manifests/helm/values-<name>.yaml`: the values equivalent to overlay `<name>`.
fn overlay_values(name: &str) -> PathBuf {
    manifests_dir().join(format!("helm/values-{name}.yaml"))
}

/// A version from `tests/env/versions.sh` (`HELM_VERSION`, `K8S_VERSION`).
fn pinned_version(var: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("env/versions.sh");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("{var} is not in {}", path.display()))
        .trim()
        .to_string()
}

/// `helm` or `kubectl`: the world's (`CAIRN_TEST_BIN`) when it has it, else the one
/// `tests/env/build.sh` built into its cache, so that rendering tests run without the world.
fn tool(name: &str) -> PathBuf {
    if std::env::var("CAIRN_TEST_BIN").is_ok_and(|d| !d.is_empty()) {
        let linked = cairn_tests::bin(name);
        if linked.exists() {
            return linked;
        }
    }
    let cache = std::env::var("CAIRN_TESTENV_CACHE")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env("HOME")).join(".cache/cairn-testenv"));
    let (dir, component) = match name {
        "helm" => (format!("helm-{}", pinned_version("HELM_VERSION")), "helm"),
        "kubectl" => (format!("kubernetes-{}", pinned_version("K8S_VERSION")), "kube"),
        other => panic!("no cache location for {other}"),
    };
    let path = cache.join(dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `tests/env/build.sh {component}` (or start the test world)",
        path.display()
    );
    path
}

fn run(tool_name: &str, args: &[&str]) -> Output {
    Command::new(tool(tool_name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {tool_name}: {e}"))
}

fn helm(args: &[&str]) -> Output {
    run("helm", args)
}

fn stdout_of(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template <release> <chart> --namespace <ns>` plus `extra` (values files, `--set`,
/// `--api-versions`); panics with helm's output when it fails.
fn template(release: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", ns];
    args.extend_from_slice(extra);
    parse_docs(&stdout_of(&format!("helm {args:?}"), helm(&args)))
}

/// `kubectl kustomize <dir>`.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = run("kubectl", &["kustomize", dir.to_str().unwrap()]);
    parse_docs(&stdout_of(&format!("kubectl kustomize {}", dir.display()), out))
}

/// A YAML stream (`---` between documents, comments, empty documents) as JSON values.
fn parse_docs(text: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .map(|d| cairn_kube::from_yaml(d.as_bytes(), "rendered manifest").unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn key(obj: &Value) -> String {
    let meta = &obj["metadata"];
    format!(
        "{}/{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or("?")
    )
}

/// The objects by `kind/namespace/name`, each key once.
fn by_key(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for obj in objs {
        let k = key(&obj);
        assert!(map.insert(k.clone(), obj).is_none(), "{k} is rendered twice");
    }
    map
}

/// The label keys of the chart's `cairn.helmLabels` helper: the only labels the chart adds to
/// the base's objects. Each must be one of Helm's standard labels.
fn helm_label_keys() -> Vec<String> {
    let helpers = std::fs::read_to_string(chart().join("templates/_helpers.tpl")).unwrap();
    let start = helpers.find(r#"define "cairn.helmLabels""#).expect("the cairn.helmLabels helper");
    let body = &helpers[start..];
    let body = &body[body.find('\n').unwrap() + 1..body.find("{{- end").unwrap()];
    let keys: Vec<String> = body
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect();
    let standard = [
        "helm.sh/chart",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/part-of",
    ];
    assert!(!keys.is_empty(), "cairn.helmLabels has no labels");
    for k in &keys {
        assert!(standard.contains(&k.as_str()), "cairn.helmLabels adds {k}, not a Helm label");
    }
    keys
}

/// Remove the chart's own labels from every `metadata.labels` (objects and pod templates).
fn strip_labels(v: &mut Value, keys: &[String]) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(labels)) =
                map.get_mut("metadata").and_then(|m| m.get_mut("labels"))
            {
                for k in keys {
                    labels.remove(k);
                }
                if labels.is_empty()
                    && let Some(Value::Object(meta)) = map.get_mut("metadata")
                {
                    meta.remove("labels");
                }
            }
            for child in map.values_mut() {
                strip_labels(child, keys);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| strip_labels(i, keys)),
        _ => {}
    }
}

/// The first place where `a` and `b` differ: (path, a's value there, b's value there).
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<(String, Value, Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(w)) => first_difference(u, w, &p),
                    (u, w) => Some((
                        p,
                        u.cloned().unwrap_or(Value::Null),
                        w.cloned().unwrap_or(Value::Null),
                    )),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, w))| first_difference(u, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some((path.to_string(), a.clone(), b.clone())),
    }
}

/// The kustomize objects (less the Namespace, which Helm users create with
/// `--create-namespace`) and the chart's (less its own labels) are the same set of objects,
/// each equal field for field.
fn assert_same_objects(what: &str, kustomize: Vec<Value>, chart: Vec<Value>) {
    let labels = helm_label_keys();
    let expected = by_key(kustomize.into_iter().filter(|o| o["kind"] != "Namespace").collect());
    let mut rendered = by_key(chart);
    for (k, obj) in &mut rendered {
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{what}: {k} lacks the chart's labels"
        );
        strip_labels(obj, &labels);
    }
    let only_kustomize: Vec<&String> =
        expected.keys().filter(|k| !rendered.contains_key(*k)).collect();
    let only_chart: Vec<&String> = rendered.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        only_kustomize.is_empty() && only_chart.is_empty(),
        "{what}: objects only kustomize renders: {only_kustomize:?}; only the chart: {only_chart:?}"
    );
    for (k, want) in &expected {
        let got = &rendered[k];
        if let Some((path, w, g)) = first_difference(want, got, "") {
            panic!(
                "{what}: {k} differs at {path}:\n  kustomize: {w}\n  chart:     {g}\n\
                 kustomize's object: {want:#}\nthe chart's object: {got:#}"
            );
        }
    }
    assert!(expected.len() >= 14, "{what}: {} objects", expected.len());
}

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_every_overlays_values() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    stdout_of("helm lint --strict", helm(&["lint", "--strict", chart]));
    for overlay in ["local-test", "aws", "gcp", "generic-s3"] {
        let values = overlay_values(overlay);
        let args = ["lint", "--strict", chart, "-f", values.to_str().unwrap()];
        let out = stdout_of(&format!("helm {args:?}"), helm(&args));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn the_defaults_render_the_kustomize_base() {
    let chart = template("cairn", "cairn", &[]);
    assert_same_objects("defaults vs base", kustomize(&manifests_dir().join("base")), chart);
}

#[test]
fn each_overlays_values_render_that_overlay() {
    for overlay in ["local-test", "aws", "gcp", "generic-s3"] {
        let values = overlay_values(overlay);
        let chart = template("cairn", "cairn", &["-f", values.to_str().unwrap()]);
        let dir = manifests_dir().join("overlays").join(overlay);
        assert_same_objects(
            &format!("values-{overlay}.yaml vs overlays/{overlay}"),
            kustomize(&dir),
            chart,
        );
    }
}

/// Another release name: every cluster-scoped name carries it, and every binding binds the
/// release's own ServiceAccount in the release namespace to the release's own role.
#[test]
fn cluster_scoped_names_are_unique_per_release_and_bound_to_its_service_accounts() {
    let objs = by_key(template("nightly", "backups", &["--set", "restore.rbac.enabled=true"]));
    let roles: Vec<&Value> = objs.values().filter(|o| o["kind"] == "ClusterRole").collect();
    let bindings: Vec<&Value> =
        objs.values().filter(|o| o["kind"] == "ClusterRoleBinding").collect();
    assert_eq!((roles.len(), bindings.len()), (4, 4), "{:?}", objs.keys().collect::<Vec<_>>());
    for o in roles.iter().chain(&bindings) {
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("cairn-") && name.ends_with("-nightly"), "{name}");
        assert!(o["metadata"].get("namespace").is_none(), "{name} is cluster-scoped");
    }
    for b in bindings {
        let role = b["roleRef"]["name"].as_str().unwrap();
        assert!(objs.contains_key(&format!("ClusterRole//{role}")), "{role} is not rendered");
        for s in b["subjects"].as_array().unwrap() {
            assert_eq!(s["namespace"], "backups", "{b:#}");
            let sa = format!("ServiceAccount/backups/{}", s["name"].as_str().unwrap());
            assert!(objs.contains_key(&sa), "{sa} is not rendered");
        }
    }
    for (k, o) in &objs {
        if o["kind"] != "ClusterRole" && o["kind"] != "ClusterRoleBinding" {
            assert_eq!(o["metadata"]["namespace"], "backups", "{k}");
        }
    }
}

/// `helm template` with `values` (YAML) fails, naming `field` on stderr.
fn assert_refused(values: &str, field: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let chart = chart();
    let out = helm(&["template", "cairn", chart.to_str().unwrap(), "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{values}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("values don't meet the specifications of the schema"), "{stderr}");
    assert!(stderr.contains(field), "the error names {field}:\n{stderr}");
}

#[test]
fn the_schema_refuses_bad_values_naming_the_field() {
    // A misspelt key, at the top and inside a job.
    assert_refused("etcdSnapshott:\n  enabled: false\n", "etcdSnapshott");
    assert_refused("maintain:\n  shedule: \"0 4 * * *\"\n", "shedule");
    // Schedules: not five fields, not a macro.
    assert_refused("maintain:\n  schedule: every night\n", "/maintain/schedule");
    assert_refused("etcdSnapshot:\n  schedule: \"0 * * *\"\n", "/etcdSnapshot/schedule");
    assert_refused("pvcIngest:\n  schedule: \"@fortnightly\"\n", "/pvcIngest/schedule");
    // Resources: a string for the object, a quantity that is none.
    assert_refused("manifestExport:\n  resources: big\n", "/manifestExport/resources");
    assert_refused(
        "pvcIngest:\n  resources:\n    requests: {cpu: lots}\n",
        "/pvcIngest/resources/requests/cpu",
    );
    // Durations and the OTLP protocol.
    assert_refused("repository:\n  lockWait: 10 minutes\n", "/repository/lockWait");
    assert_refused("telemetry:\n  otlp:\n    protocol: http\n", "/telemetry/otlp/protocol");
    // And a good value of each kind passes.
    let ok = "maintain:\n  schedule: \"@daily\"\nrepository:\n  lockWait: 1h30m\ntelemetry:\n  \
              otlp: {endpoint: \"http://collector:4317\", protocol: grpc}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, ok).unwrap();
    let objs = template("cairn", "cairn", &["-f", file.to_str().unwrap()]);
    let maintain =
        objs.iter().find(|o| o["metadata"]["name"] == "cairn-maintain" && o["kind"] == "CronJob");
    assert_eq!(maintain.unwrap()["spec"]["schedule"], "@daily");
}

fn container_env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
}

fn assert_no_cluster_admin(what: &str, objs: &[Value]) {
    for o in objs {
        assert!(
            !o.to_string().contains("cluster-admin"),
            "{what}: {} mentions cluster-admin",
            key(o)
        );
    }
}

#[test]
fn every_switch_on_renders_the_optional_objects_and_nothing_binds_cluster_admin() {
    let all_on = [
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true",
        "--set",
        "ui.enabled=true,restore.rbac.enabled=true",
        "--set",
        "telemetry.otlp.endpoint=http://otel-collector.monitoring:4318",
        "--set",
        "metrics.prometheusRule.labels.release=prometheus",
    ];
    let objs = template("cairn", "cairn", &all_on);
    let map = by_key(objs.clone());
    let get = |k: &str| map.get(k).unwrap_or_else(|| panic!("{k} in {:?}", map.keys()));

    // The PrometheusRule carries the rules file's groups, with the selecting label.
    let rule = get("PrometheusRule/cairn/cairn");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let file = std::fs::read_to_string(manifests_dir().join("monitoring/cairn.rules.yaml"))
        .or_else(|_| std::fs::read_to_string(chart().join("files/cairn.rules.yaml")))
        .unwrap();
    let file = cairn_kube::from_yaml(file.as_bytes(), "cairn.rules.yaml").unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"], "the rules file's groups");
    assert!(!rule["spec"]["groups"].as_array().unwrap().is_empty());

    // The UI with its metrics port, the Service selecting its pod, the ServiceMonitor on it.
    let ui = get("Deployment/cairn/cairn-ui");
    let pod = &ui["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container_env(container, "CAIRN_METRICS_LISTEN").as_deref(), Some("0.0.0.0:9464"));
    let ports = container["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 9464),
        "{ports:?}"
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let service = get("Service/cairn/cairn-ui-metrics");
    for (label, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][label], value, "the Service selects the UI pod");
    }
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    let monitor = get("ServiceMonitor/cairn/cairn-ui");
    for (label, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][label], value, "the monitor selects the Service");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // The restore RBAC, as k8s-manifests/restore/rbac.yaml has it, in the release namespace.
    let restore = kustomize(&manifests_dir().join("restore"));
    let labels = helm_label_keys();
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        let want = restore.iter().find(|o| o["kind"] == kind).unwrap();
        let ns = if kind == "ServiceAccount" { "cairn" } else { "" };
        let mut got = get(&format!("{kind}/{ns}/cairn-restore")).clone();
        strip_labels(&mut got, &labels);
        let mut want = want.clone();
        if kind == "ServiceAccount" {
            want["metadata"]["namespace"] = "cairn".into();
        }
        if kind == "ClusterRoleBinding" {
            want["subjects"][0]["namespace"] = "cairn".into();
        }
        assert_eq!(first_difference(&want, &got, ""), None, "{kind} cairn-restore");
    }

    // The OTLP settings on every CronJob's container.
    let cronjobs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "CronJob").collect();
    assert_eq!(cronjobs.len(), 4);
    for cj in &cronjobs {
        for c in
            cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"].as_array().unwrap()
        {
            assert_eq!(
                container_env(c, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
                Some("http://otel-collector.monitoring:4318"),
                "{}",
                key(cj)
            );
            assert_eq!(
                container_env(c, "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
                Some("http/protobuf")
            );
        }
    }
    // Off by default.
    let defaults = template("cairn", "cairn", &[]);
    for o in &defaults {
        assert!(!o.to_string().contains("OTEL_"), "{}", key(o));
        let kind = o["kind"].as_str().unwrap();
        assert!(
            !["PrometheusRule", "ServiceMonitor", "Deployment", "Service"].contains(&kind),
            "{kind} is rendered by default"
        );
    }
    assert!(!defaults.iter().any(|o| o["metadata"]["name"] == "cairn-restore"));

    // No cluster-admin, whatever is switched on.
    assert_no_cluster_admin("all switches on", &objs);
    assert_no_cluster_admin("defaults", &defaults);
    for overlay in ["local-test", "aws", "gcp", "generic-s3"] {
        let values = overlay_values(overlay);
        assert_no_cluster_admin(
            overlay,
            &template("cairn", "cairn", &["-f", values.to_str().unwrap()]),
        );
    }

    // Without the Prometheus Operator's API, the monitoring objects fail with directions
    // instead of being dropped silently; a ServiceMonitor without the UI has nothing to scrape.
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (api, set, says) in [
        ("v1", "metrics.prometheusRule.enabled=true", "monitoring.coreos.com/v1"),
        ("v1", "ui.enabled=true,metrics.serviceMonitor.enabled=true", "monitoring.coreos.com/v1"),
        ("monitoring.coreos.com/v1", "metrics.serviceMonitor.enabled=true", "needs ui.enabled"),
    ] {
        let out = helm(&["template", "cairn", chart, "--api-versions", api, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{set}: {stderr}");
    }
}

/// The Helm release of the install test, uninstalled (and its namespace deleted) when dropped,
/// failed test or not.
struct Release {
    name: String,
    ns: String,
    kubeconfig: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(tool("helm"))
            .args(["uninstall", &self.name, "--namespace", &self.ns, "--wait", "--timeout", "120s"])
            .args(["--kubeconfig", &self.kubeconfig])
            .output();
        let _ = Command::new(tool("kubectl"))
            .args(["--kubeconfig", &self.kubeconfig, "delete", "namespace", &self.ns])
            .args(["--ignore-not-found", "--wait=false"])
            .output();
    }
}

/// Wait until Job `job` has the condition `Complete` or `Failed`; which one, with the pods'
/// logs printed when it failed (as tests/tests/node_cronjobs.rs waits).
async fn wait_job(kc: &str, ns: &str, job: &str, timeout: Duration) -> (String, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = kubectl(kc, &["get", "job", job, "-n", ns, "-o", "json"], None);
        let obj: Value = serde_json::from_str(&text).unwrap();
        let ended =
            obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            });
        if let Some(c) = ended {
            let kind = c["type"].as_str().unwrap().to_string();
            if kind != "Complete" {
                eprintln!("Job {job} failed: {c:#}\n{}", job_logs(kc, ns, job));
            }
            return (kind, obj);
        }
        assert!(
            Instant::now() < deadline,
            "Job {job} did not end within {timeout:?}:\n{}",
            job_logs(kc, ns, job)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn job_logs(kc: &str, ns: &str, job: &str) -> String {
    let out = Command::new(tool("kubectl"))
        .args(["--kubeconfig", kc, "logs", "-n", ns, "--all-containers", "--prefix"])
        .arg(format!("--selector=job-name={job}"))
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The chart installed as a user installs it (`helm install --create-namespace` with the
/// local-test values, pointed at a fresh repository, the Secrets created as an operator
/// creates them), a Job made from its manifest-export CronJob, run by the world's node to
/// success; the repository then holds its snapshot. `helm uninstall` removes the
/// release-suffixed cluster-scoped objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_manifest_export_cronjob_on_the_node() {
    let kc = env("KUBECONFIG");
    let ns = unique("helmns");
    let mut name = unique("helm");
    name.truncate(53);
    let name = name.trim_end_matches('-').to_string();
    let url = format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("helmrepo"));
    let repo = repos::init(&url).await;

    let release = Release { name: name.clone(), ns: ns.clone(), kubeconfig: kc.clone() };
    let chart = chart();
    let values = overlay_values("local-test");
    // The jobs push their telemetry to the world's collector, which pods reach on the
    // node's address; it passes the metrics on to Prometheus.
    let cluster = unique("helm-test");
    let set = format!(
        "repository.url={url},repository.cluster={cluster},etcdSnapshot.suspend=true,\
         manifestExport.suspend=true,pvcIngest.suspend=true,maintain.suspend=true,\
         telemetry.otlp.endpoint={}",
        env("CAIRN_TEST_OTLP_HTTP")
    );
    let install = [
        "install",
        &name,
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
        "--create-namespace",
        "-f",
        values.to_str().unwrap(),
        "--set",
        &set,
        "--kubeconfig",
        &kc,
        "--wait",
        "--timeout",
        "120s",
    ];
    let out = stdout_of(&format!("helm {install:?}"), helm(&install));
    assert!(out.contains("STATUS: deployed"), "{out}");

    create_secret(&ns, "cairn-write-key", &[("write-key", repo.write_key.to_text())]);
    let credentials = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].map(|v| (v, env(v)));
    create_secret(&ns, "cairn-s3-credentials", &credentials);

    // The release's objects, with the release-suffixed cluster-scoped names.
    let cronjobs = kubectl(&kc, &["get", "cronjobs", "-n", &ns, "-o", "name"], None);
    assert_eq!(cronjobs.lines().count(), 4, "{cronjobs}");
    let role = format!("clusterrolebinding/cairn-manifest-export-{name}");
    kubectl(&kc, &["get", &role], None);

    let job = "manifest-export-now";
    kubectl(&kc, &["create", "job", job, "--from=cronjob/cairn-manifest-export", "-n", &ns], None);
    let (end, obj) = wait_job(&kc, &ns, job, Duration::from_secs(300)).await;
    assert_eq!(end, "Complete", "{obj:#}");

    let full = repo.open_full().await;
    let snaps = full.snapshots().await.unwrap();
    let sources: Vec<&str> = snaps.iter().map(|e| e.snapshot.source.as_str()).collect();
    eprintln!("[helm] snapshots written by the release's CronJob: {sources:?}");
    assert!(sources.iter().any(|s| s.starts_with("manifests")), "{sources:?}");
    assert!(snaps.iter().all(|e| e.snapshot.cluster.as_deref() == Some(cluster.as_str())));
    // The CronJob's run is in Prometheus: its outcome and what it read.
    let sel = format!("job=\"cairn-manifest-export\",cairn_cluster=\"{cluster}\"");
    let runs = wait_for(&format!("cairn_runs_total{{{sel}}}"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0["cairn_outcome"], "success");
    assert!(one(&format!("cairn_backup_files_total{{{sel}}}")) > 0.0);

    let uninstall = ["uninstall", &name, "--namespace", &ns, "--kubeconfig", &kc, "--wait"];
    stdout_of(&format!("helm {uninstall:?}"), helm(&uninstall));
    let left = kubectl(&kc, &["get", "clusterroles,clusterrolebindings", "-o", "name"], None);
    assert!(!left.lines().any(|l| l.ends_with(&format!("-{name}"))), "left behind:\n{left}");
    drop(release);
}

/// `pvcIngest.hooks` and `.dumps`: each off sets its CAIRN_NO_* variable; both off also
/// drop `pods/exec` from the orchestrator's role (nothing is granted that is not used).
#[test]
fn hooks_and_dumps_off_drop_the_exec_right() {
    let exec_rule = |objs: &BTreeMap<String, Value>| {
        objs["ClusterRole//cairn-pvc-ingest"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"].as_array().unwrap().iter().any(|x| x == "pods/exec"))
    };
    let env_of = |objs: &BTreeMap<String, Value>, name: &str| {
        let cj = &objs["CronJob/cairn/cairn-pvc-ingest"];
        container_env(&cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0], name)
    };
    let defaults = by_key(template("cairn", "cairn", &[]));
    assert!(exec_rule(&defaults));
    assert_eq!(env_of(&defaults, "CAIRN_NO_HOOKS"), None);
    let no_hooks = by_key(template("cairn", "cairn", &["--set", "pvcIngest.hooks=false"]));
    assert!(exec_rule(&no_hooks), "dumps still need it");
    assert_eq!(env_of(&no_hooks, "CAIRN_NO_HOOKS").as_deref(), Some("true"));
    assert_eq!(env_of(&no_hooks, "CAIRN_NO_DUMPS"), None);
    let neither = by_key(template(
        "cairn",
        "cairn",
        &["--set", "pvcIngest.hooks=false,pvcIngest.dumps=false"],
    ));
    assert!(!exec_rule(&neither));
    assert_eq!(env_of(&neither, "CAIRN_NO_DUMPS").as_deref(), Some("true"));
}
