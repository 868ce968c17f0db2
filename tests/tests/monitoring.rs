//! The monitoring kit (`k8s-manifests/monitoring/`, #20): the alert rules pass `promtool
//! check rules` and their own unit tests (`promtool test rules`), the PrometheusRule and the
//! Helm chart carry exactly the same rules, and the rules and the Grafana dashboard ask only
//! for metrics the jobs push (`cairn_job::metrics::CATALOGUE`), always over a window: a job
//! pushes once, when its run ends, so a bare instant selector sees nothing 5 minutes later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests/monitoring")
}

fn read(name: &str) -> String {
    let path = monitoring_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> Value {
    cairn_kube::from_yaml(read(name).as_bytes(), name).unwrap()
}

/// Runs promtool in the monitoring directory; returns its output, failing with it.
fn promtool(args: &[&str]) -> String {
    let bin = cairn_tests::bin("promtool");
    let out = Command::new(&bin)
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    text
}

/// The rules of every group of a rules file's `groups`.
fn rules(groups: &Value) -> Vec<&Value> {
    groups
        .as_array()
        .expect("groups is a list")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules is a list"))
        .collect()
}

/// The Prometheus names of the catalogue, and the labels its attributes become.
fn catalogue() -> (BTreeSet<&'static str>, BTreeSet<String>) {
    let metrics = cairn_job::metrics::CATALOGUE.iter().map(|d| d.prometheus).collect();
    let labels = cairn_job::metrics::CATALOGUE
        .iter()
        .flat_map(|d| d.attributes.iter())
        .map(|a| a.replace('.', "_"))
        .collect();
    (metrics, labels)
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Every `cairn_[a-z_]+` word of a PromQL expression that is not a label, with the byte
/// offset just past it.
fn names_in(expr: &str, labels: &BTreeSet<String>) -> Vec<(String, usize)> {
    let b = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("cairn_").map(|p| p + i) {
        let mut end = at + "cairn_".len();
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        let word_start = at == 0 || !is_name_char(b[at - 1]);
        let word_end = end == b.len() || !is_name_char(b[end]);
        let name = &expr[at..end];
        if word_start && word_end && !labels.contains(name) {
            found.push((name.to_string(), end));
        }
        i = end;
    }
    found
}

/// Checks that an expression names only catalogue metrics, each read over a range
/// (`name[...]` or `name{...}[...]`), never as a bare instant selector.
fn check_expr(what: &str, expr: &str, ranged: bool) -> Vec<String> {
    let (metrics, labels) = catalogue();
    let mut problems = Vec::new();
    for (name, end) in names_in(expr, &labels) {
        if !metrics.contains(name.as_str()) {
            problems.push(format!("{what}: {name} is not in cairn_job::metrics::CATALOGUE"));
        }
        if !ranged {
            continue;
        }
        let rest = expr[end..].trim_start();
        let rest = match rest.strip_prefix('{') {
            Some(r) => match r.find('}') {
                Some(close) => r[close + 1..].trim_start(),
                None => r,
            },
            None => rest,
        };
        if !rest.starts_with('[') {
            problems.push(format!(
                "{what}: {name} is read as an instant selector; pushed once per run, it is \
                 only there for 5 minutes: use max_over_time/last_over_time/absent_over_time"
            ));
        }
    }
    problems
}

#[test]
fn rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", "cairn.rules.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    println!("{out}");
}

#[test]
fn rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "cairn.rules.test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    println!("{out}");
}

