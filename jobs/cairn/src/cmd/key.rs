//! `cairn key`: age identities.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cairn_core::exit::{Exit, usage};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an age X25519 identity; prints its public key (the recipient).
    Generate {
        /// Where to write the identity (created readable by its owner only; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn run(command: KeyCommand) -> Result<Exit> {
    match command {
        KeyCommand::Generate { out } => {
            // The public key is the whole output, with or without --json.
            println!("{}", generate(&out)?);
            Ok(Exit::Success)
        }
    }
}

/// Write a new identity to `out`; its public key.
fn generate(out: &Path) -> Result<String> {
    use age::secrecy::ExposeSecret;
    if out.exists() {
        return Err(usage(format!("{} exists; refusing to overwrite an identity", out.display())));
    }
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    super::write_secret_file(
        out,
        &format!(
            "# created: {created}\n# public key: {public}\n{}\n",
            id.to_string().expose_secret()
        ),
    )?;
    Ok(public)
}
