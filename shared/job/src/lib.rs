//! The conventions every cairn job follows: repository and lock flags parsed once into
//! validated structs, one report with one way to print it, telemetry set up once in
//! `main`, the shutdown signal.

pub mod config;
mod entry;
pub use entry::{JobCli, TERM_GRACE, run_main};
pub mod metrics;
pub mod report;
pub mod signal;
pub mod telemetry;

/// Every job links this crate, so this is the allocator of every static binary we ship.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
