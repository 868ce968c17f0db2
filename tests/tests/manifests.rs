//! Manifest export, browse, diff and restore against the real kube-apiserver of the test
//! world (and its second, empty cluster): the fixture application (Deployments, StatefulSet,
//! Services of each kind, ConfigMaps, Secrets, RBAC, PVCs, NetworkPolicy, Jobs, HPA, PDB)
//! plus cert-manager and CSI-snapshot custom resources from the shared CRDs.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_kube::ObjectPath;
use cairn_kube::list::get_object;
use cairn_kube::normalize::{SanitizeOptions, for_diff, sanitize};
use cairn_kube::stored::load_objects;
use cairn_kube::transform::Transforms;
use cairn_restore::manifests::{Action, ManifestSummary};
use cairn_tests::manifests::{
    apply_app, delete_cluster_fixtures, delete_namespace, install_crds, kubectl, token_kubeconfig,
};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::{env, kube_world, unique, workspace_bin};
use clap::Parser;
use serde_json::Value;

struct Fixture {
    ns: String,
    _tmp: tempfile::TempDir,
    repo: TestRepo,
}

fn admin_kc() -> String {
    env("KUBECONFIG")
}

fn second_kc() -> String {
    env("CAIRN_TEST_KUBECONFIG_SECOND")
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let ns = unique(prefix);
        let ns2 = ns.clone();
        tokio::task::spawn_blocking(move || apply_app(&ns2)).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
        Fixture { ns, _tmp: tmp, repo }
    }

    async fn export_as(&self, kubeconfig: &str, extra: &[&str]) -> cairn_manifest_export::Summary {
        let wk = self.repo.write_key.to_text();
        let mut argv = vec!["cairn-manifest-export", "--repo", &self.repo.url, "--write-key", &wk];
        argv.extend(["--kubeconfig", kubeconfig, "--log-format", "human"]);
        argv.extend(extra);
        let cli = cairn_manifest_export::Cli::try_parse_from(argv).expect("export args");
        cairn_manifest_export::execute(&cli).await
    }

    async fn export(&self, extra: &[&str]) -> cairn_manifest_export::Summary {
        self.export_as(&admin_kc(), extra).await
    }

    async fn restore(&self, kubeconfig: &str, extra: &[&str]) -> ManifestSummary {
        let id = self.repo.identity_text();
        let mut argv =
            vec!["cairn-restore", "--repo", &self.repo.url, "--identity", &id, "manifests"];
        argv.extend(["--kubeconfig", kubeconfig]);
        argv.extend(extra);
        let cli = cairn_restore::Cli::try_parse_from(argv).expect("restore args");
        match &cli.command {
            cairn_restore::Command::Manifests(args) => {
                cairn_restore::manifests::execute(&cli.repo, args).await
            }
            _ => unreachable!(),
        }
    }

    async fn stored(&self, snapshot: &str) -> BTreeMap<ObjectPath, Value> {
        let repo = self.repo.open_full().await;
        repo.load_index().await.unwrap();
        let s = repo.find_snapshot(snapshot, None).await.unwrap();
        load_objects(&repo, &s.snapshot, &|_| true).await.unwrap()
    }

    /// Run the `cairn` binary with the identity; returns (exit code, stdout).
    fn cairn(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(workspace_bin("cairn"))
            .args(["--repo", &self.repo.url, "--identity", &self.repo.identity_text()])
            .args(args)
            .env("CAIRN_LOG_FORMAT", "human")
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cleanup(&self, kubeconfigs: &[String]) {
        for kc in kubeconfigs {
            let _ = kubectl(
                kc,
                &["delete", "namespace", &self.ns, "--ignore-not-found", "--wait=false"],
                None,
            );
            delete_cluster_fixtures(kc, &self.ns);
        }
    }
}

fn assert_exported(s: &cairn_manifest_export::Summary) -> String {
    assert_eq!(s.exit_code, 0, "export failed: {s:?}");
    assert!(s.denied.is_empty(), "{:?}", s.denied);
    s.snapshot.clone().expect("snapshot id")
}

