//! Restore transforms: what a stored object becomes in the cluster it is restored into.
//! A different StorageClass (`--storage-class-map`), a different registry
//! (`--image-map`), and rules of JSON Patch (RFC 6902) or JSON merge patch (RFC 7386)
//! selected by resource, namespace, name glob, label selector and field conditions
//! (`--transform-rules FILE`), as Velero's resource modifiers and Kasten's TransformSets.
//!
//! Pure: [`Transforms::apply`] works on a copy and hands back either the whole result or
//! the first step that did not apply, so an object is never half-transformed. The rules
//! file is checked when it is read, each fault named by its place in the file.
//!
//! ```yaml
//! version: 1
//! rules:
//!   - name: scale-down-web
//!     resources: [deployments.apps, statefulsets.apps]
//!     namespaces: ["shop-*"]          # globs; empty: every namespace
//!     names: ["web*"]                 # globs; empty: every name
//!     labelSelector: tier=frontend
//!     conditions:                     # all must hold
//!       - {path: /spec/replicas, exists: true}
//!       - {path: /spec/paused, notEquals: true}
//!     jsonPatch:
//!       - {op: replace, path: /spec/replicas, value: 0}
//!     mergePatch:
//!       metadata: {annotations: {restored-by: cairn}}
//! ```

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use serde_json::Value;

use crate::layout::{ObjectPath, resource_matches};
use crate::selector::Selector;
use cairn_core::{Error, Result};

/// Everything a restore changes in the objects it applies.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    storage_classes: BTreeMap<String, String>,
    images: Vec<(String, String)>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    resources: Vec<String>,
    namespaces: Vec<GlobMatcher>,
    names: Vec<GlobMatcher>,
    selector: Option<Selector>,
    conditions: Vec<Condition>,
    json_patch: Vec<PatchOp>,
    merge_patch: Option<Value>,
}

#[derive(Debug, Clone)]
struct Condition {
    path: String,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Exists(bool),
    Equals(Value),
    NotEquals(Value),
}

/// One RFC 6902 operation.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchOp {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
    Test { path: String, value: Value },
    Move { from: String, path: String },
    Copy { from: String, path: String },
}

// The file as written; checked into [`Rule`]s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    version: u32,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    label_selector: Option<String>,
    #[serde(default)]
    conditions: Vec<ConditionSpec>,
    #[serde(default)]
    json_patch: Vec<Value>,
    #[serde(default)]
    merge_patch: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConditionSpec {
    path: String,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    not_equals: Option<Value>,
}

/// `old=new` pairs as flags give them; an empty side or a repeated old is refused.
fn mapping(flag: &str, pairs: &[(String, String)]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (old, new) in pairs {
        if old.is_empty() || new.is_empty() {
            return Err(Error::Invalid(format!("{flag} {old}={new}: both sides must be named")));
        }
        if out.insert(old.clone(), new.clone()).is_some() {
            return Err(Error::Invalid(format!("{flag}: {old} is mapped twice")));
        }
    }
    Ok(out)
}

fn pointer_ok(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

fn glob(pattern: &str, place: &str) -> Result<GlobMatcher> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::Invalid(format!("{place}: glob {pattern:?}: {e}")))
}

fn patch_op(v: &Value, place: &str) -> Result<PatchOp> {
    let bad = |why: String| Error::Invalid(format!("{place}: {why}"));
    let obj = v.as_object().ok_or_else(|| bad("an operation is a map {op, path, ...}".into()))?;
    for k in obj.keys() {
        if !["op", "path", "value", "from"].contains(&k.as_str()) {
            return Err(bad(format!("unknown member {k:?}")));
        }
    }
    let text = |k: &str| -> Result<String> {
        let s = obj
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{k:?} is missing or not a string")))?;
        if k != "op" && !pointer_ok(s) {
            return Err(bad(format!("{k} {s:?} is not a JSON pointer (it starts with /)")));
        }
        Ok(s.to_string())
    };
    let value = || obj.get("value").cloned().ok_or_else(|| bad("\"value\" is missing".into()));
    Ok(match text("op")?.as_str() {
        "add" => PatchOp::Add { path: text("path")?, value: value()? },
        "remove" => PatchOp::Remove { path: text("path")? },
        "replace" => PatchOp::Replace { path: text("path")?, value: value()? },
        "test" => PatchOp::Test { path: text("path")?, value: value()? },
        "move" => PatchOp::Move { from: text("from")?, path: text("path")? },
        "copy" => PatchOp::Copy { from: text("from")?, path: text("path")? },
        other => {
            return Err(bad(format!(
                "op {other:?} is not one of add, remove, replace, test, move, copy"
            )));
        }
    })
}

