//! The etcd snapshot job: pick a healthy member (a follower, to spare the leader), stream
//! its Maintenance snapshot straight into the repository (chunked as it arrives, memory
//! bounded whatever the database size), verify the SHA-256 trailer etcd appends, record what
//! a restore needs to check itself (revision, raft index, `HashKV`), and commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cairn_core::fs::stream::{Sha256Trailer, channel};
use cairn_core::fs::{BackupOptions, backup_stream};
use cairn_core::progress::human_bytes;
use cairn_core::repo::lock::BackupLocks;
use cairn_core::repo::short_id;
use cairn_core::{Error, Exit};
use cairn_job::config::{ChunkingArgs, LockArgs, Need, RepoArgs, SnapshotLabels};
use cairn_job::report::{self, JobReport, Report};
use cairn_job::telemetry::{OutputArgs, TelemetryOptions};
use clap::Parser;
use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions,
};
use serde::Serialize;

/// The file name of the database inside an etcd snapshot.
pub use cairn_core::records::ETCD_DB_FILE as DB_FILE;

fn parse_duration(s: &str) -> Result<Duration, String> {
    cairn_job::config::parse_duration(s)
}

#[derive(Debug, Parser)]
#[command(
    name = "cairn-etcd-snapshot",
    version,
    about = "Stream an etcd snapshot into a cairn repository",
    long_about = "Stream an etcd snapshot into a cairn repository.\n\n\
        Probes every endpoint (Status, alarms), picks a healthy member, preferring a follower \
        to spare the leader (--member overrides), streams its Maintenance snapshot into the \
        repository as `snapshot.db` without a local copy, verifies the SHA-256 etcd appends, \
        and records version, cluster and member ids, revision, raft index/term, db sizes and \
        HashKV at the snapshot revision.\n\n\
        On a kubeadm control plane use the API server's etcd client certificate: \
        --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/apiserver-etcd-client.crt \
        --key /etc/kubernetes/pki/apiserver-etcd-client.key.\n\n\
        Exit codes: 0 ok, 1 retryable (unreachable, no healthy member, stream cut), 2 usage, \
        4 TLS/authentication refused or integrity (SHA-256 mismatch), 5 another snapshot of \
        this source is running."
)]
pub struct Cli {
    #[command(flatten)]
    pub repo: RepoArgs,
    // The snapshot is recognised as a bbolt database and cut into its 4 KiB pages;
    // `--no-page-detect` goes back to content-defined chunks.
    #[command(flatten)]
    pub chunking: ChunkingArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// etcd client URLs, comma separated (https://… for TLS).
    #[arg(long, env = "CAIRN_ETCD_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// CA bundle that signed the etcd server certificates.
    #[arg(long, env = "CAIRN_ETCD_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "CAIRN_ETCD_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "CAIRN_ETCD_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// User name, for etcd with authentication instead of client certificates.
    #[arg(long, env = "CAIRN_ETCD_USER", requires = "password_file")]
    pub user: Option<String>,
    /// File holding the password of --user.
    #[arg(long, env = "CAIRN_ETCD_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Snapshot this member (name, hex id or client URL) instead of choosing one.
    #[arg(long, env = "CAIRN_ETCD_MEMBER")]
    pub member: Option<String>,
    /// Per-request timeout for probes, and for connecting.
    #[arg(long, env = "CAIRN_ETCD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Give up when the snapshot stream sends nothing for this long.
    #[arg(long, env = "CAIRN_ETCD_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Snapshot source name.
    #[arg(long, env = "CAIRN_SOURCE", default_value = "etcd")]
    pub source: String,
    #[command(flatten)]
    pub labels: SnapshotLabels,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl cairn_job::JobCli for Cli {
    fn telemetry_options(&self) -> TelemetryOptions {
        self.output.telemetry("cairn-etcd-snapshot")
    }

    fn metric_scope(&self) -> (Option<String>, Option<String>) {
        (self.labels.cluster.clone(), Some(self.source.clone()))
    }
}

/// What the job learnt about one member (recorded in the snapshot).
pub use cairn_core::records::EtcdMember as Member;
/// Facts recorded in the snapshot (`meta.etcd`), so a restore can be checked.
pub use cairn_core::records::EtcdRecord as EtcdMeta;
use cairn_core::records::SnapshotRecord;

/// Why a member should not be snapshotted, if it should not.
fn problem(m: &Member) -> Option<String> {
    if !m.alarms.is_empty() {
        Some(format!("alarm {}", m.alarms.join(",")))
    } else if !m.errors.is_empty() {
        Some(format!("errors: {}", m.errors.join("; ")))
    } else {
        None
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub snapshot: Option<String>,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub db_bytes: u64,
    pub new_bytes: u64,
    /// Share of the database that was already in the repository.
    pub dedup_ratio: f64,
    pub etcd: Option<EtcdMeta>,
}

/// Map an etcd client error onto cairn's policy: refused TLS or credentials are not worth
/// retrying (exit 4); anything else about reaching the member is (exit 1).
pub fn classify(context: &str, e: etcd_client::Error) -> Error {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let lower = text.to_lowercase();
    let denied = [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "handshake",
        "x509",
        "authentication failed",
        "permission denied",
        "invalid auth token",
        "user name is empty",
    ];
    if let etcd_client::Error::GRpcStatus(st) = &e
        // gRPC codes 7 (PERMISSION_DENIED) and 16 (UNAUTHENTICATED).
        && matches!(i32::from(st.code()), 7 | 16)
    {
        return Error::Denied(format!("{context}: {text}"));
    }
    if denied.iter().any(|w| lower.contains(w)) {
        Error::Denied(format!("{context}: {text}"))
    } else {
        Error::Retryable(format!("{context}: {text}"))
    }
}

fn read_file(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Invalid(format!("{what} {}: {e}", path.display())))
}

impl Cli {
    fn connect_options(&self, with_timeout: bool) -> Result<ConnectOptions, Error> {
        let mut o = ConnectOptions::new().with_connect_timeout(self.timeout);
        if with_timeout {
            o = o.with_timeout(self.timeout);
        }
        let tls_wanted = self.cacert.is_some()
            || self.cert.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read_file(ca, "CA")?));
            }
            if let (Some(c), Some(k)) = (&self.cert, &self.key) {
                tls = tls.identity(Identity::from_pem(
                    read_file(c, "client certificate")?,
                    read_file(k, "client key")?,
                ));
            }
            o = o.with_tls(tls);
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password_file) {
            let pw = std::fs::read_to_string(p)
                .map_err(|e| Error::Invalid(format!("password file {}: {e}", p.display())))?;
            o = o.with_user(u.clone(), pw.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(o)
    }
}

