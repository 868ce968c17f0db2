//! `cairn version`: the CLI's and the repository format's versions, always as one JSON line.

use anyhow::Result;
use cairn_core::exit::Exit;

pub(crate) fn run() -> Result<Exit> {
    println!(
        "{}",
        serde_json::json!({
            "name": "cairn",
            "version": env!("CARGO_PKG_VERSION"),
            "format": cairn_core::repo::FORMAT_VERSION,
        })
    );
    Ok(Exit::Success)
}