impl Transforms {
    /// Build from the flags: StorageClass and image maps, and the rules file's text (named
    /// `what` in errors). Every fault is one line naming where it is.
    pub fn new(
        storage_classes: &[(String, String)],
        images: &[(String, String)],
        rules: Option<(&str, &[u8])>,
    ) -> Result<Transforms> {
        let storage_classes = mapping("--storage-class-map", storage_classes)?;
        let images: Vec<(String, String)> =
            mapping("--image-map", images)?.into_iter().rev().collect();
        let rules = match rules {
            Some((what, text)) => parse_rules(what, text)?,
            None => Vec::new(),
        };
        Ok(Transforms { storage_classes, images, rules })
    }

    pub fn is_empty(&self) -> bool {
        self.storage_classes.is_empty() && self.images.is_empty() && self.rules.is_empty()
    }

    /// The StorageClasses objects will name after the mapping: each must exist in the
    /// target cluster.
    pub fn target_storage_classes(&self) -> impl Iterator<Item = &str> {
        self.storage_classes.values().map(String::as_str)
    }

    /// The object as it is to be applied, or the step that failed (`rule NAME: ...`).
    /// `obj` is left unchanged on failure.
    pub fn apply(&self, path: &ObjectPath, obj: &mut Value) -> std::result::Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let mut out = obj.clone();
        map_storage_classes(path, &mut out, &self.storage_classes);
        if !self.images.is_empty() {
            map_images(&mut out, &self.images);
        }
        for rule in &self.rules {
            // Rules see the object as the steps before them left it.
            if !rule.selects(path, &out) {
                continue;
            }
            for (i, op) in rule.json_patch.iter().enumerate() {
                apply_op(&mut out, op)
                    .map_err(|e| format!("rule {}: jsonPatch[{i}]: {e}", rule.name))?;
            }
            if let Some(m) = &rule.merge_patch {
                merge_patch(&mut out, m);
            }
        }
        *obj = out;
        Ok(())
    }
}

fn parse_rules(what: &str, text: &[u8]) -> Result<Vec<Rule>> {
    let value = crate::from_yaml(text, what)?;
    let file: RulesFile = serde_json::from_value(value)
        .map_err(|e| Error::Invalid(format!("transform rules {what}: {e}")))?;
    if file.version != 1 {
        return Err(Error::Invalid(format!(
            "transform rules {what}: version {} (this cairn reads version 1)",
            file.version
        )));
    }
    let mut rules = Vec::new();
    for (i, r) in file.rules.into_iter().enumerate() {
        let place = format!("transform rules {what}: rules[{i}]");
        let name = r.name.clone().unwrap_or_else(|| format!("#{i}"));
        if r.json_patch.is_empty() && r.merge_patch.is_none() {
            return Err(Error::Invalid(format!("{place}: neither jsonPatch nor mergePatch")));
        }
        if let Some(m) = &r.merge_patch
            && !m.is_object()
        {
            return Err(Error::Invalid(format!("{place}: mergePatch must be a map")));
        }
        let mut conditions = Vec::new();
        for (j, c) in r.conditions.into_iter().enumerate() {
            let cplace = format!("{place}.conditions[{j}]");
            if !pointer_ok(&c.path) {
                return Err(Error::Invalid(format!(
                    "{cplace}: path {:?} is not a JSON pointer",
                    c.path
                )));
            }
            let test = match (c.exists, c.equals, c.not_equals) {
                (Some(e), None, None) => Test::Exists(e),
                (None, Some(v), None) => Test::Equals(v),
                (None, None, Some(v)) => Test::NotEquals(v),
                _ => {
                    return Err(Error::Invalid(format!(
                        "{cplace}: give exactly one of exists, equals, notEquals"
                    )));
                }
            };
            conditions.push(Condition { path: c.path, test });
        }
        let json_patch = r
            .json_patch
            .iter()
            .enumerate()
            .map(|(j, op)| patch_op(op, &format!("{place}.jsonPatch[{j}]")))
            .collect::<Result<Vec<_>>>()?;
        let selector =
            r.label_selector.as_deref().map(Selector::parse).transpose().map_err(|e| match e {
                Error::Invalid(why) => Error::Invalid(format!("{place}: {why}")),
                other => other,
            })?;
        rules.push(Rule {
            name,
            resources: r.resources,
            namespaces: r.namespaces.iter().map(|g| glob(g, &place)).collect::<Result<_>>()?,
            names: r.names.iter().map(|g| glob(g, &place)).collect::<Result<_>>()?,
            selector,
            conditions,
            json_patch,
            merge_patch: r.merge_patch,
        });
    }
    Ok(rules)
}

