//! Kubernetes helpers shared by the manifest export job, the manifest restore and
//! `cairn diff SNAP live`: connecting, discovery, paginated listing, the browsable file
//! layout, label selectors, and the normalisation that makes two versions of an object
//! comparable (and a stored object safe to apply again).

pub mod collect;
pub mod compare;
pub mod discovery;
pub mod exec;
pub mod hooks;
pub mod layout;
pub mod list;
pub mod normalize;
pub mod own_pod;
pub mod podjob;
pub mod selector;
pub mod semdiff;
pub mod stored;
pub mod temp;
pub mod transform;
pub mod volsnap;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use cairn_core::{Error, Result};

pub use discovery::{Discovery, discover};
pub use layout::{ObjectPath, Resource};

/// How to reach the cluster. Without flags: `KUBECONFIG` / `~/.kube/config`, else the
/// in-cluster service account (what a Job uses).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the in-cluster account).
    #[arg(long, env = "CAIRN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use (default: its current context).
    #[arg(long, env = "CAIRN_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// Timeout of each API request.
    #[arg(long, env = "CAIRN_KUBE_TIMEOUT", default_value = "60s",
          value_parser = cairn_core::parse::duration)]
    pub request_timeout: Duration,
}

impl KubeArgs {
    pub async fn client(&self) -> Result<kube::Client> {
        let opts =
            kube::config::KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", path.display())))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(|e| Error::Invalid(format!("kubeconfig: {e}")))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::Invalid(format!("no cluster configuration: {e}")))?,
        };
        // kube's own retry waits out a 503 for minutes: an aggregated API that is down would
        // stall discovery. Callers retry what is worth retrying (throttling, lost
        // connections) themselves, with bounds they choose.
        config.default_retry = false;
        config.read_timeout = Some(self.request_timeout);
        config.write_timeout = Some(self.request_timeout);
        config.connect_timeout = Some(self.request_timeout.min(Duration::from_secs(30)));
        kube::Client::try_from(config).map_err(|e| Error::Invalid(format!("kube client: {e}")))
    }
}

/// Classify a Kubernetes client error by what the caller should do about it.
pub fn classify(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) => {
            let msg = format!("{what}: {} ({})", status.message, status.code);
            match status.code {
                401 | 403 => Error::Denied(msg),
                404 | 410 => Error::NotFound(msg),
                409 => Error::AlreadyExists(msg),
                400 | 422 => Error::Invalid(msg),
                _ => Error::Retryable(msg),
            }
        }
        kube::Error::Auth(e) => Error::Denied(format!("{what}: {e}")),
        e @ (kube::Error::Service(_) | kube::Error::HyperError(_)) => {
            Error::Retryable(format!("{what}: API server unreachable: {e}"))
        }
        other => Error::Retryable(format!("{what}: {other}")),
    }
}

/// The HTTP status of an API error, if the server answered.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An object as the YAML stored in a manifest snapshot.
pub fn to_yaml(obj: &serde_json::Value) -> Result<String> {
    serde_saphyr::to_string(obj).map_err(|e| Error::Invalid(format!("object to YAML: {e}")))
}

/// Parse a stored manifest. A stored file that does not parse is damage, not bad input.
pub fn from_yaml(text: &[u8], what: &str) -> Result<serde_json::Value> {
    serde_saphyr::from_slice(text).map_err(|e| Error::Integrity(format!("{what}: not YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_round_trips_the_values_that_trip_yaml_up() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a.b/c": "true"}, "annotations": {"n": "0123"}},
            "data": {
                "yes": "yes", "no": "no", "on": "on", "null": "null", "tilde": "~", "empty": "",
                "float": "1.0", "int": "0123", "octal": "0o17", "hex": "0x1F", "exp": "1e3",
                "bool": "true", "colon": "a: b", "dash": "- x", "hash": "# not a comment",
                "multi": "line one\nline two\n\ttabbed\n", "trailing": "spaces  ",
                "lead": "  lead", "quote": "it's \"quoted\"", "unicode": "żółw 🐢",
                "star": "*anchor", "amp": "&a", "bang": "!tag", "pct": "%x", "at": "@x",
                "brace": "{a: 1}", "bracket": "[1]", "date": "2024-01-01", "dot": ".",
            },
            "numbers": [0, -1, 1.5, 9007199254740993u64, 1e-7],
            "nested": {"empty_map": {}, "empty_list": [], "null": null, "t": true},
        });
        let text = to_yaml(&obj).unwrap();
        let back = from_yaml(text.as_bytes(), "test").unwrap();
        assert_eq!(back, obj, "YAML was:\n{text}");
    }
}
