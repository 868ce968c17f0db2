//! Small repositories in memory for the unit tests of `check` and `prune`.

use std::sync::Arc;

use super::{InitOptions, KeyRecipient, Repository, SnapshotId, Store, pack_key};
use crate::fs::{BackupOptions, backup_dir};

/// A new repository on a `memory://` store of its own (memory stores live for the whole
/// process, so every call gets a fresh name). Full access: it holds the data identity.
pub(crate) async fn memory_repo(name: &str) -> Arc<Repository> {
    memory_repo_budgeted(name, super::IndexBudget::default()).await
}

/// The same, its index going to disk past `budget`.
pub(crate) async fn memory_repo_budgeted(
    name: &str,
    budget: super::IndexBudget,
) -> Arc<Repository> {
    let url = format!("memory://{name}-{}", hex::encode(rand::random::<[u8; 8]>()));
    let identity = age::x25519::Identity::generate();
    let recipient = KeyRecipient::parse(&identity.to_public().to_string()).unwrap();
    let opts = InitOptions { pack_size: 1 << 20, ..Default::default() };
    let mut repo = Repository::init(Store::open(&url).unwrap(), &[recipient], opts).await.unwrap();
    repo.set_index_budget(budget);
    Arc::new(repo)
}

/// Incompressible bytes: one blob per file below the chunker's minimum (512 KiB).
pub(crate) fn noise(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// Back up a directory holding `files` (relative paths, contents) as `source`, then reload
/// the repository's index so that reads see what the backup wrote.
pub(crate) async fn backup(
    repo: &Arc<Repository>,
    source: &str,
    files: &[(&str, &[u8])],
) -> SnapshotId {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let opts = BackupOptions { source: source.into(), threads: 1, ..Default::default() };
    let id = backup_dir(repo.clone(), dir.path(), opts).await.unwrap().id;
    repo.load_index().await.unwrap();
    id
}

/// Every pack object's key and size.
pub(crate) async fn packs(repo: &Repository) -> Vec<(String, u64)> {
    repo.store().list("packs/").await.unwrap()
}

/// The key of the pack holding the blob of the file at `path` of the latest snapshot.
pub(crate) async fn pack_of(repo: &Repository, path: &str) -> String {
    let snapshot = repo.find_snapshot("latest", None).await.unwrap().snapshot;
    let node = repo.lookup(&snapshot, path).await.unwrap();
    let blob = node.content[0].id.unwrap();
    let index = repo.index().await.unwrap();
    pack_key(&index.pack(index.get(&blob).unwrap().unwrap().pack).id)
}

/// The content of the file at `path` of the latest snapshot.
pub(crate) async fn read_latest(repo: &Repository, path: &str) -> crate::Result<Vec<u8>> {
    let snapshot = repo.find_snapshot("latest", None).await?.snapshot;
    let node = repo.lookup(&snapshot, path).await?;
    repo.read_file(&node).await
}
