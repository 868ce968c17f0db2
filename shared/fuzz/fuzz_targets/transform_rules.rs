//! Restore transform rules (`--transform-rules FILE`) on arbitrary input: reading never
//! panics, and rules that read apply to an object either whole or not at all (a failed
//! apply leaves the object exactly as it was).
#![no_main]

use cairn_kube::layout::ObjectPath;
use cairn_kube::transform::Transforms;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = Transforms::new(&[], &[], Some(("fuzz", data))) else { return };
    let path = ObjectPath::new(Some("shop"), "apps", "deployments", "web");
    let original = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "frontend"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "r/a:1"}]}}}
    });
    let mut obj = original.clone();
    if t.apply(&path, &mut obj).is_err() {
        assert_eq!(obj, original, "a failed transform changed the object");
    }
});