impl Rule {
    fn selects(&self, path: &ObjectPath, obj: &Value) -> bool {
        let kind = obj.get("kind").and_then(Value::as_str);
        let resource_ok = self.resources.is_empty()
            || self
                .resources
                .iter()
                .any(|f| resource_matches(f, &path.group, &path.resource, kind));
        let ns_ok = self.namespaces.is_empty()
            || path
                .namespace
                .as_deref()
                .is_some_and(|ns| self.namespaces.iter().any(|g| g.is_match(ns)));
        let name_ok = self.names.is_empty() || self.names.iter().any(|g| g.is_match(&path.name));
        resource_ok
            && ns_ok
            && name_ok
            && self.selector.as_ref().is_none_or(|s| s.matches(obj))
            && self.conditions.iter().all(|c| c.holds(obj))
    }
}

impl Condition {
    fn holds(&self, obj: &Value) -> bool {
        let found = obj.pointer(&self.path);
        match &self.test {
            Test::Exists(e) => found.is_some() == *e,
            Test::Equals(v) => found == Some(v),
            Test::NotEquals(v) => found != Some(v),
        }
    }
}

/// PVCs, PVs and StatefulSets' volumeClaimTemplates name their StorageClass.
fn map_storage_classes(path: &ObjectPath, obj: &mut Value, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let remap = |v: Option<&mut Value>| {
        if let Some(Value::String(class)) = v
            && let Some(new) = map.get(class.as_str())
        {
            *class = new.clone();
        }
    };
    match (path.group.as_str(), path.resource.as_str()) {
        ("", "persistentvolumeclaims" | "persistentvolumes") => {
            remap(obj.pointer_mut("/spec/storageClassName"));
        }
        ("apps", "statefulsets") => {
            if let Some(Value::Array(templates)) = obj.pointer_mut("/spec/volumeClaimTemplates") {
                for t in templates {
                    remap(t.pointer_mut("/spec/storageClassName"));
                }
            }
        }
        _ => {}
    }
}

/// Where a workload keeps its pod spec.
fn pod_spec(obj: &mut Value) -> Option<&mut Value> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let at = match kind.as_str() {
        "Pod" => "/spec",
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "PodTemplate" => "/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return None,
    };
    obj.pointer_mut(at)
}

/// `from` names a registry or repository prefix; it matches an image at a path boundary.
fn mapped_image(image: &str, images: &[(String, String)]) -> Option<String> {
    images.iter().find_map(|(from, to)| {
        let rest = image.strip_prefix(from.as_str())?;
        (rest.is_empty() || rest.starts_with(['/', ':', '@'])).then(|| format!("{to}{rest}"))
    })
}