async fn connect(
    endpoint: &str,
    opts: &ConnectOptions,
    timeout: Duration,
) -> Result<Client, Error> {
    match tokio::time::timeout(timeout, Client::connect([endpoint], Some(opts.clone()))).await {
        Ok(r) => r.map_err(|e| classify(&format!("connecting to {endpoint}"), e)),
        Err(_) => {
            Err(Error::Retryable(format!("connecting to {endpoint}: timed out after {timeout:?}")))
        }
    }
}

/// Without a client certificate, a server that requires one may just close the TLS
/// connection (TLS 1.3 reports the refusal after the handshake): say so, as a denial.
fn explain_closed_tls(cli: &Cli, e: Error) -> Error {
    match e {
        Error::Retryable(m)
            if cli.cert.is_none()
                && (cli.cacert.is_some() || m.contains("https://"))
                && ["broken pipe", "connection reset", "closed", "cancel", "unexpected eof"]
                    .iter()
                    .any(|w| m.to_lowercase().contains(w)) =>
        {
            Error::Denied(format!(
                "{m} (the server closed the TLS connection: it likely requires a client \
                 certificate; pass --cert and --key)"
            ))
        }
        other => other,
    }
}

/// Status of every endpoint, with names and alarms.
async fn probe(cli: &Cli, opts: &ConnectOptions) -> (Vec<Member>, Vec<(String, Error)>) {
    let mut members = Vec::new();
    let mut failures = Vec::new();
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut alarms: HashMap<u64, Vec<String>> = HashMap::new();
    let mut cluster_facts_done = false;
    for ep in &cli.endpoints {
        let result = async {
            let mut c = connect(ep, opts, cli.timeout).await?;
            let st = c.status().await.map_err(|e| classify(&format!("status of {ep}"), e))?;
            if !cluster_facts_done {
                if let Ok(list) = c.member_list().await {
                    for m in list.members() {
                        names.insert(m.id(), m.name().to_string());
                    }
                }
                let a = c
                    .alarm(AlarmAction::Get, AlarmType::None, None)
                    .await
                    .map_err(|e| classify(&format!("alarms via {ep}"), e))?;
                for am in a.alarms() {
                    alarms
                        .entry(am.member_id())
                        .or_default()
                        .push(format!("{:?}", am.alarm()).to_uppercase());
                }
                cluster_facts_done = true;
            }
            let header = st
                .header()
                .ok_or_else(|| Error::Retryable(format!("status of {ep}: no header")))?;
            let id = header.member_id();
            Ok::<Member, Error>(Member {
                endpoint: ep.clone(),
                id: format!("{id:x}"),
                name: names.get(&id).cloned().unwrap_or_default(),
                version: st.version().to_string(),
                cluster_id: format!("{:x}", header.cluster_id()),
                leader: st.leader() == id,
                learner: st.is_learner(),
                raft_index: st.raft_index(),
                raft_term: st.raft_term(),
                db_size: st.db_size(),
                db_size_in_use: st.raft_used_db_size(),
                errors: st.errors().to_vec(),
                alarms: alarms.get(&id).cloned().unwrap_or_default(),
            })
        }
        .await;
        match result {
            Ok(m) => members.push(m),
            Err(e) => failures.push((ep.clone(), explain_closed_tls(cli, e))),
        }
    }
    (members, failures)
}

