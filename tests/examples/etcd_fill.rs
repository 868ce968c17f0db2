//! Fill an etcd with N MiB of values (1 MiB each, random: the worst case for dedup and
//! compression), for tests/bench/etcd_bench.py.
//!
//!     cargo run --release -p cairn-tests --example etcd_fill -- http://127.0.0.1:2379 1100

use rand::RngCore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (endpoint, mib): (&str, usize) =
        (&args[1], args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1100));
    let mut client = etcd_client::Client::connect([endpoint], None).await.expect("connect");
    let mut value = vec![0u8; (1 << 20) - 1024];
    for i in 0..mib {
        rand::rng().fill_bytes(&mut value);
        client.put(format!("/bench/{i:06}"), value.clone(), None).await.expect("put");
    }
}
