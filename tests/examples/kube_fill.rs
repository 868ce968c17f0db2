//! Fill a namespace with N API objects, fast, for tests/bench/manifest_bench.py.
//!
//!     cargo run --release -p cairn-tests --example kube_fill -- --namespace bench --count 20000
//!
//! A realistic mix, deterministic per index (a re-run creates the same objects; AlreadyExists
//! counts as done): 84 % ConfigMaps of 0.5–8 KiB (properties, JSON, YAML and shell-script
//! shaped text, 1–3 keys), 10 % Opaque Secrets (a few random keys of 16 B–1.5 KiB), 3 %
//! ServiceAccounts and 3 % headless Services with a selector (headless: the test world's
//! service CIDR is a /24; with a selector, the controller manager adds an EndpointSlice and
//! an Endpoints object per Service, as in a real cluster). Creates the namespace when missing
//! and, when every object exists, annotates it with `cairn.bench/kube-fill-count: N` (the
//! benchmark's "already filled" check). Reads the kubeconfig as kubectl does (KUBECONFIG).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Secret, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The namespace annotation recording a complete fill.
const FILLED: &str = "cairn.bench/kube-fill-count";

#[derive(Debug, Parser)]
#[command(about = "Create N realistic objects in a namespace (benchmark fixture)")]
struct Args {
    #[arg(long, short = 'n', default_value = "cairn-bench")]
    namespace: String,
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Creates in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seed of the generated content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const WORDS: &[&str] = &[
    "server",
    "client",
    "timeout",
    "retry",
    "cache",
    "enabled",
    "pool",
    "size",
    "max",
    "min",
    "log",
    "level",
    "debug",
    "info",
    "endpoint",
    "region",
    "replica",
    "shard",
    "queue",
    "topic",
    "database",
    "user",
    "host",
    "port",
    "path",
    "metrics",
    "tracing",
    "feature",
    "flag",
    "limit",
    "window",
    "interval",
    "backoff",
    "batch",
    "worker",
    "threads",
    "buffer",
    "compression",
    "tls",
    "cert",
    "payment",
    "order",
    "invoice",
    "customer",
    "inventory",
    "search",
    "index",
    "session",
];

fn word(rng: &mut StdRng) -> &'static str {
    // Skewed towards the first words, as real configuration vocabularies are.
    let i = (rng.random::<f64>().powi(2) * WORDS.len() as f64) as usize;
    WORDS[i.min(WORDS.len() - 1)]
}

fn value(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => rng.random_range(0..100_000u32).to_string(),
        1 => (if rng.random_bool(0.5) { "true" } else { "false" }).to_string(),
        2 => format!(
            "{}-{}.svc.cluster.local:{}",
            word(rng),
            word(rng),
            rng.random_range(1024..9999)
        ),
        _ => format!("{:016x}", rng.random::<u64>()),
    }
}

/// One configuration file of about `target` bytes, in one of four shapes.
fn config_file(rng: &mut StdRng, target: usize) -> (String, String) {
    let shape = rng.random_range(0..4);
    let mut out = String::with_capacity(target + 128);
    let name = match shape {
        0 => {
            while out.len() < target {
                out += &format!("{}.{}.{}={}\n", word(rng), word(rng), word(rng), value(rng));
            }
            "application.properties"
        }
        1 => {
            out.push_str("{\n");
            while out.len() < target {
                out += &format!(
                    "  \"{}_{}\": {{\"{}\": \"{}\", \"{}\": {}}},\n",
                    word(rng),
                    word(rng),
                    word(rng),
                    value(rng),
                    word(rng),
                    rng.random_range(0..1000)
                );
            }
            out.push_str("  \"end\": true\n}\n");
            "config.json"
        }
        2 => {
            while out.len() < target {
                out += &format!(
                    "{}:\n  {}: {}\n  {}:\n    - {}\n    - {}\n",
                    word(rng),
                    word(rng),
                    value(rng),
                    word(rng),
                    value(rng),
                    value(rng)
                );
            }
            "values.yaml"
        }
        _ => {
            out.push_str("#!/bin/sh\nset -eu\n");
            while out.len() < target {
                out += &format!(
                    "export {}_{}=\"{}\"\nif [ -n \"${{{}:-}}\" ]; then echo {} {}; fi\n",
                    word(rng).to_uppercase(),
                    word(rng).to_uppercase(),
                    value(rng),
                    word(rng).to_uppercase(),
                    word(rng),
                    value(rng)
                );
            }
            "entrypoint.sh"
        }
    };
    (name.to_string(), out)
}

fn labels(rng: &mut StdRng, app: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "kube-fill".to_string()),
    ]);
    if rng.random_bool(0.5) {
        l.insert("app.kubernetes.io/part-of".into(), word(rng).to_string());
    }
    if rng.random_bool(0.3) {
        l.insert("tier".into(), ["frontend", "backend", "data"][rng.random_range(0..3)].into());
    }
    l
}

