//! Directory trees in and out of the repository: the source and sink every file-shaped
//! backup uses (PVC ingest, `cairn backup`, etcd and manifest files).

pub mod backup;
pub mod export;
pub mod objects;
pub mod pages;
pub mod restore;
pub mod stream;

pub use backup::{
    BackupOptions, BackupOutcome, Prepared, VirtualFile, backup_dir, backup_files, backup_stream,
};
pub use restore::{RestoreOptions, RestoreReport, restore, write_file_to};

/// The cairn error a reader wrapped in an `io::Error` (store reads in bucket backups, blob
/// reads in exports), so that its class (retryable, missing, denied, integrity) survives the
/// `Read` interface; any other I/O error is given back.
pub(crate) fn wrapped_error(
    e: std::io::Error,
) -> std::result::Result<crate::Error, std::io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<crate::Error>()) {
        return Err(e);
    }
    match e.into_inner().map(|b| b.downcast::<crate::Error>()) {
        Some(Ok(inner)) => Ok(*inner),
        Some(Err(other)) => Err(std::io::Error::other(other)),
        None => Err(std::io::Error::other("read failed")),
    }
}

/// The exclude globs of a backup, compiled.
pub(crate) fn exclude_set(patterns: &[String]) -> crate::Result<globset::GlobSet> {
    crate::filter::glob_set("exclude", patterns)
}