fn failures(r: &ManifestSummary) -> Vec<String> {
    r.objects
        .iter()
        .filter(|o| o.action == Action::Failed)
        .map(|o| format!("{}: {}", o.object, o.reason.clone().unwrap_or_default()))
        .collect()
}

fn count(r: &ManifestSummary, action: Action) -> usize {
    r.objects.iter().filter(|o| o.action == action).count()
}

/// The object at `path` in a cluster (namespace possibly mapped), as JSON.
async fn live(
    client: &kube::Client,
    path: &ObjectPath,
    stored: &Value,
    ns: Option<&str>,
) -> Option<Value> {
    let api_version = stored["apiVersion"].as_str().unwrap();
    let base = if path.group.is_empty() {
        format!("/api/{api_version}")
    } else {
        format!("/apis/{api_version}")
    };
    let url = match ns.or(path.namespace.as_deref()) {
        Some(ns) => format!("{base}/namespaces/{ns}/{}/{}", path.resource, path.name),
        None => format!("{base}/{}/{}", path.resource, path.name),
    };
    get_object(client, &url).await.unwrap()
}

/// The object as a restore promises to reproduce it: sanitised, without server noise.
fn comparable(path: &ObjectPath, obj: &Value) -> Value {
    let mut o = obj.clone();
    sanitize(&mut o, path, SanitizeOptions::default(), true);
    for_diff(&o, false)
}

/// Every object the restore created must equal its stored original (after sanitising).
async fn assert_restored_equal(
    client: &kube::Client,
    stored: &BTreeMap<ObjectPath, Value>,
    report: &ManifestSummary,
) -> usize {
    assert_restored_as(client, stored, report, &Transforms::default()).await
}