/// Pick the member to snapshot, and say why.
pub fn choose(members: &[Member], wanted: Option<&str>) -> Result<(Member, String), Error> {
    if let Some(w) = wanted {
        let m = members
            .iter()
            .find(|m| m.name == w || m.id == w.trim_start_matches("0x") || m.endpoint == w)
            .ok_or_else(|| {
                Error::NotFound(format!("member {w:?} is not among the reachable members"))
            })?;
        if let Some(p) = problem(m) {
            return Err(Error::Retryable(format!(
                "member {} ({}) is unhealthy: {p}",
                m.name, m.endpoint
            )));
        }
        return Ok((m.clone(), format!("requested with --member {w}")));
    }
    let mut healthy: Vec<&Member> = members.iter().filter(|m| problem(m).is_none()).collect();
    if healthy.is_empty() {
        let why: Vec<String> = members
            .iter()
            .map(|m| format!("{} ({}): {}", m.name, m.endpoint, problem(m).unwrap_or_default()))
            .collect();
        return Err(Error::Retryable(format!("no healthy etcd member: {}", why.join("; "))));
    }
    // Followers first (spare the leader), voters before learners, most up to date first.
    healthy.sort_by_key(|m| (m.leader, m.learner, std::cmp::Reverse(m.raft_index)));
    let m = healthy[0];
    let why = match (m.leader, members.len()) {
        (false, _) => format!(
            "healthy follower with raft index {} (of {} members reachable; the leader is spared)",
            m.raft_index,
            members.len()
        ),
        (true, 1) => "the only reachable member (healthy)".to_string(),
        (true, _) => "the leader: no healthy follower was reachable".to_string(),
    };
    Ok((m.clone(), why))
}

pub async fn run(cli: Cli) -> Exit {
    let summary = Summary {
        source: cli.source.clone(),
        cluster: cli.labels.cluster.clone(),
        ..Default::default()
    };
    let report = report::run(PROG, summary, async |s: &mut Summary| {
        snapshot(&cli, s).await.map(|()| Exit::Success)
    })
    .await;
    report.print(PROG, cli.output.json);
    report.exit_class()
}

const PROG: &str = "cairn-etcd-snapshot";

impl JobReport for Summary {
    fn runs(r: &Report<Self>) -> Vec<cairn_job::metrics::SourceRun> {
        vec![cairn_job::metrics::SourceRun {
            read_bytes: Some(r.db_bytes),
            files: Some(u64::from(r.snapshot.is_some())),
            stored_bytes: Some(r.new_bytes),
            failed_items: Some(0),
            ..r.run_facts(r.cluster.as_deref(), Some(&r.source))
        }]
    }

    fn render(r: &Report<Self>) -> String {
        use std::fmt::Write;
        let s = &r.job;
        let Some(id) = &s.snapshot else { return String::new() };
        let mut out = String::new();
        let secs = r.seconds();
        let _ = writeln!(out, "etcd snapshot {} saved ({})", short_id(id), s.source);
        if let Some(m) = &s.etcd {
            let _ = writeln!(
                out,
                "  member {} ({}) v{}: {}",
                m.member.name, m.member.endpoint, m.member.version, m.chosen_because
            );
            let _ = writeln!(
                out,
                "  revision {}  raft index {}  HashKV {:08x}",
                m.revision, m.member.raft_index, m.hash_kv
            );
        }
        let _ = writeln!(
            out,
            "  db {}  new {}  dedup {:.1} %  {:.1}s ({}/s)",
            human_bytes(s.db_bytes),
            human_bytes(s.new_bytes),
            s.dedup_ratio * 100.0,
            secs,
            human_bytes((s.db_bytes as f64 / secs.max(0.001)) as u64)
        );
        out
    }
}

