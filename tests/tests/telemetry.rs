//! The jobs' telemetry against real receivers (#20): Prometheus from its Go module with its
//! OTLP receiver on, and Jaeger (an OpenTelemetry collector distribution) receiving OTLP
//! over gRPC, keeping the traces and passing the metrics on to Prometheus. Each test runs
//! real job binaries with the standard `OTEL_EXPORTER_OTLP_*` variables, then asks
//! Prometheus (PromQL over its HTTP API) and Jaeger (its query API) what arrived.
//!
//! Every run is told apart by a cluster name of its own (`CAIRN_CLUSTER`), so the tests can
//! share one Prometheus with each other and with earlier suite runs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::repo::lock::{Lock, LockKind, LockOptions};
use cairn_tests::prometheus::{one, query, wait_for};
use cairn_tests::repos::{self, TestRepo};
use cairn_tests::{bin, env, unique, workspace_bin};
use serde_json::Value;

/// How the run's telemetry leaves: straight into Prometheus' OTLP receiver over
/// HTTP/protobuf, or over gRPC to the collector.
enum Otlp {
    PrometheusHttp,
    CollectorGrpc,
}

impl Otlp {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Otlp::PrometheusHttp => vec![
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    format!("{}/api/v1/otlp/v1/metrics", env("CAIRN_TEST_PROMETHEUS")),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ],
            Otlp::CollectorGrpc => vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", env("CAIRN_TEST_OTLP_GRPC")),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ],
        }
    }
}

fn s3_url(prefix: &str) -> String {
    format!("s3://{}/{}", env("CAIRN_TEST_S3_BUCKET"), unique(prefix))
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Run a job binary with the repository's identity, the cluster name and the OTLP settings.
fn run_job(name: &str, args: &[&str], repo: &TestRepo, cluster: &str, otlp: &Otlp) -> Output {
    let mut cmd = Command::new(workspace_bin(name));
    cmd.args(args)
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text())
        .env("CAIRN_CLUSTER", cluster)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000");
    for (k, v) in otlp.env() {
        cmd.env(k, v);
    }
    cmd.output().expect("run the job")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `cairn backup DIR --source SOURCE` into the repository, with its identity.
fn backup_cmd(repo: &TestRepo, dir: &Path, source: &str) -> Command {
    let mut cmd = Command::new(workspace_bin("cairn"));
    cmd.args(["backup", dir.to_str().unwrap(), "--source", source])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text());
    cmd
}

