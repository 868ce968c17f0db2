//! Commands in application pods through `pods/exec`: backup hooks (their output kept as a
//! short tail) and streamed dumps (stdout is the backup; a restore feeds stdin). Each exec
//! has a deadline that covers connecting and running; at the deadline the stream is torn
//! down and the caller moves on. Kubernetes offers no way to kill an exec'd process: one that
//! ignores its closed streams may linger in the container (the hook's documentation says so).
//! Memory is bounded whatever the output size: stdout and stderr go through fixed buffers,
//! and streamed output through a bounded channel whose consumer sets the pace.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bytes of stderr (and a hook's stdout) kept: the end, where the reason usually is.
pub const TAIL_BYTES: usize = 1024;

/// One command in one container.
#[derive(Debug, Clone)]
pub struct Exec<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// `None`: the pod's only (or default) container.
    pub container: Option<&'a str>,
    pub command: &'a [String],
    pub timeout: Duration,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "detail")]
pub enum Ended {
    /// The command ran and exited with this status.
    Exited(i32),
    /// Cut off at the deadline.
    TimedOut,
    /// It could not be run, or the stream broke: the reason.
    Failed(String),
}

impl Ended {
    pub fn ok(&self) -> bool {
        *self == Ended::Exited(0)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(0) => write!(f, "succeeded"),
            Ended::Exited(c) => write!(f, "exited {c}"),
            Ended::TimedOut => write!(f, "timed out"),
            Ended::Failed(why) => write!(f, "could not run: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ended: Ended,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// Bytes the command wrote to stdout (streamed or not).
    pub stdout_bytes: u64,
    pub duration: Duration,
}

/// Where stdout goes.
enum Sink<'a> {
    /// Keep only the tail.
    Tail,
    /// Forward every chunk; a closed receiver (the consumer failed) ends the exec.
    Channel(&'a mpsc::Sender<io::Result<Bytes>>),
}

/// Run a command; keep the tails of its output.
pub async fn run(client: &kube::Client, e: &Exec<'_>) -> Outcome {
    exec(client, e, None, Sink::Tail).await
}

/// Run a command whose stdout is data: every chunk goes to `tx` (bounded: the consumer sets
/// the pace). The channel is left open; the caller closes it once it knows how the command
/// ended, so that a failed command can end the stream with an error.
pub async fn stdout_to(
    client: &kube::Client,
    e: &Exec<'_>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Outcome {
    exec(client, e, None, Sink::Channel(tx)).await
}

/// Run a command with `input` as its stdin, closed at its end. A command that stops reading
/// for `stall` fails the exec: kube-rs reads the exit status on the same loop that writes
/// stdin, so a command that exited without reading its whole input would otherwise hold the
/// exec until its deadline.
pub async fn stdin_from(
    client: &kube::Client,
    e: &Exec<'_>,
    input: mpsc::Receiver<io::Result<Bytes>>,
    stall: Duration,
) -> Outcome {
    exec(client, e, Some((input, stall)), Sink::Tail).await
}

async fn exec(
    client: &kube::Client,
    e: &Exec<'_>,
    input: Option<(mpsc::Receiver<io::Result<Bytes>>, Duration)>,
    sink: Sink<'_>,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        ended: Ended::TimedOut,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        stdout_bytes: 0,
        duration: Duration::ZERO,
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), e.namespace);
    let mut ap = AttachParams::default().stdin(input.is_some()).stdout(true).stderr(true);
    if let Some(c) = e.container {
        ap = ap.container(c);
    }
    let deadline = tokio::time::Instant::now() + e.timeout;
    let attached =
        tokio::time::timeout_at(deadline, api.exec(e.pod, e.command.to_vec(), &ap)).await;
    let mut proc = match attached {
        Err(_) => {
            outcome.duration = started.elapsed();
            return outcome;
        }
        Ok(Err(err)) => {
            outcome.ended = Ended::Failed(describe(&err, e));
            outcome.duration = started.elapsed();
            return outcome;
        }
        Ok(Ok(p)) => p,
    };
    let status = proc.take_status();
    let stdout = proc.stdout();
    let stderr = proc.stderr();
    let stdin = proc.stdin();
    let mut out_tail = Tail::default();
    let mut err_tail = Tail::default();
    let mut stdout_bytes = 0u64;
    let io = async {
        let feed = feed(stdin, input);
        let out = read_stdout(stdout, &sink, &mut out_tail, &mut stdout_bytes);
        let err = read_tail(stderr, &mut err_tail);
        // The first stream to fail ends the exec (the others are dropped, then aborted).
        tokio::try_join!(feed, out, err)?;
        io::Result::Ok(match status {
            Some(s) => s.await,
            None => None,
        })
    };
    match tokio::time::timeout_at(deadline, io).await {
        Err(_) => {
            proc.abort();
            outcome.ended = Ended::TimedOut;
        }
        Ok(Err(e)) => {
            proc.abort();
            outcome.ended = Ended::Failed(e.to_string());
        }
        Ok(Ok(status)) => outcome.ended = exit_of(status),
    }
    outcome.stdout_tail = out_tail.text();
    outcome.stderr_tail = err_tail.text();
    outcome.stdout_bytes = stdout_bytes;
    outcome.duration = started.elapsed();
    outcome
}

