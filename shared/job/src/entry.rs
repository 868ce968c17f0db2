//! The one `main` every job binary runs: parse flags, start the async runtime and telemetry,
//! run, flush telemetry, exit with the run's code.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_core::Exit;

use crate::metrics::{self, SourceRun};
use crate::telemetry::{self, TelemetryOptions};

/// How long a job may take to end on its own after SIGTERM (cleaning up what it created)
/// before it is cut off. Below Kubernetes' default grace period of 30 s, so that what
/// follows (recording the interruption, the telemetry flush) happens before SIGKILL.
/// A job that cleans up on its own after SIGTERM asks for more ([`JobCli::term_grace`]);
/// `CAIRN_SHUTDOWN_GRACE` overrides both (match it to `terminationGracePeriodSeconds`).
pub const TERM_GRACE: Duration = Duration::from_secs(15);

fn term_grace(default: Duration) -> Duration {
    std::env::var("CAIRN_SHUTDOWN_GRACE")
        .ok()
        .and_then(|v| cairn_core::parse::duration(&v).ok())
        .unwrap_or(default)
}
/// The same after SIGINT: someone at a terminal wants it to stop now.
const INT_GRACE: Duration = Duration::from_secs(1);

/// A job's command line: how it names itself to telemetry.
pub trait JobCli: clap::Parser {
    fn telemetry_options(&self) -> TelemetryOptions;

    /// The cluster and source a run of this command backs up, for the metrics of a run
    /// cut off by a signal before it could say so itself.
    fn metric_scope(&self) -> (Option<String>, Option<String>) {
        (None, None)
    }

    /// How long this command may take to end on its own after SIGTERM.
    fn term_grace(&self) -> Duration {
        TERM_GRACE
    }
}

/// Parse `C` from the process arguments (clap exits 2 with usage on bad flags), then run.
///
/// A signal (a Job's deadline, a node drain) does not simply kill the process: the job gets
/// [`TERM_GRACE`] to end on its own, and if it does not, the run is recorded as
/// `interrupted` and telemetry is flushed, so the failure is visible where its metrics go.
pub fn run_main<C, F>(run: impl FnOnce(C) -> F) -> ExitCode
where
    C: JobCli,
    F: std::future::Future<Output = Exit>,
{
    let cli = C::parse();
    let options = cli.telemetry_options();
    let (cluster, source) = cli.metric_scope();
    let grace_after_term = term_grace(cli.term_grace());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", options.service);
            return Exit::Retryable.into();
        }
    };
    runtime.block_on(async {
        let telemetry = telemetry::init(&options);
        let started = Instant::now();
        // One span around the run: the trace every other span of the job hangs from.
        let job = tracing::Instrument::instrument(
            run(cli),
            tracing::info_span!("run", otel.name = options.service),
        );
        let mut job = Box::pin(job);
        let exit = tokio::select! {
            exit = &mut job => exit,
            signal = crate::signal::shutdown() => {
                let grace = if signal == "SIGINT" { INT_GRACE } else { grace_after_term };
                match tokio::time::timeout(grace, &mut job).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        eprintln!(
                            "{}: {signal}: stopped before the run ended (nothing half-written \
                             is ever used; locks run out with their lease)",
                            options.service
                        );
                        metrics::record_runs(&[SourceRun {
                            cluster,
                            source,
                            outcome: "interrupted".into(),
                            seconds: started.elapsed().as_secs_f64(),
                            ..SourceRun::default()
                        }]);
                        Exit::Retryable
                    }
                }
            }
        };
        // The run's span ends when its future is dropped: before the flush, or it is lost.
        drop(job);
        telemetry.shutdown();
        exit.into()
    })
}
