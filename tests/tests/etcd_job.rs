//! The etcd snapshot job and its restore against the real mTLS etcd: 100k keys (some of
//! about 1 MiB), a second snapshot after 1 % of them change stores little, the first restores
//! through `etcdutl snapshot restore` into a fresh etcd holding exactly its keys and the same
//! HashKV; password authentication works; bad endpoints, certificates, passwords, a cut
//! stream and an alarm fail with their exit codes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_core::Exit;
use cairn_tests::{bin, env, etcd, repos, unique};
use clap::Parser;
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use rand::{RngCore, SeedableRng};

const KEYS: usize = 100_000;
const BIG_EVERY: usize = 1000; // 100 values of ~1 MiB

fn value(i: usize, version: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(BIG_EVERY) { (1 << 20) - 4096 } else { 64 + (i * 37) % 400 };
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(i as u64 * 1_000_003 + version).fill_bytes(&mut v);
    v
}

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}/{i:06}")
}

async fn write_keys(
    client: &mut Client,
    prefix: &str,
    keys: impl Iterator<Item = usize>,
    version: u64,
) {
    let keys: Vec<usize> = keys.collect();
    for batch in keys.chunks(100) {
        let ops: Vec<TxnOp> =
            batch.iter().map(|&i| TxnOp::put(key(prefix, i), value(i, version), None)).collect();
        // Big values alone: a request must stay under etcd's 1.5 MiB limit.
        if batch.iter().any(|i| i.is_multiple_of(BIG_EVERY)) {
            for op in ops {
                client.txn(Txn::new().and_then(vec![op])).await.expect("put");
            }
        } else {
            client.txn(Txn::new().and_then(ops)).await.expect("txn");
        }
    }
}

async fn snapshot_job(args: &[&str]) -> Exit {
    let argv = std::iter::once("cairn-etcd-snapshot").chain(args.iter().copied());
    cairn_etcd_snapshot::run(cairn_etcd_snapshot::Cli::try_parse_from(argv).expect("args")).await
}

