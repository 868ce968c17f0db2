//! cairn's error policy, written down once.
//!
//! * `shared/` returns [`Error`]: each variant tells the caller what to do about it, the way
//!   `object_store::Error` does (retry it, report the object as missing, stop because the
//!   data is damaged...). Variants carry a human message naming the object involved.
//! * Jobs use `anyhow` and add `.context("what we were doing")` at the edge; the first typed
//!   [`Error`] in the chain chooses the exit code ([`crate::Exit::from_error`]).
//! * A job prints one line: the context chain joined by ": ", no backtrace unless
//!   `RUST_BACKTRACE` is set. Secrets never appear in messages: errors name keys by id,
//!   files by path, never by content.

use crate::exit::Exit;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing asked for does not exist (snapshot, path, object). Do not retry.
    #[error("not found: {0}")]
    NotFound(String),
    /// A write-once object already exists. The caller lost a race or reused a name.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Data failed verification (MAC, hash, length, format). Stop; run `cairn check`.
    #[error("integrity: {0}")]
    Integrity(String),
    /// The key or credential given cannot open this repository or object.
    #[error("access denied: {0}")]
    Denied(String),
    /// A transient failure (network, 5xx, throttling, timeout). Retrying may succeed.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Bad configuration or arguments. Fix the input.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Another holder owns the lock. Wait or give up with exit code 5.
    #[error("locked: {0}")]
    Locked(String),
    /// The store refuses writes for lack of space or quota. Not retried automatically.
    #[error("storage full: {0}")]
    StorageFull(String),
}

impl Error {
    /// The same class of error, its message prefixed with `context`: a failure that surfaces
    /// later (a pack upload seen by the next write) still tells the caller what to do.
    pub fn in_context(&self, context: &str) -> Error {
        let m = |msg: &str| format!("{context}: {msg}");
        match self {
            Error::NotFound(x) => Error::NotFound(m(x)),
            Error::AlreadyExists(x) => Error::AlreadyExists(m(x)),
            Error::Integrity(x) => Error::Integrity(m(x)),
            Error::Denied(x) => Error::Denied(m(x)),
            Error::Retryable(x) => Error::Retryable(m(x)),
            Error::Invalid(x) => Error::Invalid(m(x)),
            Error::Locked(x) => Error::Locked(m(x)),
            Error::StorageFull(x) => Error::StorageFull(m(x)),
        }
    }

    /// A local I/O failure (restore target, files being backed up): a full disk or quota is
    /// [`Error::StorageFull`], anything else a problem with the input or target.
    pub fn local_io(e: &std::io::Error, msg: String) -> Error {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Error::StorageFull(msg),
            _ => Error::Invalid(msg),
        }
    }

    /// The exit code a job should end with when this error is the cause.
    pub fn exit(&self) -> Exit {
        match self {
            Error::NotFound(_) | Error::Invalid(_) | Error::AlreadyExists(_) => Exit::Usage,
            Error::Integrity(_) | Error::Denied(_) => Exit::Integrity,
            Error::Retryable(_) | Error::StorageFull(_) => Exit::Retryable,
            Error::Locked(_) => Exit::Locked,
        }
    }
}