async fn snapshot(cli: &Cli, summary: &mut Summary) -> anyhow::Result<()> {
    let probe_opts = cli.connect_options(true)?;
    let stream_opts = cli.connect_options(false)?;
    let (members, failures) = probe(cli, &probe_opts).await;
    for (ep, e) in &failures {
        tracing::warn!(endpoint = %ep, error = %e, "endpoint did not answer");
    }
    if members.is_empty() {
        // Report the most telling cause: a refused certificate beats a timeout.
        let (ep, e) = failures
            .into_iter()
            .max_by_key(|(_, e)| matches!(e, Error::Denied(_)))
            .ok_or_else(|| cairn_core::exit::usage("no endpoint given"))?;
        return Err(e).context(format!("no etcd endpoint answered (last tried {ep})"));
    }
    let (member, why) = choose(&members, cli.member.as_deref())?;
    tracing::info!(member = %member.name, endpoint = %member.endpoint, reason = %why, "snapshotting");

    let repo = Arc::new(cli.repo.open(Need::Write).await.context("opening the repository")?);
    let lock_source = cli.labels.lock_source(&cli.source);
    let locks = BackupLocks::acquire(&repo, &lock_source, &cli.lock.options("etcd snapshot"))
        .await
        .with_context(|| format!("locking source {lock_source}"))?;
    let result = stream_and_commit(cli, summary, &repo, &locks, &member, why, &stream_opts).await;
    let released = locks.release().await;
    result?;
    released.context("releasing locks")?;
    Ok(())
}

struct StreamFacts {
    revision: i64,
    bytes: u64,
    sha256: [u8; 32],
}

/// Forward etcd's snapshot stream into the backup's reader, verifying etcd's SHA-256 trailer
/// as it passes; every failure is also sent down the channel, so the reader fails with it.
/// `tx` drops at the end: end of stream for the reader, after a verified trailer only.
async fn pump(
    mut stream: etcd_client::SnapshotStreaming,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    stall: Duration,
    endpoint: String,
    start_revision: i64,
) -> Result<StreamFacts, Error> {
    let mut check = Sha256Trailer::default();
    let mut revision = start_revision;
    let mut remaining = None;
    let fail = |msg: String| async {
        let _ = tx.send(Err(std::io::Error::other(msg.clone()))).await;
        msg
    };
    loop {
        let next = match tokio::time::timeout(stall, stream.message()).await {
            Err(_) => {
                return Err(Error::Retryable(
                    fail(format!("snapshot stream from {endpoint} stalled for {stall:?}")).await,
                ));
            }
            Ok(Err(e)) => {
                // The connection was accepted and the stream started: whatever breaks it
                // now (a member going away, a cut connection) is worth a retry.
                let e = Error::Retryable(format!("snapshot stream from {endpoint}: {e}"));
                fail(e.to_string()).await;
                return Err(e);
            }
            Ok(Ok(m)) => m,
        };
        let Some(msg) = next else { break };
        if let Some(h) = msg.header()
            && h.revision() > revision
        {
            revision = h.revision();
        }
        remaining = Some(msg.remaining_bytes());
        check.update(msg.blob());
        if tx.send(Ok(Bytes::copy_from_slice(msg.blob()))).await.is_err() {
            return Err(Error::Retryable("the repository side stopped reading".into()));
        }
    }
    if remaining != Some(0) {
        let m = format!(
            "snapshot stream from {endpoint} ended early after {} bytes ({} announced as remaining)",
            check.total(),
            remaining.map_or("unknown".into(), |r| r.to_string())
        );
        return Err(Error::Retryable(fail(m).await));
    }
    let bytes = check.total();
    match check.finish() {
        Ok(sha256) => Ok(StreamFacts { revision, bytes, sha256 }),
        Err(m) => Err(Error::Integrity(fail(format!("snapshot from {endpoint}: {m}")).await)),
    }
}

