//! Kube-like load on an etcd, for tests/bench/dedup_bench.py:
//!
//!     etcd_churn fill  ENDPOINT KEYS     put KEYS objects of ~2 KiB (JSON like the API server's)
//!     etcd_churn churn ENDPOINT KEYS PCT update PCT % of them at random, then compact
//!
//! Values look like Kubernetes objects: repeated field names, labels and managed fields
//! that compress, a random uid and resourceVersion that do not. The API server compacts
//! every five minutes; `churn` compacts at the revision it ends on, as that would.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

fn object(i: usize, generation: u64) -> Vec<u8> {
    let mut rng = rand::rng();
    let mut uid = [0u8; 16];
    rng.fill_bytes(&mut uid);
    let uid: String = uid.iter().map(|b| format!("{b:02x}")).collect();
    let ns = format!("team-{}", i % 37);
    let app = format!("app-{}", i % 211);
    let env: String = (0..8)
        .map(|k| {
            format!(
                r#"{{"name":"SETTING_{k}","value":"{}"}}"#,
                (0..12).map(|_| (b'a' + rng.random_range(0..26)) as char).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}","namespace":"{ns}","uid":"{uid}","resourceVersion":"{rv}","generation":{generation},"creationTimestamp":"2026-11-0{d}T10:{m:02}:00Z","labels":{{"app.kubernetes.io/name":"{app}","app.kubernetes.io/part-of":"shop","app.kubernetes.io/managed-by":"Helm","tier":"backend"}},"annotations":{{"meta.helm.sh/release-name":"{app}","meta.helm.sh/release-namespace":"{ns}","checksum/config":"{sum:016x}{sum2:016x}"}},"managedFields":[{{"manager":"helm","operation":"Update","apiVersion":"v1","time":"2026-11-0{d}T10:{m:02}:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:data":{{".":{{}},"f:config.yaml":{{}},"f:env":{{}}}},"f:metadata":{{"f:labels":{{".":{{}},"f:app.kubernetes.io/name":{{}},"f:tier":{{}}}}}}}}}}]}},"data":{{"env":[{env}],"config.yaml":"server:\n  port: {port}\n  replicas: {rep}\n  log_level: info\n  feature_flags: [a, b, c]\n  upstream: http://{app}.{ns}.svc.cluster.local:8080\n"}}}}"#,
        rv = rng.random_range(1_000_000..99_999_999u64),
        d = 1 + i % 9,
        m = i % 60,
        sum = rng.random::<u64>(),
        sum2 = rng.random::<u64>(),
        port = 8000 + i % 1000,
        rep = 1 + i % 5,
    )
    .into_bytes()
}

fn key(i: usize) -> String {
    format!("/registry/configmaps/team-{}/cm-{i}", i % 37)
}

/// Put `indices` with 32 requests in flight.
async fn put_all(endpoint: &str, indices: Vec<usize>, generation: u64) {
    let client = etcd_client::Client::connect([endpoint], None).await.expect("connect");
    let chunks: Vec<Vec<usize>> =
        indices.chunks(indices.len().div_ceil(32).max(1)).map(<[usize]>::to_vec).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                c.put(key(i), object(i, generation), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (cmd, endpoint) = (args[1].as_str(), args[2].as_str());
    let keys: usize = args[3].parse().expect("KEYS");
    match cmd {
        "fill" => put_all(endpoint, (0..keys).collect(), 1).await,
        "churn" => {
            let pct: f64 = args[4].parse().expect("PCT");
            let mut all: Vec<usize> = (0..keys).collect();
            all.shuffle(&mut rand::rng());
            all.truncate(((keys as f64) * pct / 100.0).round() as usize);
            put_all(endpoint, all, 2).await;
            let mut c = etcd_client::Client::connect([endpoint], None).await.expect("connect");
            let rev = c.status().await.expect("status").header().expect("header").revision();
            c.compact(rev, None).await.expect("compact");
        }
        other => panic!("unknown command {other}"),
    }
}