fn map_images(obj: &mut Value, images: &[(String, String)]) {
    let Some(spec) = pod_spec(obj) else { return };
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else { continue };
        for c in containers {
            if let Some(Value::String(image)) = c.get_mut("image")
                && let Some(new) = mapped_image(image, images)
            {
                *image = new;
            }
        }
    }
}

/// RFC 6901: `~1` is `/`, `~0` is `~`.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent of `path` and the last token.
fn split_pointer(path: &str) -> std::result::Result<(&str, String), String> {
    let cut = path.rfind('/').ok_or_else(|| format!("{path:?}: the whole document"))?;
    Ok((&path[..cut], unescape(&path[cut + 1..])))
}

fn array_index(token: &str, len: usize, adding: bool) -> std::result::Result<usize, String> {
    if adding && token == "-" {
        return Ok(len);
    }
    let i: usize = token
        .parse()
        .ok()
        .filter(|_| token == "0" || !token.starts_with('0'))
        .ok_or_else(|| format!("{token:?} is not an array index"))?;
    let limit = if adding { len } else { len.saturating_sub(1) };
    if i > limit || (!adding && len == 0) {
        return Err(format!("index {i} is out of range (length {len})"));
    }
    Ok(i)
}

fn add(doc: &mut Value, path: &str, value: Value) -> std::result::Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(token, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = array_index(&token, a.len(), true)?;
            a.insert(i, value);
            Ok(())
        }
        Some(_) => Err(format!("{parent:?} is neither a map nor a list")),
        None => Err(format!("{parent:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> std::result::Result<Value, String> {
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&token).ok_or_else(|| format!("{path:?} does not exist"))
        }
        Some(Value::Array(a)) => {
            let i = array_index(&token, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("{path:?} does not exist")),
    }
}

/// One RFC 6902 operation; a target that does not exist is an error, never created
/// silently (except by `add`, whose parent must exist).
pub fn apply_op(doc: &mut Value, op: &PatchOp) -> std::result::Result<(), String> {
    match op {
        PatchOp::Add { path, value } => add(doc, path, value.clone()),
        PatchOp::Remove { path } => remove(doc, path).map(|_| ()),
        PatchOp::Replace { path, value } => {
            let target =
                doc.pointer_mut(path).ok_or_else(|| format!("replace {path:?}: no such path"))?;
            *target = value.clone();
            Ok(())
        }
        PatchOp::Test { path, value } => match doc.pointer(path) {
            Some(v) if v == value => Ok(()),
            Some(v) => Err(format!("test {path:?}: found {v}, expected {value}")),
            None => Err(format!("test {path:?}: no such path")),
        },
        PatchOp::Move { from, path } => {
            if path.starts_with(&format!("{from}/")) {
                return Err(format!("move {from:?} into its own child {path:?}"));
            }
            let v = remove(doc, from).map_err(|e| format!("move from {e}"))?;
            add(doc, path, v).map_err(|e| format!("move to {e}"))
        }
        PatchOp::Copy { from, path } => {
            let v =
                doc.pointer(from).cloned().ok_or_else(|| format!("copy {from:?}: no such path"))?;
            add(doc, path, v).map_err(|e| format!("copy to {e}"))
        }
    }
}