fn small_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("etc/file{i}")), format!("{i} ").repeat(1000 + i)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_run_reaches_prometheus_over_http_with_its_outcome_bytes_and_last_success() {
    let repo = repos::init(&s3_url("otelhttp")).await;
    let cluster = unique("otel-http");
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    let before = now();
    let out = run_job(
        "cairn",
        &["--json", "backup", tmp.path().to_str().unwrap(), "--source", "files/etc"],
        &repo,
        &cluster,
        &Otlp::PrometheusHttp,
    );
    let after = now();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json_of(&out);
    let summary = &report["summary"];

    let sel = format!("{{cairn_cluster=\"{cluster}\"}}");
    let runs = wait_for(&format!("cairn_runs_total{sel}"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (labels, value) = &runs[0];
    assert_eq!(value, &1.0);
    assert_eq!(labels["job"], "cairn", "service.name becomes the job label: {labels:?}");
    assert_eq!(labels["cairn_source"], "files/etc");
    assert_eq!(labels["cairn_outcome"], "success");

    assert_eq!(
        one(&format!("cairn_backup_read_bytes_total{sel}")),
        summary["bytes_read"].as_f64().unwrap()
    );
    assert_eq!(one(&format!("cairn_backup_files_total{sel}")), 20.0);
    assert_eq!(
        one(&format!("cairn_backup_stored_bytes_total{sel}")),
        summary["new_bytes"].as_f64().unwrap()
    );
    assert_eq!(one(&format!("cairn_backup_failed_items_total{sel}")), 0.0);
    let last = one(&format!("cairn_last_success_timestamp_seconds{sel}"));
    assert!(before <= last && last <= after, "last success {last} outside [{before}, {after}]");
    let duration = one(&format!("cairn_run_duration_seconds{sel}"));
    assert!(duration > 0.0 && duration <= after - before, "{duration}");
    let ended = one(&format!(
        "cairn_run_end_timestamp_seconds{{cairn_cluster=\"{cluster}\",cairn_outcome=\"success\"}}"
    ));
    assert!(before <= ended && ended <= after);
    assert_eq!(one(&format!("cairn_lock_wait_seconds{sel}")), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_grpc_leaves_its_trace_in_the_collector_and_its_metrics_in_prometheus() {
    let repo = repos::init(&s3_url("otelgrpc")).await;
    let cluster = unique("otel-grpc");
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    let out = run_job(
        "cairn",
        &["backup", tmp.path().to_str().unwrap(), "--source", "files/grpc"],
        &repo,
        &cluster,
        &Otlp::CollectorGrpc,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The metrics went through the collector's pipeline into Prometheus.
    let runs = wait_for(&format!("cairn_runs_total{{cairn_cluster=\"{cluster}\"}}"));
    assert_eq!(runs[0].0["cairn_outcome"], "success");
    assert_eq!(runs[0].0["job"], "cairn");

    // The trace: the run's span, with the resource naming the job and the cluster.
    let tags = serde_json::json!({ "k8s.cluster.name": cluster }).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("{}/api/traces", env("CAIRN_TEST_JAEGER_QUERY")))
            .args(["--data-urlencode", "service=cairn", "--data-urlencode"])
            .arg(format!("tags={tags}"))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(t) = body["data"].as_array().and_then(|d| d.first()) {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "no trace of the run in Jaeger: {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let spans = trace["spans"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["operationName"] == "cairn"),
        "the run's span: {:?}",
        spans.iter().map(|s| &s["operationName"]).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_counted_by_its_exit_class_and_pushes_no_last_success() {
    // A prefix where no repository was ever made: the job fails at once.
    let made = repos::init(&s3_url("otelmade")).await;
    let missing = TestRepo { url: s3_url("otelnone"), ..made };
    let cluster = unique("otel-fail");
    let out = run_job(
        "cairn-etcd-snapshot",
        &["--endpoints", "http://127.0.0.1:9", "--source", "etcd"],
        &missing,
        &cluster,
        &Otlp::PrometheusHttp,
    );
    let code = out.status.code().unwrap();
    assert_ne!(code, 0);
    let runs = wait_for(&format!("cairn_runs_total{{cairn_cluster=\"{cluster}\"}}"));
    assert_eq!(runs.len(), 1);
    let outcome = &runs[0].0["cairn_outcome"];
    assert_eq!(
        outcome,
        cairn_core::Exit::from_code(code as u8).as_str(),
        "the outcome label is the exit class"
    );
    assert_eq!(runs[0].0["job"], "cairn-etcd-snapshot");
    assert!(
        query(&format!("cairn_last_success_timestamp_seconds{{cairn_cluster=\"{cluster}\"}}"))
            .is_empty(),
        "a failed run pushes no last success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_sigterm_is_recorded_as_interrupted_before_it_exits() {
    let repo = repos::init(&s3_url("otelterm")).await;
    let cluster = unique("otel-term");
    // An "etcd" that accepts connections and never answers: the job waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut cmd = Command::new(workspace_bin("cairn-etcd-snapshot"));
    cmd.args(["--endpoints", &endpoint, "--timeout", "120s", "--source", "etcd"])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_IDENTITY", repo.identity_text())
        .env("CAIRN_CLUSTER", &cluster)
        .env("CAIRN_SHUTDOWN_GRACE", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in Otlp::PrometheusHttp.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "interrupted runs exit retryable: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(12), "grace 1 s plus a bounded flush");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let runs =
        wait_for(&format!("cairn_runs_total{{cairn_cluster=\"{cluster}\",cairn_source=\"etcd\"}}"));
    assert_eq!(runs[0].0["cairn_outcome"], "interrupted");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_job_reports_sources_freshness_size_locks_and_its_check() {
    let repo = repos::init(&s3_url("otelmaint")).await;
    let cluster = unique("otel-maint");
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    let quiet = Otlp::PrometheusHttp;
    for source in ["files/a", "files/a", "files/b"] {
        let out =
            backup_cmd(&repo, tmp.path(), source).args(["--cluster", &cluster]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // A job that died holding its lock: the lease runs out, nobody releases it.
    let full = repo.open_full().await;
    let held = Lock::acquire(
        &full,
        LockKind::Source("files/crashed".into()),
        &LockOptions { lease: Duration::from_millis(300), ..LockOptions::default() },
    )
    .await
    .unwrap();
    drop(held);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = run_job("cairn-maintain", &["--json", "--no-prune"], &repo, &cluster, &quiet);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = full.config().id.to_string();
    let snapshots = full.snapshots().await.unwrap();
    let newest_a = snapshots
        .iter()
        .filter(|s| s.snapshot.source == "files/a")
        .map(|s| s.snapshot.time.unix_timestamp_nanos() as f64 / 1e9)
        .fold(0.0, f64::max);
    let repo_sel = format!("cairn_repository=\"{id}\"");
    let src = |s: &str| format!("{{{repo_sel},cairn_cluster=\"{cluster}\",cairn_source=\"{s}\"}}");
    assert_eq!(one(&format!("cairn_repository_snapshots{}", src("files/a"))), 2.0);
    assert_eq!(one(&format!("cairn_repository_snapshots{}", src("files/b"))), 1.0);
    let newest =
        one(&format!("cairn_repository_newest_snapshot_timestamp_seconds{}", src("files/a")));
    assert!((newest - newest_a).abs() < 0.001, "{newest} vs {newest_a}");
    let age = one(&format!("cairn_repository_newest_snapshot_age_seconds{}", src("files/a")));
    assert!(age > 0.0 && age < 600.0, "{age}");

    let packs = full.store().list_info("packs/").await.unwrap();
    assert_eq!(one(&format!("cairn_repository_packs{{{repo_sel}}}")), packs.len() as f64);
    assert_eq!(
        one(&format!("cairn_repository_size_bytes{{{repo_sel}}}")),
        packs.iter().map(|p| p.size).sum::<u64>() as f64
    );
    assert_eq!(one(&format!("cairn_repository_locks_expired{{{repo_sel}}}")), 1.0);
    assert_eq!(one(&format!("cairn_check_problems{{{repo_sel}}}")), 0.0);
    // The report says the same as the metrics.
    let report = json_of(&out);
    assert_eq!(report["repository"]["expired_locks"], 1);
    assert_eq!(report["repository"]["sources"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_neither_fails_nor_holds_up_a_job() {
    let repo = repos::init(&s3_url("oteldown")).await;
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    // A port nothing listens on, and one that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for endpoint in
        ["http://127.0.0.1:9".to_string(), format!("http://{}", silent.local_addr().unwrap())]
    {
        for protocol in ["grpc", "http/protobuf"] {
            let started = Instant::now();
            let out = backup_cmd(&repo, tmp.path(), "files/down")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{endpoint} {protocol}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Flush bound 8 s: the collector costs at most that on top of the backup.
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{endpoint} {protocol}: {:?}",
                started.elapsed()
            );
        }
    }
    // A protocol cairn does not speak is one line, and the job still runs.
    let out = backup_cmd(&repo, tmp.path(), "files/down")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"), "{stderr}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_serves_per_source_freshness_that_promtool_accepts() {
    let repo = repos::init(&s3_url("otelui")).await;
    let cluster = unique("otel-ui");
    let tmp = tempfile::tempdir().unwrap();
    small_tree(tmp.path());
    let out =
        backup_cmd(&repo, tmp.path(), "files/ui").args(["--cluster", &cluster]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut ui = Command::new(workspace_bin("cairn"))
        .args(["ui", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("CAIRN_REPO", &repo.url)
        .env("CAIRN_WRITE_KEY", repo.write_key.to_text())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ui.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("cairn ui output").unwrap();
        if line.contains("/metrics") {
            break line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
        }
    };
    let scrape = Command::new("curl").args(["-sS", "--max-time", "10", &url]).output().unwrap();
    let text = String::from_utf8(scrape.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("cairn_repository_snapshots{") && l.contains(&cluster))
        .unwrap_or_else(|| panic!("no series for the source: {text}"));
    assert!(line.contains("cairn_source=\"files/ui\"") && line.ends_with(" 1"), "{line}");
    // The exposition is what Prometheus parses: promtool's own linter accepts it.
    let mut check = Command::new(bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The main listener does not serve /metrics, and the metrics one nothing else.
    let other = url.replace("/metrics", "/api/snapshots");
    let code = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &other])
        .output()
        .unwrap();
    let _ = ui.kill();
    let _ = ui.wait();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "404");
}
