//! Keys and sealing.
//!
//! Two secrets, two powers:
//! * the **write secret** (held by backup jobs) derives the blob-id key, the chunker's gear
//!   table and the metadata key that seals index, tree, snapshot and pack-header objects;
//! * the **data identity** (an age X25519 identity generated at `init`, stored only inside
//!   `keys/` objects encrypted to the operators' age recipients) unwraps the random per-pack
//!   data keys that seal file contents.
//!
//! A write credential can therefore add packs (wrapping each new data key to the public data
//! recipient) and read all metadata, but cannot open any data blob. See FORMAT.md.

use std::io::{Read, Write};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};

use super::ids::{BlobId, RepoId};
use crate::{Error, Result};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed box adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Domain strings bound as associated data, so a sealed object of one kind can never be
/// accepted as another.
pub mod domain {
    pub const DATA: &[u8] = b"cairn/v1/data";
    pub const TREE: &[u8] = b"cairn/v1/tree";
    pub const PACK_HEADER: &[u8] = b"cairn/v1/pack-header";
    pub const INDEX: &[u8] = b"cairn/v1/index";
    pub const SNAPSHOT: &[u8] = b"cairn/v1/snapshot";
    pub const CONFIG: &[u8] = b"cairn/v1/config";
    pub const LOCK: &[u8] = b"cairn/v1/lock";
    pub const MARK: &[u8] = b"cairn/v1/gc-mark";
}

/// A 256-bit symmetric key. Debug never prints it.
#[derive(Clone)]
pub struct SymKey(pub [u8; 32]);

impl std::fmt::Debug for SymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymKey(..)")
    }
}

impl SymKey {
    pub fn random() -> Self {
        SymKey(rand::random())
    }

    /// Seal `plaintext` with a fresh random nonce: `nonce || ciphertext || tag`.
    pub fn seal(&self, domain: &[u8], bound: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(domain, bound, plaintext, &mut out);
        out
    }

    pub fn seal_into(&self, domain: &[u8], bound: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let aad = [domain, b"\0", bound].concat();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
    }

    /// Open a sealed box; a wrong key, domain, bound id or any flipped byte is an
    /// [`Error::Integrity`] naming `what`.
    pub fn open(&self, domain: &[u8], bound: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::Integrity(format!(
                "{what}: sealed box too short ({} bytes)",
                sealed.len()
            )));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let aad = [domain, b"\0", bound].concat();
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| {
            Error::Integrity(format!("{what}: authentication failed (wrong key or damaged data)"))
        })
    }
}

/// The write secret and everything derived from it.
#[derive(Clone)]
pub struct WriteKey {
    pub repo: RepoId,
    secret: [u8; 32],
    id_key: [u8; 32],
    tree_id_key: [u8; 32],
    pub meta: SymKey,
}

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteKey(repo {})", self.repo.short())
    }
}

const WRITE_KEY_PREFIX: &str = "CAIRN-WRITE-KEY-1";

impl WriteKey {
    pub fn generate(repo: RepoId) -> Self {
        Self::from_secret(repo, rand::random())
    }

    pub fn from_secret(repo: RepoId, secret: [u8; 32]) -> Self {
        let id_key = blake3::derive_key("cairn v1 blob id", &secret);
        let tree_id_key = blake3::derive_key("cairn v1 tree id", &secret);
        let meta = SymKey(blake3::derive_key("cairn v1 metadata seal", &secret));
        WriteKey { repo, secret, id_key, tree_id_key, meta }
    }

    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The id of a data blob: keyed BLAKE3, so ids reveal nothing outside the repository.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The id of a tree blob: a separate key, so a file whose bytes equal a listing never
    /// dedups against it (they are sealed with different keys).
    pub fn tree_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.tree_id_key, plaintext).as_bytes())
    }

    pub fn id_for(&self, kind: super::pack::BlobKind, plaintext: &[u8]) -> BlobId {
        match kind {
            super::pack::BlobKind::Data => self.blob_id(plaintext),
            super::pack::BlobKind::Tree => self.tree_id(plaintext),
        }
    }

    /// A per-source name for lock objects: keyed, so the bucket does not show which
    /// namespaces and volumes are backed up.
    pub fn source_lock_name(&self, source: &str) -> String {
        let key = blake3::derive_key("cairn v1 source lock", &self.secret);
        hex::encode(&blake3::keyed_hash(&key, source.as_bytes()).as_bytes()[..16])
    }

    /// The chunker's secret gear table: 256 words from BLAKE3 in XOF mode, so chunk
    /// boundaries (and hence chunk sizes) do not fingerprint known content.
    pub fn gear_table(&self) -> Vec<u64> {
        let mut hasher = blake3::Hasher::new_derive_key("cairn v1 chunker gear");
        hasher.update(&self.secret);
        let mut bytes = [0u8; 256 * 8];
        hasher.finalize_xof().fill(&mut bytes);
        bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    }

    /// The text form kept in a Kubernetes Secret: `CAIRN-WRITE-KEY-1 <repo id> <base64>`.
    pub fn to_text(&self) -> String {
        format!("{WRITE_KEY_PREFIX} {} {}\n", self.repo, B64.encode(self.secret))
    }

    pub fn from_text(text: &str) -> Result<Self> {
        let mut parts = text.split_whitespace();
        let bad = || {
            Error::Invalid(
                "write key: expected `CAIRN-WRITE-KEY-1 <repo id> <base64 secret>`".into(),
            )
        };
        if parts.next() != Some(WRITE_KEY_PREFIX) {
            return Err(bad());
        }
        let repo = RepoId::parse(parts.next().ok_or_else(bad)?)?;
        let secret: [u8; 32] = B64
            .decode(parts.next().ok_or_else(bad)?)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        Ok(Self::from_secret(repo, secret))
    }
}

