//! cairn's shared library: the conventions every job follows (exit codes, telemetry,
//! error policy) and the repository itself.
//!
//! Library code emits `tracing` events and spans; it never installs a subscriber. Jobs call
//! [`telemetry::init`] once in `main`.

pub mod config;
pub mod error;
pub mod exit;
pub mod fs;
pub mod k8s;
pub mod progress;
pub mod records;
pub mod repo;
pub mod telemetry;

pub use error::{Error, Result};
pub use exit::Exit;