/// Every object the restore created must equal its stored original (after sanitising), as
/// the transforms make it.
async fn assert_restored_as(
    client: &kube::Client,
    stored: &BTreeMap<ObjectPath, Value>,
    report: &ManifestSummary,
    transforms: &Transforms,
) -> usize {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for o in report.objects.iter().filter(|o| o.action == Action::Created) {
        let path = ObjectPath::parse(&o.path).expect("object path");
        let mut original = stored[&path].clone();
        transforms.apply(&path, &mut original).expect("the transforms applied to the original");
        let now = live(client, &path, &original, None)
            .await
            .unwrap_or_else(|| panic!("{} missing after restore", o.object));
        let (a, b) = (comparable(&path, &original), comparable(&path, &now));
        if a != b {
            let d = cairn_kube::semdiff::diff_values(&a, &b, true);
            mismatches.push(format!(
                "{}: {:?}",
                o.object,
                d.iter().map(|f| f.line()).collect::<Vec<_>>()
            ));
        }
        checked += 1;
    }
    assert!(
        mismatches.is_empty(),
        "restored objects differ from the originals:\n{}",
        mismatches.join("\n")
    );
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_delete_restore_a_namespace() {
    let f = Fixture::new("mf-ns").await;
    let ns = f.ns.clone();
    let s = f.export(&["-n", &ns]).await;
    let snap = assert_exported(&s);
    assert!(s.objects >= 25, "{s:?}");
    for (r, at_least) in [
        ("deployments.apps", 1),
        ("statefulsets.apps", 1),
        ("replicasets.apps", 1),
        ("secrets", 2),
        ("configmaps", 2),
        ("services", 3),
        ("certificates.cert-manager.io", 1),
        ("volumesnapshots.snapshot.storage.k8s.io", 1),
        ("namespaces", 1),
    ] {
        assert!(
            s.per_resource.get(r).copied().unwrap_or(0) >= at_least,
            "{r}: {:?}",
            s.per_resource
        );
    }
    assert!(!s.per_resource.contains_key("events"), "events are left out by default");

    // Browse it like a file tree.
    let (code, ls) = f.cairn(&["ls", &format!("{snap}:namespaces/{ns}/apps/deployments/")]);
    assert_eq!(code, 0);
    assert!(ls.contains("web.yaml"), "{ls}");
    let (code, yaml) =
        f.cairn(&["cat", &format!("{snap}:namespaces/{ns}/apps/deployments/web.yaml")]);
    assert_eq!(code, 0);
    assert!(yaml.contains("kind: Deployment") && yaml.contains("name: web"), "{yaml}");
    assert!(yaml.contains("status:"), "status is exported");
    assert!(!yaml.contains("managedFields"), "managedFields are dropped");
    // The write key cannot read the Secrets back.
    let wk_cat = Command::new(workspace_bin("cairn"))
        .args(["--repo", &f.repo.url, "--write-key", &f.repo.write_key.to_text(), "cat"])
        .arg(format!("{snap}:namespaces/{ns}/core/secrets/web-secrets.yaml"))
        .output()
        .unwrap();
    assert_eq!(wk_cat.status.code(), Some(4));

    let stored = f.stored(&snap).await;
    tokio::task::spawn_blocking({
        let ns = ns.clone();
        move || delete_namespace(&admin_kc(), &ns)
    })
    .await
    .unwrap();

    let r = f.restore(&admin_kc(), &["--namespace", &ns]).await;
    assert_eq!(r.exit_code, 0, "{:?}", failures(&r));
    assert!(count(&r, Action::Created) >= 20, "{r:?}");
    let skipped = |object: &str| {
        r.objects.iter().find(|o| o.object.contains(object)).map(|o| (o.action, o.reason.clone()))
    };
    let (action, why) = skipped(&format!("configmaps {ns}/kube-root-ca.crt")).unwrap();
    assert_eq!(action, Action::Skipped);
    assert!(why.unwrap().contains("root CA"));
    let rs = r.objects.iter().find(|o| o.object.starts_with("replicasets.apps")).unwrap();
    assert_eq!(rs.action, Action::Skipped);
    assert!(rs.reason.as_deref().unwrap().contains("controller Deployment web"), "{rs:?}");

    let client = kube_world::admin().await;
    let checked = assert_restored_equal(&client, &stored, &r).await;
    assert!(checked >= 20);

    // Against the live cluster only the addresses a restore gives up differ.
    let (code, out) = f.cairn(&["diff", &snap, "live", "-n", &ns, "--json"]);
    assert_eq!(code, 0, "{out}");
    let diffs: Vec<Value> = serde_json::from_str(&out).unwrap();
    for d in &diffs {
        assert_eq!(d["change"], "changed", "{d}");
        assert!(d["object"].as_str().unwrap().starts_with("services "), "{d}");
        for field in d["fields"].as_array().unwrap() {
            let name = field["field"].as_str().unwrap();
            assert!(name.contains("clusterIP") || name.contains("nodePort"), "{d}");
        }
    }
    f.cleanup(&[admin_kc()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_objects_namespace_map_existing_and_dry_run() {
    let f = Fixture::new("mf-one").await;
    let ns = f.ns.clone();
    let snap = assert_exported(&f.export(&["-n", &ns]).await);
    let stored = f.stored(&snap).await;
    let kc = admin_kc();
    kubectl(&kc, &["delete", "deployment", "web", "-n", &ns, "--wait=true"], None);

    // One object by path.
    let path = format!("namespaces/{ns}/apps/deployments/web.yaml");
    let r = f.restore(&kc, &["--path", &path]).await;
    assert_eq!(r.exit_code, 0, "{:?}", failures(&r));
    assert_eq!(r.objects.len(), 1, "{:?}", r.objects);
    assert_eq!(r.objects[0].action, Action::Created);
    let client = kube_world::admin().await;
    assert_restored_equal(&client, &stored, &r).await;
    // Again: it exists now.
    let r = f.restore(&kc, &["--path", &path]).await;
    assert_eq!(
        (r.objects[0].action, r.objects[0].reason.as_deref()),
        (Action::Skipped, Some("exists"))
    );
    // Nothing selected is a usage error, not success.
    let r = f.restore(&kc, &["--path", "namespaces/no-such-namespace/"]).await;
    assert_eq!(r.exit_code, 2, "{r:?}");

    // The namespace under a new name.
    let ns2 = format!("{ns}-copy");
    let r = f.restore(&kc, &["--namespace", &ns, "--namespace-map", &format!("{ns}={ns2}")]).await;
    assert_eq!(r.exit_code, 0, "{:?}", failures(&r));
    let nsobj = get_object(&client, &format!("/api/v1/namespaces/{ns2}"))
        .await
        .unwrap()
        .expect("new namespace");
    let stored_ns = &stored[&ObjectPath::new(None, "", "namespaces", &ns)];
    assert_eq!(nsobj["metadata"]["labels"]["team"], stored_ns["metadata"]["labels"]["team"]);
    let cm_path = ObjectPath::new(Some(&ns), "", "configmaps", "web-settings");
    let cm = live(&client, &cm_path, &stored[&cm_path], Some(&ns2))
        .await
        .expect("configmap in the copy");
    assert_eq!(cm["data"], stored[&cm_path]["data"]);
    let rb_path = ObjectPath::new(Some(&ns), "rbac.authorization.k8s.io", "rolebindings", "web");
    let rb = live(&client, &rb_path, &stored[&rb_path], Some(&ns2))
        .await
        .expect("rolebinding in the copy");
    for s in rb["subjects"].as_array().unwrap() {
        if s["kind"] == "ServiceAccount" {
            assert_eq!(s["namespace"], ns2.as_str(), "subjects follow the namespace map");
        }
    }
    let dep_path = ObjectPath::new(Some(&ns), "apps", "deployments", "web");
    assert!(live(&client, &dep_path, &stored[&dep_path], Some(&ns2)).await.is_some());

    // Drift, a dry run that changes nothing, then an update that puts it back.
    kubectl(&kc, &["scale", "deployment", "web", "-n", &ns, "--replicas=5"], None);
    let r = f
        .restore(
            &kc,
            &["-n", &ns, "--resource", "deployments.apps", "--existing", "update", "--dry-run"],
        )
        .await;
    assert_eq!(r.exit_code, 0, "{:?}", failures(&r));
    let web = r.objects.iter().find(|o| o.object == format!("deployments.apps {ns}/web")).unwrap();
    assert_eq!(web.action, Action::WouldUpdate, "{r:?}");
    let now = live(&client, &dep_path, &stored[&dep_path], None).await.unwrap();
    assert_eq!(now["spec"]["replicas"], 5, "a dry run changes nothing");
    let r = f
        .restore(&kc, &["-n", &ns, "--resource", "deployments.apps", "--existing", "update"])
        .await;
    let web = r.objects.iter().find(|o| o.object == format!("deployments.apps {ns}/web")).unwrap();
    assert_eq!(web.action, Action::Updated);
    let now = live(&client, &dep_path, &stored[&dep_path], None).await.unwrap();
    assert_eq!(now["spec"]["replicas"], stored[&dep_path]["spec"]["replicas"]);
    // Applying the same again changes nothing.
    let r = f.restore(&kc, &["--path", &path, "--existing", "update"]).await;
    assert_eq!(r.objects[0].action, Action::Unchanged, "{r:?}");

    let _ = kubectl(&kc, &["delete", "namespace", &ns2, "--wait=false"], None);
    f.cleanup(&[kc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_everything_into_a_new_cluster() {
    let f = Fixture::new("mf-new").await;
    let ns = f.ns.clone();
    // Cluster-scoped objects too: the CRDs, the ClusterIssuer, the VolumeSnapshotClass, RBAC.
    // (APIServices are left out: another test registers a deliberately broken one.)
    let s = f
        .export(&[
            "-n",
            &ns,
            "--cluster-resources",
            "always",
            "--exclude-resource",
            "apiservices.apiregistration.k8s.io",
        ])
        .await;
    let snap = assert_exported(&s);
    assert!(s.per_resource["customresourcedefinitions.apiextensions.k8s.io"] >= 12, "{s:?}");
    let stored = f.stored(&snap).await;

    let r = f.restore(&second_kc(), &[]).await;
    assert_eq!(r.exit_code, 0, "failed: {:#?}", failures(&r));
    let second = kube_world::second().await;
    for (path, what) in [
        (ObjectPath::new(Some(&ns), "apps", "deployments", "web"), "deployment"),
        (ObjectPath::new(Some(&ns), "cert-manager.io", "certificates", "web-tls"), "certificate"),
        (
            ObjectPath::new(None, "cert-manager.io", "clusterissuers", &format!("{ns}-ca")),
            "cluster issuer",
        ),
        (
            ObjectPath::new(
                None,
                "snapshot.storage.k8s.io",
                "volumesnapshotclasses",
                &format!("{ns}-snapclass"),
            ),
            "snapshot class",
        ),
        (ObjectPath::new(Some(&ns), "", "secrets", "web-secrets"), "secret"),
    ] {
        let now = live(&second, &path, &stored[&path], None).await;
        assert!(now.is_some(), "{what} {} missing in the new cluster", path.display());
    }
    let secret_path = ObjectPath::new(Some(&ns), "", "secrets", "web-secrets");
    let secret = live(&second, &secret_path, &stored[&secret_path], None).await.unwrap();
    assert_eq!(secret["data"], stored[&secret_path]["data"]);
    let checked = assert_restored_equal(&second, &stored, &r).await;
    assert!(checked >= 25, "{checked}");
    f.cleanup(&[admin_kc(), second_kc()]);
}

/// The README's migration walkthrough, tested: a namespace of cluster A (StorageClass
/// `standard`, images from registry.example.com) restored into cluster B with another
/// StorageClass, a mirror registry and every frontend Deployment scaled to zero. Bad rules,
/// an unknown StorageClass and a patch that does not apply are one line each, and an object
/// whose patch fails is not created at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_migrates_into_another_cluster_with_transforms() {
    let f = Fixture::new("mf-mig").await;
    let ns = f.ns.clone();
    let snap = assert_exported(&f.export(&["-n", &ns]).await);
    let stored = f.stored(&snap).await;
    let tmp = tempfile::tempdir().unwrap();
    let class = format!("fast-{ns}");
    let second = second_kc();
    // Cluster B serves the same APIs (the namespace's custom resources need their CRDs).
    install_crds(&second);
    let sc = format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\nprovisioner: example.com/none\n"
    );
    kubectl(&second, &["apply", "-f", "-"], Some(&sc));
    let rules = tmp.path().join("rules.yaml");
    let write_rules = |extra: &str| {
        std::fs::write(
            &rules,
            format!(
                "version: 1\nrules:\n- name: scale-down-frontends\n  resources: [deployments.apps, statefulsets.apps]\n  labelSelector: tier=frontend\n  conditions: [{{path: /spec/replicas, exists: true}}]\n  jsonPatch: [{{op: replace, path: /spec/replicas, value: 0}}]\n  mergePatch: {{metadata: {{annotations: {{migrated-from: cluster-a}}}}}}\n{extra}"
            ),
        )
        .unwrap();
    };
    let sc_map = format!("standard={class}");
    let flags = |rules: &str| -> Vec<String> {
        ["-n", &ns, "--storage-class-map", &sc_map, "--image-map"]
            .iter()
            .map(|s| s.to_string())
            .chain(["registry.example.com/payments=mirror.b.example/payments".to_string()])
            .chain(["--transform-rules".to_string(), rules.to_string()])
            .collect()
    };
    let rules_path = rules.to_str().unwrap().to_string();

    // One clear line each, nothing applied: a bad rules file, an unknown StorageClass.
    std::fs::write(
        &rules,
        "version: 1\nrules: [{jsonPatch: [{op: rplace, path: /a, value: 1}]}]\n",
    )
    .unwrap();
    let argv = flags(&rules_path);
    let r = f.restore(&second, &argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(r.exit_code, 2, "{r:?}");
    let e = r.error.clone().unwrap();
    assert!(e.contains("rules[0].jsonPatch[0]: op \"rplace\""), "{e}");
    write_rules("");
    let mut bad_class = argv.clone();
    bad_class[3] = "standard=no-such-class".into();
    let r = f.restore(&second, &bad_class.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(r.exit_code, 2);
    assert!(r.error.as_deref().unwrap().contains("StorageClass no-such-class does not exist"));
    assert!(
        r.objects.iter().all(|o| o.action == Action::Skipped),
        "nothing applied: {:?}",
        r.objects
    );

    // A rule whose patch misses a path fails its object alone; the rest is restored.
    write_rules(
        "- name: broken\n  resources: [cronjobs.batch]\n  jsonPatch: [{op: replace, path: /spec/jobTemplate/spec/nosuch, value: 1}]\n",
    );
    let dry = [argv.clone(), vec!["--dry-run".into()]].concat();
    let r = f.restore(&second, &dry.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let web = r
        .objects
        .iter()
        .find(|o| o.object.ends_with(&format!("{ns}/web")) && o.object.starts_with("deployments"))
        .unwrap();
    assert!(
        web.changes.contains(&"/spec/replicas: 2 → 0".to_string()),
        "the dry run shows the change: {web:?}"
    );
    let partial = f.restore(&second, &argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let r = &partial;
    let failed: Vec<_> = r.objects.iter().filter(|o| o.action == Action::Failed).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].object.starts_with("cronjobs.batch"), "{failed:?}");
    assert_eq!(
        failed[0].reason.as_deref(),
        Some("rule broken: jsonPatch[0]: replace \"/spec/jobTemplate/spec/nosuch\": no such path")
    );
    assert_eq!(r.exit_code, 3, "partial: {:?}", r.error);
    let client = kube_world::second().await;
    let cron = ObjectPath::new(Some(&ns), "batch", "cronjobs", "report");
    assert!(live(&client, &cron, &stored[&cron], None).await.is_none(), "not half-applied");

    // The good rules: everything restored, each object as the transforms make it.
    write_rules("");
    let r = f.restore(&second, &argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(r.exit_code, 0, "failed: {:#?}", failures(&r));
    let transforms = Transforms::new(
        &[("standard".into(), class.clone())],
        &[("registry.example.com/payments".into(), "mirror.b.example/payments".into())],
        Some(("rules", std::fs::read(&rules).unwrap().as_slice())),
    )
    .unwrap();
    // Field by field: what the partial run created, then the CronJob the last run added.
    let checked = assert_restored_as(&client, &stored, &partial, &transforms).await;
    assert!(checked >= 10, "{checked}");
    assert_eq!(assert_restored_as(&client, &stored, &r, &transforms).await, 1);
    // And the transforms did what the walkthrough says.
    let get = |p: &ObjectPath| {
        let (c, s) = (client.clone(), stored[p].clone());
        let p = p.clone();
        async move { live(&c, &p, &s, None).await.unwrap() }
    };
    let web = get(&ObjectPath::new(Some(&ns), "apps", "deployments", "web")).await;
    assert_eq!(web["spec"]["replicas"], 0);
    assert_eq!(web["metadata"]["annotations"]["migrated-from"], "cluster-a");
    assert_eq!(
        web.pointer("/spec/template/spec/containers/0/image").unwrap(),
        "mirror.b.example/payments/web:1.4.2"
    );
    let db = get(&ObjectPath::new(Some(&ns), "apps", "statefulsets", "db")).await;
    assert_eq!(db["spec"]["replicas"], 1, "a backend keeps its replicas");
    assert_eq!(
        db.pointer("/spec/volumeClaimTemplates/0/spec/storageClassName").unwrap(),
        &Value::from(class.clone())
    );
    let cron = get(&cron).await;
    assert_eq!(
        cron.pointer("/spec/jobTemplate/spec/template/spec/containers/0/image").unwrap(),
        "mirror.b.example/payments/report:2.0.1"
    );
    for (path, o) in &stored {
        if path.resource == "persistentvolumeclaims" {
            let pvc = get(path).await;
            assert_eq!(pvc["spec"]["storageClassName"], Value::from(class.clone()), "{o}");
        }
    }
    kubectl(&second, &["delete", "storageclass", &class], None);
    f.cleanup(&[admin_kc(), second_kc()]);
}

/// A kubeconfig for a new ServiceAccount of `ns` (its own identity: RBAC grants made for it
/// touch no other test).
fn service_account_kubeconfig(ns: &str, name: &str, dir: &std::path::Path) -> String {
    kubectl(&admin_kc(), &["create", "serviceaccount", name, "-n", ns], None);
    token_kubeconfig(ns, name, dir)
}

/// Retry an export until RBAC has caught up with a new grant (the authorizer reads through
/// informers), at most 30 s.
async fn export_when_granted(
    f: &Fixture,
    kc: &str,
    args: &[&str],
) -> cairn_manifest_export::Summary {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = f.export_as(kc, args).await;
        if s.denied.is_empty() && s.exit_code == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_privilege_identities_export() {
    let f = Fixture::new("mf-rbac").await;
    let ns = f.ns.clone();
    let kc = admin_kc();
    let dir = tempfile::tempdir().unwrap();

    // A read-only ClusterRole (get/list on everything) suffices for the whole cluster.
    let reader = service_account_kubeconfig(&ns, "reader", dir.path());
    let role = format!("{ns}-read-all");
    let manifest = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {role}}}\n\
         rules:\n- apiGroups: ['*']\n  resources: ['*']\n  verbs: [get, list]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {role}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
         subjects:\n- {{kind: ServiceAccount, name: reader, namespace: {ns}}}\n"
    );
    kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
    let s = export_when_granted(&f, &reader, &[]).await;
    let snap = assert_exported(&s);
    assert!(s.per_resource["namespaces"] >= 3, "{s:?}");
    assert!(s.per_resource["clusterroles.rbac.authorization.k8s.io"] > 10, "{s:?}");
    let stored = f.stored(&snap).await;
    assert!(stored.contains_key(&ObjectPath::new(Some(&ns), "", "secrets", "web-secrets")));
    kubectl(
        &kc,
        &["delete", &format!("clusterrolebinding/{role}"), &format!("clusterrole/{role}")],
        None,
    );

    // A Role limited to one namespace suffices with a namespace filter.
    let local = service_account_kubeconfig(&ns, "local", dir.path());
    let manifest = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: read, namespace: {ns}}}\n\
         rules:\n- apiGroups: ['*']\n  resources: ['*']\n  verbs: [get, list]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: read, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read}}\n\
         subjects:\n- {{kind: ServiceAccount, name: local, namespace: {ns}}}\n"
    );
    kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
    let s = export_when_granted(&f, &local, &["-n", &ns]).await;
    assert_exported(&s);
    assert!(s.per_resource["deployments.apps"] == 1 && s.per_resource["secrets"] >= 2, "{s:?}");
    assert!(!s.per_resource.contains_key("clusterroles.rbac.authorization.k8s.io"));

    // Asking for a namespace it may not read: partial (exit 3), the denied lists named, the
    // snapshot saved and marked partial.
    let s = f.export_as(&local, &["-n", &ns, "-n", "default"]).await;
    assert_eq!(s.exit_code, 3, "{s:?}");
    assert!(s.denied.iter().any(|d| d.contains("in namespace default")), "{:?}", s.denied);
    let snap = s.snapshot.clone().expect("a partial snapshot is saved");
    let repo = f.repo.open_full().await;
    let entry = repo.find_snapshot(&snap, None).await.unwrap();
    assert!(entry.snapshot.partial);
    assert_eq!(entry.id.to_hex(), snap);

    // An API server that does not answer: retryable, nothing saved.
    let dead = dir.path().join("dead.kubeconfig");
    let text = std::fs::read_to_string(&local).unwrap();
    let server_line =
        text.lines().find(|l| l.trim_start().starts_with("server:")).unwrap().to_string();
    std::fs::write(&dead, text.replace(&server_line, "    server: https://127.0.0.1:1")).unwrap();
    let before = repo.snapshots().await.unwrap().len();
    let s = f.export_as(dead.to_str().unwrap(), &["-n", &ns]).await;
    assert_eq!(s.exit_code, 1, "{s:?}");
    assert!(s.error.as_deref().unwrap_or("").contains("API server unreachable"), "{s:?}");
    assert_eq!(repo.snapshots().await.unwrap().len(), before);
    f.cleanup(&[kc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_finds_edits_and_deletions_live_and_between_snapshots() {
    let f = Fixture::new("mf-diff").await;
    let ns = f.ns.clone();
    let a = assert_exported(&f.export(&["-n", &ns]).await);
    let kc = admin_kc();
    kubectl(&kc, &["scale", "deployment", "web", "-n", &ns, "--replicas=4"], None);
    let patch =
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:9.9"}]"#;
    kubectl(&kc, &["patch", "deployment", "web", "-n", &ns, "--type=json", "-p", patch], None);
    kubectl(&kc, &["delete", "configmap", "web-config", "-n", &ns], None);

    let check = |out: &str| {
        let diffs: Vec<Value> = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let objects: Vec<(String, String)> = diffs
            .iter()
            .map(|d| {
                (
                    d["object"].as_str().unwrap().to_string(),
                    d["change"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            objects,
            vec![
                (format!("configmaps {ns}/web-config"), "removed".to_string()),
                (format!("deployments.apps {ns}/web"), "changed".to_string()),
            ],
            "{out}"
        );
        let fields: Vec<&str> = diffs[1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&"spec.replicas"), "{fields:?}");
        assert!(fields.contains(&"spec.template.spec.containers[0].image"), "{fields:?}");
    };
    let (code, out) = f.cairn(&["diff", &a, "live", "-n", &ns, "--json"]);
    assert_eq!(code, 0, "{out}");
    check(&out);
    let b = assert_exported(&f.export(&["-n", &ns]).await);
    let (code, out) = f.cairn(&["diff", &a, &b, "--json"]);
    assert_eq!(code, 0, "{out}");
    check(&out);
    // Human output names the change.
    let (_, text) = f.cairn(&["diff", &a, &b]);
    assert!(text.contains("~ spec.replicas: 2 → 4"), "{text}");
    f.cleanup(&[kc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_aggregated_api_is_reported_and_skipped() {
    let kc = admin_kc();
    install_crds(&kc);
    let group = format!("{}.cairn.test", unique("broken"));
    let manifest = format!(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {{name: v1.{group}}}\n\
         spec:\n  group: {group}\n  version: v1\n  groupPriorityMinimum: 1000\n  versionPriority: 15\n  \
         insecureSkipTLSVerify: true\n  service: {{name: missing, namespace: default, port: 443}}\n"
    );
    kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
    // The aggregator lists the group once it has seen the APIService.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubectl(&kc, &["get", "--raw", "/apis"], None).contains(&group) {
        assert!(Instant::now() < deadline, "group {group} never listed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let f = Fixture { ns: "default".into(), _tmp: tmp, repo };
    let s = f.export(&["-n", "default", "--resource", "configmaps"]).await;
    let _ = kubectl(&kc, &["delete", "apiservice", &format!("v1.{group}")], None);
    assert_eq!(s.exit_code, 0, "a broken aggregated API must not fail the run: {s:?}");
    assert!(s.skipped.iter().any(|x| x.contains(&group)), "{:?}", s.skipped);
    assert!(s.per_resource["configmaps"] >= 1);
}