async fn restore_job(args: &[&str]) -> Exit {
    let argv = std::iter::once("cairn-restore").chain(args.iter().copied());
    cairn_restore::run(cairn_restore::Cli::try_parse_from(argv).expect("args")).await
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An etcd process killed when dropped.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(data_dir: &Path, name: &str, client: u16, peer: u16, log: &Path) -> Etcd {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin("etcd"))
        .args(["--name", name, "--data-dir", data_dir.to_str().unwrap()])
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
        .args(["--initial-cluster", &format!("{name}={p}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start etcd");
    Etcd(child)
}

async fn connect_plain(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([endpoint], None).await
            && c.status().await.is_ok()
        {
            return c;
        }
        assert!(Instant::now() < deadline, "etcd at {endpoint} did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP proxy to `target` that cuts each connection after `limit` bytes from the server.
async fn cutting_proxy(target: String, limit: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            let target = target.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.into_split();
                let up = async { tokio::io::copy(&mut ri, &mut wo).await };
                let down = async {
                    let mut sent = 0;
                    let mut buf = vec![0u8; 16384];
                    while sent < limit {
                        let n = ro.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        let n = n.min(limit - sent);
                        wi.write_all(&buf[..n]).await?;
                        sent += n;
                    }
                    Ok::<_, std::io::Error>(())
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_snapshots_dedup_restore_exactly_and_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let t = repos::init(&url).await;
    let wk = t.write_key.to_text();
    let id = t.identity_text();
    let source = unique("etcd");
    let prefix = unique("/cairn-test/etcd-job");
    let mut client = etcd::client().await;
    let (ca, cert, keyf) =
        (env("CAIRN_TEST_ETCD_CACERT"), env("CAIRN_TEST_ETCD_CERT"), env("CAIRN_TEST_ETCD_KEY"));
    let endpoints = env("CAIRN_TEST_ETCD_ENDPOINTS");
    let job = |extra: Vec<String>| {
        let mut v: Vec<String> = ["--repo", &url, "--write-key", &wk, "--source", &source]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra);
        v
    };
    let tls = |ep: &str| -> Vec<String> {
        ["--endpoints", ep, "--cacert", &ca, "--cert", &cert, "--key", &keyf]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |v: Vec<String>| async move {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        snapshot_job(&refs).await
    };

    let t0 = Instant::now();
    write_keys(&mut client, &prefix, 0..KEYS, 1).await;
    eprintln!("wrote {KEYS} keys in {:?}", t0.elapsed());
    assert_eq!(run(job(tls(&endpoints))).await, Exit::Success);
    let repo = t.open_full().await;
    let first = repo.find_snapshot("latest", Some(&source)).await.unwrap();
    let meta = first.snapshot.meta["etcd"].clone();
    assert!(meta["revision"].as_i64().unwrap() > 0, "{meta}");
    assert_eq!(meta["member"]["name"], "tls0");

    // 1 % of the keys change: the second snapshot stores little.
    write_keys(&mut client, &prefix, (50..KEYS).step_by(100), 2).await; // small values only
    assert_eq!(run(job(tls(&endpoints))).await, Exit::Success);
    let second = repo.find_snapshot("latest", Some(&source)).await.unwrap();
    let s = &second.snapshot.summary;
    let share = s.new_bytes as f64 / s.bytes as f64;
    eprintln!(
        "etcd db {} bytes; second snapshot after 1 % changed stored {} new bytes ({:.2} %)",
        s.bytes,
        s.new_bytes,
        share * 100.0
    );
    assert!(share <= 0.10, "second snapshot stored {:.1} % of the db", share * 100.0);
    // It was recognised as a bbolt database from its first bytes and cut into its pages.
    repo.load_index().await.unwrap();
    let db = repo.lookup(&second.snapshot, "snapshot.db").await.unwrap();
    assert_eq!(db.pages, Some(4096), "etcd snapshot not cut into pages");

    // Restore the first snapshot through etcdutl and run a fresh etcd on it.
    let (cport, pport) = (free_port(), free_port());
    let peer = format!("http://127.0.0.1:{pport}");
    let out = tmp.path().join("snap.db");
    let data_dir = tmp.path().join("restored.etcd");
    let etcdutl = bin("etcdutl");
    let first_id = first.id.to_hex();
    let code = restore_job(&[
        "--repo",
        &url,
        "--identity",
        &id,
        "etcd",
        "--snapshot",
        &first_id,
        "--source",
        &source,
        "--output",
        out.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        "restored",
        "--initial-cluster",
        &format!("restored={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
        "--etcdutl",
        etcdutl.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Exit::Success);
    // The file is exactly what etcd streamed (its SHA-256 trailer intact).
    assert_eq!(std::fs::metadata(&out).unwrap().len(), first.snapshot.summary.bytes);
    let _etcd = start_etcd(&data_dir, "restored", cport, pport, &tmp.path().join("etcd.log"));
    let endpoint = format!("http://127.0.0.1:{cport}");
    let mut restored = connect_plain(&endpoint).await;
    let mut seen = 0usize;
    let mut from = key(&prefix, 0);
    let end = format!("{prefix}0"); // '/' + 1
    loop {
        let opts = GetOptions::new().with_range(end.as_str()).with_limit(200);
        let page = restored.get(from.as_str(), Some(opts)).await.unwrap();
        for kv in page.kvs() {
            let k = kv.key_str().unwrap();
            let i: usize = k.rsplit('/').next().unwrap().parse().unwrap();
            assert_eq!(kv.value(), value(i, 1).as_slice(), "{k}: a value of the first snapshot");
            seen += 1;
        }
        if !page.more() {
            break;
        }
        from = format!("{}\0", page.kvs().last().unwrap().key_str().unwrap());
    }
    assert_eq!(seen, KEYS, "every key of the first snapshot, nothing else");
    let rev = meta["revision"].as_i64().unwrap();
    let hash = restored.hash_kv(rev).await.unwrap();
    assert_eq!(u64::from(hash.hash()), meta["hash_kv"].as_u64().unwrap(), "HashKV at {rev}");

    // Password authentication instead of client certificates: the right password works, a
    // wrong one is refused (exit 4).
    restored.user_add("root", "s3cret", None).await.unwrap();
    restored.user_grant_role("root", "root").await.unwrap();
    restored.auth_enable().await.unwrap();
    let (good_pw, bad_pw) = (tmp.path().join("pw"), tmp.path().join("bad-pw"));
    std::fs::write(&good_pw, "s3cret\n").unwrap();
    std::fs::write(&bad_pw, "nope\n").unwrap();
    let with_password = |file: &Path| -> Vec<String> {
        let file = file.display().to_string();
        ["--endpoints", &endpoint, "--user", "root", "--password-file", &file]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(run(job(with_password(&bad_pw))).await, Exit::Integrity);
    let before = repo.snapshots().await.unwrap().len();
    assert_eq!(run(job(with_password(&good_pw))).await, Exit::Success);
    assert_eq!(repo.snapshots().await.unwrap().len(), before + 1);

    // An alarm on the only member: no snapshot, retryable.
    let mut restored = Client::connect(
        [endpoint.as_str()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "s3cret")),
    )
    .await
    .unwrap();
    let member = restored.status().await.unwrap().header().unwrap().member_id();
    let mut alarm = etcd_client::AlarmOptions::new();
    alarm.with_member(member);
    restored
        .alarm(etcd_client::AlarmAction::Activate, etcd_client::AlarmType::Nospace, Some(alarm))
        .await
        .unwrap();
    let before = repo.snapshots().await.unwrap().len();
    assert_eq!(run(job(with_password(&good_pw))).await, Exit::Retryable);

    // Unreachable, wrong CA, no client certificate, a stream cut mid-way: clean failures.
    assert_eq!(run(job(tls("https://127.0.0.1:1"))).await, Exit::Retryable);
    let wrong_ca: Vec<String> =
        ["--endpoints", &endpoints, "--cacert", &cert, "--cert", &cert, "--key", &keyf]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(run(job(wrong_ca)).await, Exit::Integrity);
    let no_cert: Vec<String> =
        ["--endpoints", &endpoints, "--cacert", &ca].iter().map(|s| s.to_string()).collect();
    assert_eq!(run(job(no_cert)).await, Exit::Integrity);
    let target = endpoints.trim_start_matches("https://").to_string();
    let port = cutting_proxy(target, 4 << 20).await;
    assert_eq!(run(job(tls(&format!("https://127.0.0.1:{port}")))).await, Exit::Retryable);
    assert_eq!(repo.snapshots().await.unwrap().len(), before, "no snapshot from any failure");

    // Leave the shared etcd small for the next run: delete, compact, defragment.
    let deleted = client
        .delete(prefix.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = deleted.header().unwrap().revision();
    client.compact(rev, None).await.unwrap();
    client.defragment().await.unwrap();
}
