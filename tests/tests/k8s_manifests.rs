//! The shipped Kubernetes manifests (`k8s-manifests/`) against the real kube-apiserver: every
//! overlay passes a server-side dry run, and each job's ServiceAccount has exactly the rights
//! it uses (the manifest export runs with the shipped read-only ClusterRole; the restore
//! ServiceAccount can apply but not delete).

use std::path::{Path, PathBuf};

use cairn_tests::manifests::{
    apply_app, create_secret, install_crds, kubectl, render, token_kubeconfig,
};
use cairn_tests::{env, repos, unique};
use clap::Parser;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests").canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_passes_a_server_side_dry_run() {
    let kc = env("KUBECONFIG");
    install_crds(&kc);
    let dir = manifests_dir();
    let ns = unique("kdry");
    kubectl(&kc, &["create", "namespace", &ns], None);
    let mut targets: Vec<PathBuf> =
        std::fs::read_dir(dir.join("overlays")).unwrap().map(|e| e.unwrap().path()).collect();
    targets.sort();
    targets.push(dir.join("restore"));
    targets.push(dir.join("ui"));
    assert!(targets.len() >= 6, "{targets:?}");
    for t in &targets {
        let yaml = render(t, &ns, "-dry");
        assert!(
            yaml.contains("kind: CronJob")
                || yaml.contains("kind: ClusterRole")
                || yaml.contains("kind: Deployment"),
            "{}",
            t.display()
        );
        let out = kubectl(&kc, &["apply", "--dry-run=server", "-f", "-"], Some(&yaml));
        assert!(out.contains("(server dry run)"), "{}: {out}", t.display());
    }
    // The restore Job template, as the CI script creates it.
    let template = dir.join("restore/job-manifests.yaml");
    let out = kubectl(
        &kc,
        &["create", "--dry-run=server", "-n", &ns, "-f", template.to_str().unwrap()],
        None,
    );
    assert!(out.contains("(server dry run)"), "{out}");
    kubectl(&kc, &["delete", "namespace", &ns, "--wait=false"], None);
}

