//! Flags every job shares: where the repository is and how to open it. Each flag has a
//! `CAIRN_*` environment fallback so that a Kubernetes Job can be configured from a
//! ConfigMap and a Secret.

use std::path::PathBuf;

use crate::repo::{Access, Repository, Store, Unlock, WriteKey};
use crate::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// Repository location: a path or file:///path (default embedded store), s3://bucket/prefix,
    /// gs://bucket/prefix, az://container/prefix.
    #[arg(long, env = "CAIRN_REPO", global = true)]
    pub repo: Option<String>,
    /// age identity file (X25519 or SSH private key), or the identity text itself. Gives full
    /// access: restore, cat, check --read-data.
    #[arg(long, env = "CAIRN_IDENTITY", global = true, hide_env_values = true)]
    pub identity: Option<String>,
    /// Write credential file (from `cairn init --write-key-out`), or its text. Backups only:
    /// cannot decrypt file contents.
    #[arg(long, env = "CAIRN_WRITE_KEY", global = true, hide_env_values = true)]
    pub write_key: Option<String>,
    /// Read the passphrase from this file (else the CAIRN_PASSPHRASE variable).
    #[arg(long, env = "CAIRN_PASSPHRASE_FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
}

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Metadata and writing: a write key suffices.
    Write,
    /// File contents: an identity or passphrase.
    Read,
}

impl RepoArgs {
    pub fn url(&self) -> Result<&str> {
        self.repo
            .as_deref()
            .ok_or_else(|| Error::Invalid("no repository: pass --repo or set CAIRN_REPO".into()))
    }

    pub fn store(&self) -> Result<Store> {
        Store::open(self.url()?)
    }

    fn passphrase(&self) -> Result<Option<String>> {
        if let Some(f) = &self.passphrase_file {
            let p = std::fs::read_to_string(f)
                .map_err(|e| Error::Invalid(format!("passphrase file {}: {e}", f.display())))?;
            return Ok(Some(p.trim_end_matches(['\n', '\r']).to_string()));
        }
        Ok(std::env::var("CAIRN_PASSPHRASE").ok().filter(|p| !p.is_empty()))
    }

    /// The identity holder's unlock, if one was given.
    pub fn unlock(&self) -> Result<Option<Unlock>> {
        if let Some(id) = &self.identity {
            let unlock =
                if id.trim_start().starts_with("AGE-SECRET-KEY-") || id.contains("-----BEGIN") {
                    Unlock::from_identity_text(id, "CAIRN_IDENTITY")?
                } else {
                    Unlock::from_identity_file(std::path::Path::new(id))?
                };
            return Ok(Some(unlock));
        }
        Ok(self.passphrase()?.map(|p| Unlock::Passphrase(p.into())))
    }

    pub fn write_key_value(&self) -> Result<Option<WriteKey>> {
        let Some(w) = &self.write_key else { return Ok(None) };
        let text = if w.trim_start().starts_with("CAIRN-WRITE-KEY-1") {
            w.clone()
        } else {
            std::fs::read_to_string(w)
                .map_err(|e| Error::Invalid(format!("write key file {w}: {e}")))?
        };
        WriteKey::from_text(&text).map(Some)
    }

    /// Open the repository with the strongest access given, checking it covers `need`.
    pub async fn open(&self, need: Need) -> Result<Repository> {
        let store = self.store()?;
        if let Some(unlock) = self.unlock()? {
            return Repository::open(store, Access::Unlock(unlock)).await;
        }
        match (self.write_key_value()?, need) {
            (Some(w), Need::Write) => Repository::open(store, Access::Write(w)).await,
            (Some(_), Need::Read) => Err(Error::Denied(
                "this needs file contents: pass --identity (or CAIRN_PASSPHRASE); a write key cannot decrypt data".into(),
            )),
            (None, _) => Err(Error::Invalid(
                "no credential: pass --identity, CAIRN_PASSPHRASE, or --write-key".into(),
            )),
        }
    }
}
