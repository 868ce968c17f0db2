//! `cairn-restore`: parse → telemetry → run → exit code. Everything else lives in `lib.rs`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cairn_restore::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-restore: cannot start the async runtime: {e}");
            return cairn_core::Exit::Retryable.into();
        }
    };
    runtime.block_on(async {
        let telemetry = cairn_job::telemetry::init(&cli.telemetry_options());
        let exit = cairn_restore::run(cli).await;
        telemetry.shutdown();
        exit.into()
    })
}
