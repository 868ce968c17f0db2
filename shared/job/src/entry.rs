//! The one `main` every job binary runs: parse flags, start the async runtime and telemetry,
//! run, flush telemetry, exit with the run's code.

use std::process::ExitCode;

use cairn_core::Exit;

use crate::telemetry::{self, TelemetryOptions};

/// A job's command line: how it names itself to telemetry.
pub trait JobCli: clap::Parser {
    fn telemetry_options(&self) -> TelemetryOptions;
}

/// Parse `C` from the process arguments (clap exits 2 with usage on bad flags), then run.
pub fn run_main<C, F>(run: impl FnOnce(C) -> F) -> ExitCode
where
    C: JobCli,
    F: std::future::Future<Output = Exit>,
{
    let cli = C::parse();
    let options = cli.telemetry_options();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", options.service);
            return Exit::Retryable.into();
        }
    };
    runtime.block_on(async {
        let telemetry = telemetry::init(&options);
        let exit = run(cli).await;
        telemetry.shutdown();
        exit.into()
    })
}