async fn stream_and_commit(
    cli: &Cli,
    summary: &mut Summary,
    repo: &Arc<cairn_core::repo::Repository>,
    locks: &BackupLocks,
    member: &Member,
    why: String,
    opts: &ConnectOptions,
) -> anyhow::Result<()> {
    let mut client = connect(&member.endpoint, opts, cli.timeout).await?;
    // The store revision just before the stream starts: the snapshot holds at least it, and
    // HashKV at it can be recomputed on a restored member. (Snapshot responses carry no
    // revision.)
    let start_revision = client
        .status()
        .await
        .map_err(|e| classify(&format!("status of {}", member.endpoint), e))?
        .header()
        .map_or(0, |h| h.revision());
    let stream = client
        .snapshot()
        .await
        .map_err(|e| classify(&format!("snapshot from {}", member.endpoint), e))?;
    let (tx, reader) = channel(8);
    let stall = cli.stall_timeout;
    let endpoint = member.endpoint.clone();
    let producer = tokio::spawn(pump(stream, tx, stall, endpoint, start_revision));

    let opts = BackupOptions {
        source: cli.source.clone(),
        cluster: cli.labels.cluster.clone(),
        tags: cli.labels.tag_map(),
        guard: Some(locks.guard()),
        chunking: cli.chunking.policy(),
        ..Default::default()
    };
    let prepared = backup_stream(repo.clone(), Box::new(reader), DB_FILE, opts).await;
    let facts = producer.await.map_err(|e| Error::Retryable(format!("stream task: {e}")))?;
    // The stream's own error explains a failed backup best.
    let facts = facts?;
    let mut prepared = prepared.context("storing the snapshot")?;

    let hash = client.hash_kv(facts.revision).await.map_err(|e| {
        classify(&format!("HashKV at revision {} on {}", facts.revision, member.endpoint), e)
    })?;
    let meta = EtcdMeta {
        member: member.clone(),
        chosen_because: why,
        revision: facts.revision,
        hash_kv: hash.hash(),
        hash_kv_compact_revision: hash.compact_version(),
        stream_bytes: facts.bytes,
        sha256: hex::encode(facts.sha256),
    };
    prepared.snapshot.meta = cairn_core::records::EtcdMeta { etcd: meta.clone() }.to_meta();
    let out =
        prepared.commit(repo, Some(&locks.guard())).await.context("committing the snapshot")?;
    let s = &out.snapshot.summary;
    summary.snapshot = Some(out.id.to_hex());
    summary.db_bytes = s.bytes;
    summary.new_bytes = s.new_bytes;
    summary.dedup_ratio =
        if s.bytes > 0 { 1.0 - (s.new_bytes as f64 / s.bytes as f64).min(1.0) } else { 0.0 };
    summary.etcd = Some(meta);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, leader: bool, raft_index: u64) -> Member {
        Member {
            endpoint: format!("https://{name}:2379"),
            id: format!("{:x}", name.len() * 1000 + raft_index as usize),
            name: name.into(),
            version: "3.6.16".into(),
            cluster_id: "c".into(),
            leader,
            learner: false,
            raft_index,
            raft_term: 2,
            db_size: 1,
            db_size_in_use: 1,
            errors: vec![],
            alarms: vec![],
        }
    }

    #[test]
    fn a_follower_is_preferred_and_the_most_up_to_date_one() {
        let ms = vec![member("a", true, 100), member("b", false, 90), member("c", false, 99)];
        let (m, why) = choose(&ms, None).unwrap();
        assert_eq!(m.name, "c");
        assert!(why.contains("follower") && why.contains("leader is spared"), "{why}");
    }

    #[test]
    fn unhealthy_members_are_skipped_and_the_leader_is_the_last_resort() {
        let mut b = member("b", false, 100);
        b.alarms = vec!["NOSPACE".into()];
        let mut c = member("c", false, 100);
        c.errors = vec!["slow disk".into()];
        let ms = vec![member("a", true, 100), b, c];
        let (m, why) = choose(&ms, None).unwrap();
        assert_eq!(m.name, "a");
        assert!(why.contains("leader"), "{why}");
        let mut a = member("a", true, 100);
        a.alarms = vec!["CORRUPT".into()];
        let err = choose(&[a, ms[1].clone()], None).unwrap_err();
        assert!(matches!(err, Error::Retryable(_)) && err.to_string().contains("NOSPACE"), "{err}");
    }

    #[test]
    fn member_override_by_name_id_or_endpoint() {
        let ms = vec![member("a", true, 100), member("b", false, 90)];
        assert_eq!(choose(&ms, Some("a")).unwrap().0.name, "a");
        assert_eq!(choose(&ms, Some(&ms[1].id)).unwrap().0.name, "b");
        assert_eq!(choose(&ms, Some("https://b:2379")).unwrap().0.name, "b");
        assert!(matches!(choose(&ms, Some("zz")), Err(Error::NotFound(_))));
    }
}
