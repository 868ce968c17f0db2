//! Temporary Kubernetes objects: the labels every object a job creates for itself carries
//! (VolumeSnapshots, PVCs, Jobs, Secret copies), and the sweep that removes what a crashed
//! run left behind.
//!
//! Each object is labelled with the component that made it, the run, the instance (several
//! orchestrators with different selections can share a cluster) and an expiry in Unix
//! seconds. A run sweeps, before it starts, every object of its component that has expired,
//! and, while it holds its instance's lock, every object of its instance from another run:
//! that run is dead (its lock expired), so nothing else is using them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use serde::de::DeserializeOwned;

use cairn_core::Result;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "cairn";
pub const COMPONENT: &str = "cairn.dev/component";
pub const RUN: &str = "cairn.dev/run";
pub const INSTANCE: &str = "cairn.dev/instance";
pub const EXPIRES: &str = "cairn.dev/expires";
pub const CREATED_AT: &str = "cairn.dev/created-at";

/// Who creates temporary objects, and until when they may live.
#[derive(Debug, Clone)]
pub struct TempOwner {
    pub component: String,
    pub instance: String,
    pub run: String,
    /// Objects older than this are leftovers whatever else is true.
    pub max_age: Duration,
}

impl TempOwner {
    pub fn new(component: &str, instance: &str, max_age: Duration) -> TempOwner {
        TempOwner {
            component: component.into(),
            instance: instance.into(),
            run: new_run_id(),
            max_age,
        }
    }

    /// Labels for a new temporary object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let expires = unix_now() + self.max_age.as_secs();
        BTreeMap::from([
            (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
            (COMPONENT.into(), self.component.clone()),
            (INSTANCE.into(), self.instance.clone()),
            (RUN.into(), self.run.clone()),
            (EXPIRES.into(), expires.to_string()),
        ])
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(CREATED_AT.into(), cairn_core::repo::now_rfc3339())])
    }

    /// Selects every temporary object of this component.
    pub fn component_selector(&self) -> String {
        format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={}", self.component)
    }

    /// Whether an object with these labels is a leftover: expired, or made by another run of
    /// this instance (only meaningful while the caller holds the instance's lock).
    pub fn is_leftover(&self, labels: &BTreeMap<String, String>, instance_locked: bool) -> bool {
        if labels.get(COMPONENT) != Some(&self.component) {
            return false;
        }
        if labels.get(RUN) == Some(&self.run) {
            return false;
        }
        let expired =
            labels.get(EXPIRES).and_then(|e| e.parse::<u64>().ok()).is_none_or(|e| e <= unix_now());
        expired || (instance_locked && labels.get(INSTANCE) == Some(&self.instance))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 12 hex digits: short enough for names and label values, unique enough per cluster.
pub fn new_run_id() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}

/// A Kubernetes name built from parts, cut to `max` characters (63 for most), lowercase,
/// with characters a name may not hold replaced, ending in `suffix` unchanged.
pub fn object_name(prefix: &str, middle: &str, suffix: &str, max: usize) -> String {
    let clean: String = middle
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let room = max.saturating_sub(prefix.len() + suffix.len() + 2);
    let cut: String = clean.chars().take(room).collect();
    let cut = cut.trim_matches('-');
    if cut.is_empty() { format!("{prefix}-{suffix}") } else { format!("{prefix}-{cut}-{suffix}") }
}

/// What a sweep removed, for the summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Swept {
    pub objects: Vec<String>,
    pub errors: Vec<String>,
}

/// Delete the leftovers of `kind` among `apis` (one per namespace, or one cluster-wide).
/// Lists paginate; deletions propagate in the background (a Job takes its pods, and the
/// objects it owns, with it).
pub async fn sweep<K>(
    kind: &str,
    apis: &[Api<K>],
    owner: &TempOwner,
    instance_locked: bool,
    swept: &mut Swept,
) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for api in apis {
        let lp = ListParams::default().labels(&owner.component_selector()).limit(500);
        let what = format!("temporary {kind}s");
        let items = super::list::list_all_with(&lp, &what, |page| {
            let api = api.clone();
            async move { api.list_metadata(&page).await }
        })
        .await?;
        {
            for obj in &items {
                let labels = obj.metadata.labels.clone().unwrap_or_default();
                if !owner.is_leftover(&labels, instance_locked) {
                    continue;
                }
                let name = obj.metadata.name.clone().unwrap_or_default();
                let ns = obj.metadata.namespace.clone().unwrap_or_default();
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                let what = format!("{kind} {ns}/{name}");
                match api.delete(&name, &dp).await {
                    Ok(_) => {
                        tracing::info!(object = %what, "swept a leftover of an earlier run");
                        swept.objects.push(what);
                    }
                    Err(e) if super::status_code(&e) == Some(404) => {}
                    Err(e) => swept.errors.push(format!("{what}: {e}")),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_expired_or_from_another_run_of_a_locked_instance() {
        let me = TempOwner::new("pvc-ingest", "default", Duration::from_secs(3600));
        let mut other = TempOwner::new("pvc-ingest", "default", Duration::from_secs(3600));
        other.run = "000000000000".into();
        let theirs = other.labels();
        assert!(!me.is_leftover(&me.labels(), true), "never our own run");
        assert!(me.is_leftover(&theirs, true), "another run of our locked instance");
        assert!(!me.is_leftover(&theirs, false), "not without the instance lock");
        let mut expired = theirs.clone();
        expired.insert(EXPIRES.into(), (unix_now() - 1).to_string());
        assert!(me.is_leftover(&expired, false));
        let mut foreign = expired.clone();
        foreign.insert(COMPONENT.into(), "pvc-restore".into());
        assert!(!me.is_leftover(&foreign, true), "another component's objects are not ours");
        let mut other_instance = theirs;
        other_instance.insert(INSTANCE.into(), "nightly-b".into());
        assert!(!me.is_leftover(&other_instance, true), "another instance, not expired");
    }

    #[test]
    fn names_are_valid_and_bounded() {
        let n = object_name("cairn-ingest", "Team_A/Data.Volume-01", "ab12cd", 63);
        assert_eq!(n, "cairn-ingest-team-a-data-volume-01-ab12cd");
        let long = object_name("cairn-ingest", &"x".repeat(200), "ab12cd", 63);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-ab12cd"));
        assert_eq!(object_name("p", "---", "s", 63), "p-s");
    }
}