fn can_i(kc: &str, sa: &str, verb: &str, resource: &str, all_namespaces: bool) -> bool {
    // A subresource (`pods/exec`) is asked for with --subresource: `can-i create pods/exec`
    // answers for a resource of that name.
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let sub_flag = sub.map(|s| format!("--subresource={s}"));
    let mut args = vec!["auth", "can-i", "--as", sa, verb, resource];
    args.extend(sub_flag.as_deref());
    if all_namespaces {
        args.push("--all-namespaces");
    }
    // `can-i` exits 1 for "no": read the answer, not the status.
    let out = std::process::Command::new(cairn_tests::bin("kubectl"))
        .arg("--kubeconfig")
        .arg(kc)
        .args(&args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipped_rbac_grants_each_job_exactly_what_it_uses() {
    let kc = env("KUBECONFIG");
    let dir = manifests_dir();
    let ns = unique("krbac");
    let suffix = format!("-{}", &ns[ns.len() - 8..]);
    kubectl(&kc, &["create", "namespace", &ns], None);
    for t in [dir.join("overlays/local-test"), dir.join("restore")] {
        kubectl(&kc, &["apply", "-f", "-"], Some(&render(&t, &ns, &suffix)));
    }
    let sa = |job: &str| format!("system:serviceaccount:{ns}:{job}{suffix}");
    let export = sa("cairn-manifest-export");
    // RBAC reads through informers: wait for the binding to count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !can_i(&kc, &export, "list", "secrets", true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the export's ClusterRoleBinding never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "nodes"),
    ] {
        assert!(can_i(&kc, &export, verb, resource, true), "export must {verb} {resource}");
    }
    for (verb, resource) in [
        ("watch", "pods"),
        ("create", "pods/exec"),
        ("create", "configmaps"),
        ("patch", "deployments.apps"),
        ("delete", "secrets"),
    ] {
        assert!(!can_i(&kc, &export, verb, resource, true), "export must not {verb} {resource}");
    }
    for job in ["cairn-etcd-snapshot", "cairn-maintain"] {
        for (verb, resource) in
            [("get", "secrets"), ("list", "pods"), ("create", "pods"), ("create", "pods/exec")]
        {
            assert!(
                !can_i(&kc, &sa(job), verb, resource, true),
                "{job} must not {verb} {resource}"
            );
        }
    }
    let ingest = sa("cairn-pvc-ingest");
    for (verb, resource, yes) in [
        ("list", "persistentvolumeclaims", true),
        ("create", "persistentvolumeclaims", true),
        ("delete", "persistentvolumeclaims", true),
        ("create", "volumesnapshots.snapshot.storage.k8s.io", true),
        ("list", "volumesnapshots.snapshot.storage.k8s.io", true),
        ("create", "jobs.batch", true),
        ("patch", "jobs.batch", true),
        ("delete", "jobs.batch", true),
        ("list", "pods", true),
        ("create", "secrets", true),
        // Backup hooks and streamed dumps exec into the pods that opted in.
        ("get", "pods/exec", true),
        ("create", "pods/exec", true),
        ("get", "storageclasses.storage.k8s.io", true),
        ("list", "volumesnapshotclasses.snapshot.storage.k8s.io", true),
        ("create", "volumegroupsnapshots.groupsnapshot.storage.k8s.io", true),
        ("get", "volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io", true),
        ("get", "volumesnapshotcontents.snapshot.storage.k8s.io", true),
        ("delete", "volumesnapshotcontents.snapshot.storage.k8s.io", false),
        // It can hand credentials to its own pods but never read anyone's.
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("create", "pods", false),
        ("patch", "persistentvolumeclaims", false),
        ("delete", "persistentvolumes", false),
    ] {
        assert_eq!(can_i(&kc, &ingest, verb, resource, true), yes, "pvc ingest {verb} {resource}");
    }
    let restore = sa("cairn-restore");
    for (verb, resource, yes) in [
        ("get", "deployments.apps", true),
        ("create", "namespaces", true),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", true),
        ("escalate", "roles.rbac.authorization.k8s.io", true),
        ("bind", "clusterroles.rbac.authorization.k8s.io", true),
        ("delete", "deployments.apps", false),
        ("list", "secrets", false),
        ("delete", "jobs.batch", true),
        ("list", "pods", true),
        ("delete", "pods", false),
        ("get", "pods/exec", true),
        ("create", "pods/exec", true),
    ] {
        assert_eq!(can_i(&kc, &restore, verb, resource, true), yes, "restore {verb} {resource}");
    }

    // And the rights suffice: the export runs with the shipped ClusterRole, the restore with
    // the shipped restore role.
    let app = unique("kapp");
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || apply_app(&app2)).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let export_kc = token_kubeconfig(&ns, &format!("cairn-manifest-export{suffix}"), tmp.path());
    let wk = repo.write_key.to_text();
    let argv = [
        "cairn-manifest-export",
        "--repo",
        &repo.url,
        "--write-key",
        &wk,
        "--kubeconfig",
        &export_kc,
    ];
    let s =
        cairn_manifest_export::execute(&cairn_manifest_export::Cli::try_parse_from(argv).unwrap())
            .await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    assert!(s.denied.is_empty() && s.per_resource["secrets"] > 0, "{s:?}");

    kubectl(&kc, &["delete", "namespace", &app, "--wait=true", "--timeout=180s"], None);
    let restore_kc = token_kubeconfig(&ns, &format!("cairn-restore{suffix}"), tmp.path());
    let id = repo.identity_text();
    let argv = [
        "cairn-restore",
        "--repo",
        &repo.url,
        "--identity",
        &id,
        "manifests",
        "--kubeconfig",
        &restore_kc,
        "-n",
        &app,
    ];
    let cli = cairn_restore::Cli::try_parse_from(argv).unwrap();
    let cairn_restore::Command::Manifests(args) = &cli.command else { unreachable!() };
    let r = cairn_restore::manifests::execute(&cli.repo, args).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(r.counts.get("created").copied().unwrap_or(0) >= 20, "{:?}", r.counts);

    for t in [dir.join("overlays/local-test"), dir.join("restore")] {
        let _ = kubectl(
            &kc,
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&render(&t, &ns, &suffix)),
        );
    }
    kubectl(&kc, &["delete", "namespace", &ns, &app, "--wait=false"], None);
    cairn_tests::manifests::delete_cluster_fixtures(&kc, &app);
}

