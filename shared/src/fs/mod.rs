//! Directory trees in and out of the repository: the source and sink every file-shaped
//! backup uses (PVC ingest, `cairn backup`, etcd and manifest files).

pub mod backup;
pub mod restore;

pub use backup::{BackupOptions, BackupOutcome, backup_dir};
pub use restore::{RestoreOptions, RestoreReport, restore, write_file_to};