/// The repository's data identity: unwraps per-pack data keys.
pub struct DataIdentity(pub age::x25519::Identity);

impl std::fmt::Debug for DataIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataIdentity(..)")
    }
}

impl DataIdentity {
    pub fn generate() -> Self {
        DataIdentity(age::x25519::Identity::generate())
    }
    pub fn recipient(&self) -> age::x25519::Recipient {
        self.0.to_public()
    }
    pub fn to_text(&self) -> String {
        self.0.to_string().expose_secret().to_string()
    }
    pub fn from_text(s: &str) -> Result<Self> {
        age::x25519::Identity::from_str(s.trim())
            .map(DataIdentity)
            .map_err(|e| Error::Invalid(format!("data identity: {e}")))
    }

    /// Unwrap a pack's data key.
    pub fn unwrap_key(&self, wrapped: &[u8], what: &str) -> Result<SymKey> {
        let plain = age::decrypt(&self.0, wrapped).map_err(|e| {
            Error::Integrity(format!("{what}: cannot unwrap the pack data key: {e}"))
        })?;
        let key: [u8; 32] = plain
            .try_into()
            .map_err(|_| Error::Integrity(format!("{what}: wrapped data key is not 32 bytes")))?;
        Ok(SymKey(key))
    }
}

/// Wrap a fresh pack data key to the repository's data recipient.
pub fn wrap_key(recipient: &age::x25519::Recipient, key: &SymKey) -> Result<Vec<u8>> {
    age::encrypt(recipient, &key.0).map_err(|e| Error::Invalid(format!("wrapping a pack key: {e}")))
}

/// What a `keys/` object holds, encrypted to one operator recipient.
pub struct KeyMaterial {
    pub write: WriteKey,
    pub data: DataIdentity,
}

impl KeyMaterial {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "repo": self.write.repo,
            "write_secret": B64.encode(self.write.secret_bytes()),
            "data_identity": self.data.to_text(),
        }))
        .expect("json")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Raw {
            repo: RepoId,
            write_secret: String,
            data_identity: String,
        }
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| Error::Integrity(format!("key object: malformed: {e}")))?;
        let secret: [u8; 32] =
            B64.decode(&raw.write_secret)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::Integrity("key object: bad write secret".into()))?;
        Ok(KeyMaterial {
            write: WriteKey::from_secret(raw.repo, secret),
            data: DataIdentity::from_text(&raw.data_identity)?,
        })
    }
}

/// An operator's way in: age identities from a file (X25519 or SSH), or a passphrase.
pub enum Unlock {
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>),
    Passphrase(age::secrecy::SecretString),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlock::Identities(v) => write!(f, "Unlock::Identities({})", v.len()),
            Unlock::Passphrase(_) => f.write_str("Unlock::Passphrase(..)"),
        }
    }
}

impl Unlock {
    pub fn from_identity_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("identity file {}: {e}", path.display())))?;
        Self::from_identity_text(&text, &path.display().to_string())
    }

    pub fn from_identity_text(text: &str, what: &str) -> Result<Self> {
        // An SSH private key file is one identity; an age identity file may hold many.
        if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----")
            || text.contains("-----BEGIN RSA PRIVATE KEY-----")
        {
            let id = age::ssh::Identity::from_buffer(text.as_bytes(), Some(what.to_string()))
                .map_err(|e| Error::Invalid(format!("{what}: not an SSH key: {e}")))?;
            return Ok(Unlock::Identities(vec![Box::new(id)]));
        }
        let ids = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|e| Error::Invalid(format!("{what}: not an age identity file: {e}")))?
            .into_identities()
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        if ids.is_empty() {
            return Err(Error::Invalid(format!("{what}: contains no identity")));
        }
        Ok(Unlock::Identities(ids))
    }

    /// Try to open one `keys/` object.
    pub fn open_key_object(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let decryptor = age::Decryptor::new(sealed).ok()?;
        let mut out = Vec::new();
        let mut reader = match self {
            Unlock::Identities(ids) => {
                if decryptor.is_scrypt() {
                    return None;
                }
                decryptor.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)).ok()?
            }
            Unlock::Passphrase(p) => {
                if !decryptor.is_scrypt() {
                    return None;
                }
                let id = age::scrypt::Identity::new(p.clone());
                decryptor.decrypt(std::iter::once(&id as &dyn age::Identity)).ok()?
            }
        };
        reader.read_to_end(&mut out).ok()?;
        Some(out)
    }
}