#[test]
fn alerts_read_catalogue_metrics_over_windows_and_say_what_to_do() {
    let groups = &yaml("cairn.rules.yaml")["groups"];
    let readme = read("README.md").to_lowercase();
    let mut problems = Vec::new();
    let mut alerts = 0;
    for rule in rules(groups) {
        let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("alert or record");
        let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name}: no expr"));
        problems.extend(check_expr(name, expr, true));
        if rule["alert"].is_null() {
            continue;
        }
        alerts += 1;
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning", "info"].contains(&severity) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        for key in ["summary", "description", "runbook"] {
            if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {key} annotation"));
            }
        }
        // The runbook points at a section of the README that exists.
        let anchor = name.to_lowercase();
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or("");
        if !runbook.ends_with(&format!("README.md#{anchor}"))
            || !readme.contains(&format!("### {anchor}\n"))
        {
            problems.push(format!("{name}: runbook {runbook:?} has no README section"));
        }
    }
    assert!(alerts >= 7, "{alerts} alerts");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn prometheus_rule_carries_the_same_groups() {
    let rules = yaml("cairn.rules.yaml");
    let pr = yaml("prometheusrule.yaml");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["metadata"]["name"], "cairn");
    assert_eq!(pr["metadata"]["namespace"], "cairn");
    assert_eq!(pr["metadata"]["labels"]["app.kubernetes.io/part-of"], "cairn");
    assert!(rules["groups"].is_array(), "{rules}");
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml's spec.groups differ from cairn.rules.yaml's groups: regenerate it \
         (k8s-manifests/monitoring/README.md, \"Editing the rules\")"
    );
    assert_eq!(pr["spec"].as_object().unwrap().len(), 1, "spec holds only groups");

    let kustomization = yaml("kustomization.yaml");
    let resources = kustomization["resources"].as_array().expect("resources");
    assert!(resources.iter().any(|r| r == "prometheusrule.yaml"), "{kustomization}");
}

#[test]
fn helm_chart_ships_the_same_rules_file() {
    let copy = monitoring_dir().join("../helm/cairn/files/cairn.rules.yaml");
    let Ok(copied) = std::fs::read(&copy) else {
        println!("{} does not exist: nothing to compare", copy.display());
        return;
    };
    assert!(
        copied == read("cairn.rules.yaml").as_bytes(),
        "{} differs from k8s-manifests/monitoring/cairn.rules.yaml: copy it over",
        copy.display()
    );
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in list.as_array().expect("panels is a list") {
        all.push(p);
        if let Some(nested) = p.get("panels") {
            all.extend(panels(nested));
        }
    }
    all
}

fn uses_datasource_variable(ds: &Value) -> bool {
    ds["type"] == "prometheus"
        && ["${datasource}", "$datasource"].contains(&ds["uid"].as_str().unwrap_or(""))
}

#[test]
fn dashboard_reads_catalogue_metrics_through_the_datasource_variable() {
    let text = read("grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&text).expect("grafana-dashboard.json is JSON");
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 39, "schemaVersion");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    let mut problems = Vec::new();

    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["cluster", "source"] {
        let v = var(name).unwrap_or_else(|| panic!("no {name} variable"));
        assert_eq!(v["type"], "query", "{name}");
        if !uses_datasource_variable(&v["datasource"]) {
            problems.push(format!("variable {name}: datasource {}", v["datasource"]));
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        let query = match &v["query"] {
            Value::String(q) => q.as_str(),
            q => q["query"].as_str().unwrap_or(""),
        };
        assert!(query.contains("label_values("), "variable {name}: {query}");
        problems.extend(check_expr(&format!("variable {name}"), query, false));
    }

    let all = panels(&dash["panels"]);
    assert!(all.len() >= 12, "{} panels", all.len());
    let mut exprs = 0;
    for p in all {
        let title = p["title"].as_str().unwrap_or("?");
        if !uses_datasource_variable(&p["datasource"]) {
            problems.push(format!("panel {title:?}: datasource {}", p["datasource"]));
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if !t["datasource"].is_null() && !uses_datasource_variable(&t["datasource"]) {
                problems.push(format!("panel {title:?}: target datasource {}", t["datasource"]));
            }
            let expr = t["expr"].as_str().unwrap_or("");
            if names_in(expr, &catalogue().1).is_empty() {
                problems.push(format!("panel {title:?}: a target reads no cairn metric: {expr}"));
            }
            problems.extend(check_expr(&format!("panel {title:?}"), expr, true));
            exprs += 1;
        }
    }
    assert!(exprs >= 12, "{exprs} queries");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn metric_names_are_found_and_labels_are_not() {
    let (_, labels) = catalogue();
    let found: Vec<String> = names_in(
        "max by (cairn_cluster) (max_over_time(cairn_runs_total{cairn_source!=\"\"}[1d])) \
         or cairn:x_total or xcairn_y",
        &labels,
    )
    .into_iter()
    .map(|(n, _)| n)
    .collect();
    assert_eq!(found, ["cairn_runs_total"]);
    assert!(check_expr("t", "max_over_time(cairn_runs_total{a=\"b\"} [1d])", true).is_empty());
    assert_eq!(check_expr("t", "cairn_runs_total > 0", true).len(), 1);
    assert_eq!(check_expr("t", "max_over_time(cairn_nope[1d])", true).len(), 1);
}