/// RFC 7386: maps merge member by member, `null` removes, anything else replaces.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let Value::Object(d) = doc else { return };
    for (k, v) in p {
        if v.is_null() {
            d.remove(k);
        } else {
            merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// What changed between two forms of an object, as `pointer: old → new` lines (`-` for
/// absent): what `--dry-run` shows of each object's transform.
pub fn changes(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(before, after, "", &mut out);
    out
}

fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => diff(v, w, &p, out),
                    (Some(v), None) => out.push(format!("{p}: {v} → -")),
                    (None, Some(w)) => out.push(format!("{p}: - → {w}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(v, w, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: {a} → {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> (ObjectPath, Value) {
        (
            ObjectPath::new(Some("shop-a"), "apps", "deployments", "web"),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop-a", "labels": {"tier": "frontend"}},
                "spec": {"replicas": 3, "template": {"spec": {
                    "initContainers": [{"name": "init", "image": "registry.a.example/team/init:1"}],
                    "containers": [
                        {"name": "app", "image": "registry.a.example/team/app@sha256:ab"},
                        {"name": "side", "image": "registry.a.example/teamster/x:1"},
                        {"name": "pg", "image": "docker.io/library/postgres:16"}
                    ]}}}
            }),
        )
    }

    fn rules(text: &str) -> Result<Transforms> {
        Transforms::new(&[], &[], Some(("rules.yaml", text.as_bytes())))
    }

    #[test]
    fn images_map_at_a_path_boundary_in_every_container_list() {
        let t = Transforms::new(
            &[],
            &[("registry.a.example/team".into(), "registry.b.example/mirror".into())],
            None,
        )
        .unwrap();
        let (p, mut d) = deployment();
        t.apply(&p, &mut d).unwrap();
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["image"], "registry.b.example/mirror/init:1");
        assert_eq!(spec["containers"][0]["image"], "registry.b.example/mirror/app@sha256:ab");
        assert_eq!(
            spec["containers"][1]["image"], "registry.a.example/teamster/x:1",
            "not a prefix of a name"
        );
        assert_eq!(spec["containers"][2]["image"], "docker.io/library/postgres:16");
        let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"image": "registry.a.example/team/report:2"}]}}}}}});
        let mut c = cron.clone();
        t.apply(&ObjectPath::new(Some("x"), "batch", "cronjobs", "r"), &mut c).unwrap();
        assert_eq!(
            c.pointer("/spec/jobTemplate/spec/template/spec/containers/0/image").unwrap(),
            "registry.b.example/mirror/report:2"
        );
    }

    #[test]
    fn storage_classes_map_in_claims_and_claim_templates() {
        let t = Transforms::new(&[("standard".into(), "fast".into())], &[], None).unwrap();
        let mut pvc =
            json!({"kind": "PersistentVolumeClaim", "spec": {"storageClassName": "standard"}});
        t.apply(&ObjectPath::new(Some("a"), "", "persistentvolumeclaims", "d"), &mut pvc).unwrap();
        assert_eq!(pvc["spec"]["storageClassName"], "fast");
        let mut sts = json!({"kind": "StatefulSet", "spec": {"volumeClaimTemplates": [
            {"spec": {"storageClassName": "standard"}}, {"spec": {"storageClassName": "other"}}]}});
        t.apply(&ObjectPath::new(Some("a"), "apps", "statefulsets", "db"), &mut sts).unwrap();
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast");
        assert_eq!(sts["spec"]["volumeClaimTemplates"][1]["spec"]["storageClassName"], "other");
        assert_eq!(t.target_storage_classes().collect::<Vec<_>>(), ["fast"]);
    }

    #[test]
    fn rules_select_by_resource_namespace_name_labels_and_conditions() {
        let t = rules(
            "version: 1\nrules:\n- name: down\n  resources: [deployments.apps]\n  namespaces: ['shop-*']\n  names: ['w*']\n  labelSelector: tier=frontend\n  conditions: [{path: /spec/replicas, exists: true}, {path: /spec/paused, notEquals: true}]\n  jsonPatch: [{op: replace, path: /spec/replicas, value: 0}]\n  mergePatch: {metadata: {annotations: {restored: 'yes'}, labels: {tier: null}}}\n",
        )
        .unwrap();
        let (p, mut d) = deployment();
        let before = d.clone();
        t.apply(&p, &mut d).unwrap();
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["metadata"]["annotations"]["restored"], "yes");
        assert!(d["metadata"]["labels"].get("tier").is_none(), "null removes");
        let ch = changes(&before, &d);
        assert!(ch.contains(&"/spec/replicas: 3 → 0".to_string()), "{ch:?}");
        // Each selector on its own keeps the rule off.
        for (path, obj) in [
            (ObjectPath::new(Some("other"), "apps", "deployments", "web"), deployment().1),
            (ObjectPath::new(Some("shop-a"), "apps", "deployments", "api"), deployment().1),
            (ObjectPath::new(Some("shop-a"), "apps", "statefulsets", "web"), deployment().1),
        ] {
            let mut o = obj.clone();
            t.apply(&path, &mut o).unwrap();
            assert_eq!(o, obj, "{path:?}");
        }
        let (p, mut unlabelled) = deployment();
        unlabelled["metadata"]["labels"] = json!({});
        let kept = unlabelled.clone();
        t.apply(&p, &mut unlabelled).unwrap();
        assert_eq!(unlabelled, kept);
    }

    #[test]
    fn a_patch_that_does_not_apply_leaves_the_object_whole() {
        let t = rules(
            "version: 1\nrules:\n- name: r\n  jsonPatch:\n  - {op: add, path: /metadata/annotations, value: {a: b}}\n  - {op: replace, path: /spec/replicaz, value: 0}\n",
        )
        .unwrap();
        let (p, mut d) = deployment();
        let before = d.clone();
        let e = t.apply(&p, &mut d).unwrap_err();
        assert_eq!(e, "rule r: jsonPatch[1]: replace \"/spec/replicaz\": no such path");
        assert_eq!(d, before, "nothing half-applied");
    }

    #[test]
    fn bad_rules_files_are_one_line_naming_the_place() {
        for (text, expect) in [
            ("version: 2\n", "version 2"),
            (
                "version: 1\nrules: [{jsonPatch: [{op: rplace, path: /a, value: 1}]}]\n",
                "rules[0].jsonPatch[0]: op \"rplace\"",
            ),
            (
                "version: 1\nrules: [{jsonPatch: [{op: replace, path: a, value: 1}]}]\n",
                "not a JSON pointer",
            ),
            ("version: 1\nrules: [{jsonPatch: [{op: add, path: /a}]}]\n", "\"value\" is missing"),
            ("version: 1\nrules: [{name: x}]\n", "rules[0]: neither jsonPatch nor mergePatch"),
            ("version: 1\nrules: [{selector: a=b, mergePatch: {}}]\n", "unknown field `selector`"),
            (
                "version: 1\nrules: [{labelSelector: 'a in (', mergePatch: {}}]\n",
                "rules[0]: label selector",
            ),
            (
                "version: 1\nrules: [{conditions: [{path: /a, exists: true, equals: 1}], mergePatch: {}}]\n",
                "conditions[0]: give exactly one",
            ),
            ("version: 1\nrules: [{names: ['[a'], mergePatch: {}}]\n", "glob"),
        ] {
            let e = rules(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = Transforms::new(&[("a".into(), "b".into()), ("a".into(), "c".into())], &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--storage-class-map: a is mapped twice"), "{e}");
    }

    #[test]
    fn json_patch_follows_rfc6902() {
        let mut d = json!({"a": [1, 2], "b": {"c/d": 1, "e~f": 2}});
        for op in [
            PatchOp::Add { path: "/a/-".into(), value: json!(3) },
            PatchOp::Add { path: "/a/0".into(), value: json!(0) },
            PatchOp::Remove { path: "/b/c~1d".into() },
            PatchOp::Replace { path: "/b/e~0f".into(), value: json!(9) },
            PatchOp::Copy { from: "/a/1".into(), path: "/b/one".into() },
            PatchOp::Move { from: "/b/one".into(), path: "/one".into() },
            PatchOp::Test { path: "/one".into(), value: json!(1) },
        ] {
            apply_op(&mut d, &op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        assert_eq!(d, json!({"a": [0, 1, 2, 3], "b": {"e~f": 9}, "one": 1}));
        assert!(apply_op(&mut d, &PatchOp::Remove { path: "/a/4".into() }).is_err());
        assert!(apply_op(&mut d, &PatchOp::Add { path: "/x/y".into(), value: json!(1) }).is_err());
        assert!(apply_op(&mut d, &PatchOp::Test { path: "/one".into(), value: json!(2) }).is_err());
        assert!(apply_op(&mut d, &PatchOp::Add { path: "/a/01".into(), value: json!(1) }).is_err());
    }
}