/// An operator recipient a `keys/` object is encrypted to.
pub enum KeyRecipient {
    Age(Box<dyn age::Recipient + Send>),
    Passphrase(age::secrecy::SecretString),
}

impl std::fmt::Debug for KeyRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRecipient::Age(_) => f.write_str("KeyRecipient::Age"),
            KeyRecipient::Passphrase(_) => f.write_str("KeyRecipient::Passphrase(..)"),
        }
    }
}

impl KeyRecipient {
    /// Parse `age1…` or an SSH public key line.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(r) = age::x25519::Recipient::from_str(s) {
            return Ok(KeyRecipient::Age(Box::new(r)));
        }
        if let Ok(r) = age::ssh::Recipient::from_str(s) {
            return Ok(KeyRecipient::Age(Box::new(r)));
        }
        Err(Error::Invalid(format!("recipient {s:?}: not an age (age1…) or SSH public key")))
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let err = |e: age::EncryptError| Error::Invalid(format!("encrypting a key object: {e}"));
        let encryptor = match self {
            KeyRecipient::Age(r) => {
                age::Encryptor::with_recipients(std::iter::once(r.as_ref() as &dyn age::Recipient))
                    .map_err(err)?
            }
            KeyRecipient::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        };
        let mut out = Vec::new();
        let mut w = encryptor.wrap_output(&mut out).map_err(|e| Error::Invalid(e.to_string()))?;
        w.write_all(plaintext).map_err(|e| Error::Invalid(e.to_string()))?;
        w.finish().map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_domain_and_id() {
        let k = SymKey::random();
        let sealed = k.seal(domain::DATA, b"id-1", b"hello");
        assert_eq!(k.open(domain::DATA, b"id-1", &sealed, "t").unwrap(), b"hello");
        assert!(k.open(domain::TREE, b"id-1", &sealed, "t").is_err());
        assert!(k.open(domain::DATA, b"id-2", &sealed, "t").is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(matches!(k.open(domain::DATA, b"id-1", &flipped, "t"), Err(Error::Integrity(_))));
        assert!(SymKey::random().open(domain::DATA, b"id-1", &sealed, "t").is_err());
    }

    #[test]
    fn write_key_text_round_trips_and_derives_stably() {
        let k = WriteKey::generate(RepoId::random());
        let back = WriteKey::from_text(&k.to_text()).unwrap();
        assert_eq!(k.blob_id(b"x"), back.blob_id(b"x"));
        assert_eq!(k.gear_table(), back.gear_table());
        assert_ne!(k.blob_id(b"x"), WriteKey::generate(k.repo).blob_id(b"x"));
        assert!(WriteKey::from_text("garbage").is_err());
    }

    #[test]
    fn pack_keys_unwrap_only_with_the_data_identity() {
        let data = DataIdentity::generate();
        let key = SymKey::random();
        let wrapped = wrap_key(&data.recipient(), &key).unwrap();
        assert_eq!(data.unwrap_key(&wrapped, "p").unwrap().0, key.0);
        assert!(DataIdentity::generate().unwrap_key(&wrapped, "p").is_err());
    }

    #[test]
    fn key_objects_open_with_identity_or_passphrase() {
        let material = KeyMaterial {
            write: WriteKey::generate(RepoId::random()),
            data: DataIdentity::generate(),
        };
        let op = age::x25519::Identity::generate();
        let sealed = KeyRecipient::parse(&op.to_public().to_string())
            .unwrap()
            .encrypt(&material.encode())
            .unwrap();
        let unlock = Unlock::from_identity_text(op.to_string().expose_secret(), "t").unwrap();
        let opened = KeyMaterial::decode(&unlock.open_key_object(&sealed).unwrap()).unwrap();
        assert_eq!(opened.write.blob_id(b"a"), material.write.blob_id(b"a"));
        let other = Unlock::from_identity_text(
            age::x25519::Identity::generate().to_string().expose_secret(),
            "t",
        )
        .unwrap();
        assert!(other.open_key_object(&sealed).is_none());

        let mut pass_recipient = KeyRecipient::Passphrase("correct horse".to_string().into());
        if let KeyRecipient::Passphrase(_) = &mut pass_recipient {}
        let sealed = pass_recipient.encrypt(&material.encode()).unwrap();
        assert!(
            Unlock::Passphrase("correct horse".to_string().into())
                .open_key_object(&sealed)
                .is_some()
        );
        assert!(Unlock::Passphrase("wrong".to_string().into()).open_key_object(&sealed).is_none());
    }
}