fn meta(name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta { name: Some(name), labels: Some(labels), ..Default::default() }
}

enum Kind {
    ConfigMap,
    Secret,
    ServiceAccount,
    Service,
}

fn kind_of(i: u64) -> Kind {
    match i % 100 {
        0..=83 => Kind::ConfigMap,
        84..=93 => Kind::Secret,
        94..=96 => Kind::ServiceAccount,
        _ => Kind::Service,
    }
}

async fn create_one(
    client: &kube::Client,
    ns: &str,
    seed: u64,
    i: u64,
) -> Result<bool, kube::Error> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
    let app = format!("{}-{}", word(&mut rng), i % 500);
    let pp = PostParams::default();
    let result = match kind_of(i) {
        Kind::ConfigMap => {
            let mut data = BTreeMap::new();
            for k in 0..rng.random_range(1..=3) {
                // Mostly 0.5–4 KiB, sometimes up to 8 KiB.
                let size = if rng.random_bool(0.15) {
                    rng.random_range(4096..8192)
                } else {
                    rng.random_range(512..4096)
                };
                let (name, text) = config_file(&mut rng, size);
                data.insert(if k == 0 { name } else { format!("{k}-{name}") }, text);
            }
            let cm = ConfigMap {
                metadata: meta(format!("{app}-config-{i:06}"), labels(&mut rng, &app)),
                data: Some(data),
                ..Default::default()
            };
            Api::<ConfigMap>::namespaced(client.clone(), ns).create(&pp, &cm).await.map(drop)
        }
        Kind::Secret => {
            let mut data = BTreeMap::new();
            for k in
                ["password", "token", "tls.key", "api-key"].iter().take(rng.random_range(1..=4))
            {
                let mut v = vec![0u8; rng.random_range(16..1536)];
                rng.fill_bytes(&mut v);
                data.insert(k.to_string(), ByteString(v));
            }
            let s = Secret {
                metadata: meta(format!("{app}-secret-{i:06}"), labels(&mut rng, &app)),
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            Api::<Secret>::namespaced(client.clone(), ns).create(&pp, &s).await.map(drop)
        }
        Kind::ServiceAccount => {
            let sa = ServiceAccount {
                metadata: meta(format!("{app}-sa-{i:06}"), labels(&mut rng, &app)),
                ..Default::default()
            };
            Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&pp, &sa).await.map(drop)
        }
        Kind::Service => {
            let port = rng.random_range(1024..9999);
            let svc = Service {
                metadata: meta(format!("{app}-svc-{i:06}"), labels(&mut rng, &app)),
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".into()),
                    selector: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_string(),
                        app.clone(),
                    )])),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            Api::<Service>::namespaced(client.clone(), ns).create(&pp, &svc).await.map(drop)
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let client = kube::Client::try_default().await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = Namespace {
        metadata: meta(
            a.namespace.clone(),
            BTreeMap::from([("app.kubernetes.io/managed-by".into(), "kube-fill".into())]),
        ),
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => eprintln!("created namespace {}", a.namespace),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let t0 = Instant::now();
    let (created, existed, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let results: Vec<Result<(), (u64, kube::Error)>> = futures::stream::iter(0..a.count)
        .map(|i| {
            let (client, ns, created, existed, done) =
                (&client, &a.namespace, &created, &existed, &done);
            async move {
                // The API server may shed load (429) or time out under a burst: retry a bit.
                let mut attempt = 0;
                let r = loop {
                    match create_one(client, ns, a.seed, i).await {
                        Err(kube::Error::Api(s))
                            if (s.code == 429 || s.code >= 500) && attempt < 5 => {}
                        Err(kube::Error::HyperError(_) | kube::Error::Service(_))
                            if attempt < 5 => {}
                        r => break r,
                    }
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                };
                match r {
                    Ok(true) => created.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => existed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err((i, e)),
                };
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 2000 == 0 {
                    eprintln!("  {n}/{} in {:.1}s", a.count, t0.elapsed().as_secs_f64());
                }
                Ok(())
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let errors: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    let secs = t0.elapsed().as_secs_f64();
    let (c, e) = (created.load(Ordering::Relaxed), existed.load(Ordering::Relaxed));
    println!(
        "namespace {}: {c} created, {e} already there, {} failed, in {secs:.1}s ({:.0} objects/s, {} in flight)",
        a.namespace,
        errors.len(),
        (c + e) as f64 / secs.max(0.001),
        a.concurrency
    );
    if let Some((i, err)) = errors.first() {
        anyhow::bail!("object {i} (and {} more) failed: {err}", errors.len() - 1);
    }
    let patch =
        serde_json::json!({ "metadata": { "annotations": { FILLED: a.count.to_string() } } });
    namespaces.patch(&a.namespace, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
