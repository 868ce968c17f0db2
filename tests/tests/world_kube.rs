//! The real kube-apiserver of the test world: admin rights, and a restricted identity that
//! is denied until RBAC grants it something (the base of every least-privilege test).

use std::time::{Duration, Instant};

use cairn_tests::{kube_world, unique};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), ..Default::default() }
}

#[tokio::test]
async fn admin_creates_and_lists_namespaces() {
    let client = kube_world::admin().await;
    let namespaces: Api<Namespace> = Api::all(client);
    let name = unique("world-admin");
    namespaces
        .create(&PostParams::default(), &Namespace { metadata: meta(&name), ..Default::default() })
        .await
        .expect("admin creates a namespace");
    let listed = namespaces.list(&ListParams::default()).await.expect("admin lists namespaces");
    assert!(listed.items.iter().any(|n| n.metadata.name.as_deref() == Some(name.as_str())));
    assert!(listed.items.iter().any(|n| n.metadata.name.as_deref() == Some("kube-system")));
    namespaces.delete(&name, &DeleteParams::default()).await.expect("delete namespace");
}

#[tokio::test]
async fn restricted_identity_is_denied_until_a_role_grants_it() {
    let admin = kube_world::admin().await;
    let ns = unique("world-rbac");
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &Namespace { metadata: meta(&ns), ..Default::default() })
        .await
        .expect("create namespace");

    let restricted: Api<ConfigMap> = Api::namespaced(kube_world::restricted().await, &ns);
    match restricted.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "expected Forbidden"),
        other => panic!("restricted identity should be denied, got {other:?}"),
    }

    let role = Role {
        metadata: meta("read-configmaps"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: meta("read-configmaps"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "read-configmaps".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: kube_world::RESTRICTED_USER.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The RBAC authorizer reads through informers: allow it a moment to see the binding.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match restricted.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("restricted identity still denied after the RoleBinding: {e}"),
        }
    }
    // The grant is exactly what the Role says: writing is still denied.
    let cm = ConfigMap { metadata: meta("nope"), ..Default::default() };
    match restricted.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("create should stay forbidden, got {other:?}"),
    }
    Api::<Namespace>::all(admin).delete(&ns, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn second_cluster_is_separate() {
    let first: Api<Namespace> = Api::all(kube_world::admin().await);
    let second: Api<Namespace> = Api::all(kube_world::second().await);
    let name = unique("world-second");
    first
        .create(&PostParams::default(), &Namespace { metadata: meta(&name), ..Default::default() })
        .await
        .expect("create namespace in the first cluster");
    assert!(first.get_opt(&name).await.expect("get in first").is_some());
    assert!(
        second.get_opt(&name).await.expect("get in second").is_none(),
        "namespace {name} of the first cluster is visible in the second"
    );
    // The second cluster is a working cluster of its own.
    let listed = second.list(&ListParams::default()).await.expect("list in second");
    assert!(listed.items.iter().any(|n| n.metadata.name.as_deref() == Some("kube-system")));
    first.delete(&name, &DeleteParams::default()).await.expect("delete namespace");
}
