//! cairn's shared library: the conventions every job follows (exit codes, telemetry,
//! error policy) and, in later modules, the repository itself.
//!
//! Library code emits `tracing` events and spans; it never installs a subscriber. Jobs call
//! [`telemetry::init`] once in `main`.

pub mod error;
pub mod exit;
pub mod telemetry;

pub use error::{Error, Result};
pub use exit::Exit;
