//! Directory trees in and out of the repository: the source and sink every file-shaped
//! backup uses (PVC ingest, `cairn backup`, etcd and manifest files).

pub mod backup;
pub mod export;
pub mod objects;
pub mod restore;
pub mod stream;

pub use backup::{
    BackupOptions, BackupOutcome, Prepared, VirtualFile, backup_dir, backup_files, backup_stream,
};
pub use restore::{RestoreOptions, RestoreReport, restore, write_file_to};
