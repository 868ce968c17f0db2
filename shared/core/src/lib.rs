//! cairn's repository core: the format (chunks, packs, index, trees, snapshots, locks),
//! its maintenance (forget, prune, check), the file sources and sinks that read and write
//! it, the records jobs leave in snapshots, and the error policy. No Kubernetes, no command
//! line, no telemetry exporters: every job and the fuzzers link this alone.
//!
//! Library code emits `tracing` events and spans; it never installs a subscriber.

pub mod error;
pub mod exit;
pub mod filter;
pub mod fs;
pub mod host;
pub mod parse;
pub mod progress;
pub mod records;
pub mod repo;

pub use error::{Error, Result};
pub use exit::Exit;
