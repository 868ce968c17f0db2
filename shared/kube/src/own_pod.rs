//! The image of the pod this process runs in. A job's worker pods (ingest, restore writer)
//! run exactly the image the job itself runs, so an operator's `images:` mapping, a digest
//! pin or a private registry carries over with no second setting to keep in step (a
//! `CAIRN_INGEST_IMAGE` in the manifests would not be rewritten by kustomize's `images:`).

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::classify;
use cairn_core::{Error, Result};

/// Where the service-account token directory says which namespace the pod is in.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `explicit` when given; else the image of the container this process runs in, read from
/// its own Pod: `CAIRN_POD_NAME` / `CAIRN_POD_NAMESPACE` (the downward API) or the pod's
/// hostname and service-account namespace; the container is the only one, or `cairn`.
pub async fn worker_image(
    client: &kube::Client,
    explicit: Option<&str>,
    flag: &str,
) -> Result<String> {
    if let Some(image) = explicit {
        return Ok(image.to_string());
    }
    let outside = || {
        Error::Invalid(format!(
            "{flag} is required outside a pod (inside one it defaults to the pod's own image)"
        ))
    };
    let name = std::env::var("CAIRN_POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map_err(|_| outside())?;
    let namespace = match std::env::var("CAIRN_POD_NAMESPACE") {
        Ok(ns) => ns,
        Err(_) => {
            std::fs::read_to_string(NAMESPACE_FILE).map_err(|_| outside())?.trim().to_string()
        }
    };
    let pod = Api::<Pod>::namespaced(client.clone(), &namespace).get(&name).await.map_err(|e| {
        classify(&format!("reading this job's own pod {namespace}/{name} for {flag}"), e)
    })?;
    image_of(&pod).ok_or_else(|| {
        Error::Invalid(format!("pod {namespace}/{name} has no container named cairn: set {flag}"))
    })
}

/// The only container's image, or the one named `cairn`.
fn image_of(pod: &Pod) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    let container = match containers.as_slice() {
        [only] => only,
        many => many.iter().find(|c| c.name == "cairn")?,
    };
    container.image.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": containers}}),
        )
        .unwrap()
    }

    #[test]
    fn the_only_container_or_the_one_named_cairn() {
        let one = pod(json!([{"name": "x", "image": "reg/a:1"}]));
        assert_eq!(image_of(&one).as_deref(), Some("reg/a:1"));
        let two = pod(
            json!([{"name": "sidecar", "image": "reg/s:1"}, {"name": "cairn", "image": "reg/c@sha256:ab"}]),
        );
        assert_eq!(image_of(&two).as_deref(), Some("reg/c@sha256:ab"));
        let none = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        assert_eq!(image_of(&none), None);
    }
}