/// Copy `input` into the command's stdin, then close it. A failed input is an error, and
/// stdin is then not closed as if the input were whole (the command would take a truncated
/// input for a complete one): the caller tears the exec down instead.
async fn feed(
    stdin: Option<impl tokio::io::AsyncWrite + Unpin>,
    input: Option<(mpsc::Receiver<io::Result<Bytes>>, Duration)>,
) -> io::Result<()> {
    let (Some(mut w), Some((mut rx, stall))) = (stdin, input) else { return Ok(()) };
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| io::Error::other(format!("the input failed: {e}")))?;
        // A command that exits early closes its stdin: what it did not read is its
        // business; its exit status tells.
        match tokio::time::timeout(stall, w.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(io::Error::other(format!(
                    "the command has not read its input for {} (did it exit without reading \
                     it all?)",
                    humantime::format_duration(stall)
                )));
            }
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}

/// Read stdout to its end into `sink`, counting its bytes.
async fn read_stdout(
    stdout: Option<impl tokio::io::AsyncRead + Unpin>,
    sink: &Sink<'_>,
    tail: &mut Tail,
    bytes: &mut u64,
) -> io::Result<()> {
    let Some(mut r) = stdout else { return Ok(()) };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n =
            r.read(&mut buf).await.map_err(|e| io::Error::other(format!("reading stdout: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        *bytes += n as u64;
        match sink {
            Sink::Tail => tail.push(&buf[..n]),
            Sink::Channel(tx) => {
                if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the consumer stopped"));
                }
            }
        }
    }
}

/// Read a stream to its end, keeping its tail.
async fn read_tail(
    r: Option<impl tokio::io::AsyncRead + Unpin>,
    tail: &mut Tail,
) -> io::Result<()> {
    let Some(mut r) = r else { return Ok(()) };
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n =
            r.read(&mut buf).await.map_err(|e| io::Error::other(format!("reading stderr: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        tail.push(&buf[..n]);
    }
}

/// The exit status Kubernetes reports on the status channel: `Success`, or a failure whose
/// `ExitCode` cause holds the code; anything else (the binary missing, the container gone)
/// is a failure to run, with the server's message.
pub fn exit_of(status: Option<Status>) -> Ended {
    let Some(s) = status else {
        return Ended::Failed("the exec stream ended without an exit status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return Ended::Exited(0);
    }
    let code = s
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref()?.parse().ok());
    match code {
        Some(c) => Ended::Exited(c),
        None => Ended::Failed(s.message.unwrap_or_else(|| "no reason given".into())),
    }
}

fn describe(err: &kube::Error, e: &Exec<'_>) -> String {
    use kube::client::UpgradeConnectionError as U;
    let what = format!("exec in {}/{}", e.namespace, e.pod);
    match err {
        kube::Error::UpgradeConnection(U::ProtocolSwitch(code)) if code.as_u16() == 403 => {
            format!(
                "{what}: denied (403): the ServiceAccount needs `get` and `create` on pods/exec"
            )
        }
        kube::Error::UpgradeConnection(U::ProtocolSwitch(code)) if code.as_u16() == 404 => {
            format!("{what}: the pod is gone (404)")
        }
        kube::Error::Api(s) if s.code == 403 => {
            format!(
                "{what}: denied (403): the ServiceAccount needs `get` and `create` on pods/exec"
            )
        }
        other => format!("{what}: {other}"),
    }
}

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn exit_codes_come_from_the_status_channel() {
        let ok = Status { status: Some("Success".into()), ..Default::default() };
        assert_eq!(exit_of(Some(ok)), Ended::Exited(0));
        let failed = Status {
            status: Some("Failure".into()),
            message: Some("command terminated with non-zero exit code: 3".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_of(Some(failed)), Ended::Exited(3));
        let missing = Status {
            status: Some("Failure".into()),
            message: Some("exec: \"nope\": executable file not found in $PATH".into()),
            ..Default::default()
        };
        assert!(matches!(exit_of(Some(missing)), Ended::Failed(m) if m.contains("not found")));
        assert!(matches!(exit_of(None), Ended::Failed(_)));
    }

    #[test]
    fn a_tail_keeps_the_end() {
        let mut t = Tail::default();
        t.push(&[b'a'; 2000]);
        t.push(b"the reason");
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("the reason"));
    }
}