/// The CI recipe (`k8s-manifests/restore/ci/run-restore-job.sh`): a restore Job from the
/// shipped template, run on the test world's node from the `cairn-restore` image with the
/// shipped restore ServiceAccount; the script's exit code is the restore's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ci_restore_script_restores_a_namespace_and_exits_with_the_restores_code() {
    let kc = env("KUBECONFIG");
    let dir = manifests_dir();
    let app = unique("ciapp");
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || apply_app(&app2)).await.unwrap();
    let repo =
        repos::init(&format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique("cirepo"))).await;
    let wk = repo.write_key.to_text();
    let argv = ["cairn-manifest-export", "--repo", &repo.url, "--write-key", &wk, "-n", &app];
    let s =
        cairn_manifest_export::execute(&cairn_manifest_export::Cli::try_parse_from(argv).unwrap())
            .await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    kubectl(&kc, &["delete", "namespace", &app, "--wait=true", "--timeout=180s"], None);

    // The restore side: its kustomization (less the template Job, which the script launches).
    let ns = unique("cirestore");
    let suffix = format!("-{}", &ns[ns.len() - 8..]);
    kubectl(&kc, &["create", "namespace", &ns], None);
    let rendered = render(&dir.join("restore"), &ns, &suffix);
    kubectl(&kc, &["apply", "-f", "-"], Some(&rendered));
    let template = dir.join("restore/job-manifests.yaml");
    let account = format!("cairn-restore{suffix}");
    create_secret(&ns, "cairn-identity", &[("identity", repo.identity_text())]);
    create_secret(&ns, "cairn-store", &cairn_tests::s3::store_env());

    let script = dir.join("restore/ci/run-restore-job.sh");
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&script)
            .args([
                "-n",
                &ns,
                "-t",
                template.to_str().unwrap(),
                "-i",
                "cairn-restore:dev",
                "-r",
                &repo.url,
            ])
            .args(["-e", "cairn-store", "-a", &account, "-w", "180", "-k", &kc, "--"])
            .args(args)
            .env("KUBECTL", cairn_tests::bin("kubectl"));
        cmd
    };
    let ok =
        run(&["manifests", "--snapshot", "latest", "-n", &app, "--json"]).output().await.unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let cms = kubectl(&kc, &["get", "configmaps", "-n", &app, "-o", "name"], None);
    assert!(cms.lines().count() >= 2, "the namespace's ConfigMaps are back: {cms}");
    let deploys = kubectl(&kc, &["get", "deployments", "-n", &app, "-o", "name"], None);
    assert!(!deploys.trim().is_empty(), "and its Deployments");

    // A selection that matches nothing: cairn-restore exits 2, and so does the script.
    let path = format!("namespaces/{app}/core/configmaps/no-such-object.yaml");
    let bad = run(&["manifests", "--snapshot", "latest", "--path", &path]).output().await.unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));

    kubectl(&kc, &["delete", "--ignore-not-found", "--wait=false", "-f", "-"], Some(&rendered));
    kubectl(&kc, &["delete", "namespace", &ns, &app, "--wait=false"], None);
    cairn_tests::manifests::delete_cluster_fixtures(&kc, &app);
}
