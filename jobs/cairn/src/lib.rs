//! The operator CLI.

use cairn_shared::{Exit, telemetry::TelemetryOptions};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Back up and restore Kubernetes clusters: the operator CLI"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format: auto (human on a terminal, JSON lines otherwise), human or json.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print version information as JSON.
    Version,
}

impl Cli {
    pub fn telemetry_options(&self) -> TelemetryOptions {
        TelemetryOptions {
            service: "cairn",
            default_level: match self.verbose {
                0 => "info".into(),
                1 => "debug".into(),
                _ => "trace".into(),
            },
            json: match self.log_format.as_str() {
                "json" => Some(true),
                "human" => Some(false),
                _ => None,
            },
        }
    }
}

pub async fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Version => {
            println!(
                "{}",
                serde_json::json!({"name": "cairn", "version": env!("CARGO_PKG_VERSION")})
            );
            Exit::Success
        }
    }
}
