//! `cairn init`: create a repository and its write key.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_core::exit::{Exit, usage};
use cairn_core::repo::{InitOptions, KeyRecipient, Repository};
use cairn_job::config::RepoArgs;

use super::{Mode, Render, emit};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// age (age1…) or SSH public key that can open the repository. Repeatable.
    #[arg(long = "recipient", env = "CAIRN_RECIPIENTS", value_delimiter = ',')]
    pub recipients: Vec<String>,
    /// File with one recipient per line (# comments allowed).
    #[arg(long)]
    pub recipient_file: Vec<PathBuf>,
    /// Where to write the write credential for backup jobs.
    #[arg(long, env = "CAIRN_WRITE_KEY_OUT")]
    pub write_key_out: PathBuf,
    /// zstd level for blobs (1-22).
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// Create the repository even if the store ignores If-None-Match (single writer only).
    #[arg(long)]
    pub unsafe_no_conditional_writes: bool,
}

/// A created repository.
struct Created {
    id: cairn_core::repo::RepoId,
    url: String,
    write_key: PathBuf,
}

pub(crate) async fn run(args: InitArgs, repo: &RepoArgs, mode: Mode) -> Result<Exit> {
    let recipients = recipients(&args)?;
    if args.write_key_out.exists() {
        return Err(usage(format!(
            "{} exists; refusing to overwrite a write key",
            args.write_key_out.display()
        )));
    }
    let store = repo.store_or_create()?;
    let opts = InitOptions {
        compression: args.compression,
        pack_size: args.pack_size_mib << 20,
        unsafe_no_conditional_writes: args.unsafe_no_conditional_writes,
        ..Default::default()
    };
    let created = Repository::init(store, &recipients, opts).await.context("init")?;
    super::write_secret_file(&args.write_key_out, &created.write_key().to_text())?;
    let created = Created {
        id: created.config().id,
        url: created.store().url().to_string(),
        write_key: args.write_key_out,
    };
    emit(mode, &created)?;
    Ok(Exit::Success)
}

/// Who can open the repository: --recipient, --recipient-file and CAIRN_PASSPHRASE.
fn recipients(args: &InitArgs) -> Result<Vec<KeyRecipient>> {
    let mut parsed = Vec::new();
    for r in &args.recipients {
        parsed.push(KeyRecipient::parse(r)?);
    }
    for f in &args.recipient_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("recipient file {}", f.display()))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            parsed.push(KeyRecipient::parse(line)?);
        }
    }
    if let Ok(p) = std::env::var("CAIRN_PASSPHRASE")
        && !p.is_empty()
    {
        parsed.push(KeyRecipient::Passphrase(p.into()));
    }
    if parsed.is_empty() {
        return Err(usage("init needs --recipient, --recipient-file or CAIRN_PASSPHRASE"));
    }
    Ok(parsed)
}

impl Render for Created {
    fn json(&self) -> impl serde::Serialize {
        serde_json::json!({"id": self.id.to_hex(), "write_key": self.write_key})
    }

    fn print_text(&self) {
        println!("created repository {} at {}", self.id.short(), self.url);
        println!("write key (for backup jobs; cannot decrypt data): {}", self.write_key.display());
    }
}
