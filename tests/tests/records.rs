//! Records one job writes and another reads back go through the shared types of
//! `cairn_core::records`: the etcd restore checks the SHA-256 the snapshot job recorded.

use std::io::Cursor;

use cairn_core::Exit;
use cairn_core::fs::{BackupOptions, backup_stream};
use cairn_core::records::{ETCD_DB_FILE, EtcdMember, EtcdMeta, EtcdRecord, SnapshotRecord};
use cairn_tests::repos;
use clap::Parser;
use sha2::Digest;

async fn restore_job(args: &[&str]) -> Exit {
    let argv = std::iter::once("cairn-restore").chain(args.iter().copied());
    cairn_restore::run(cairn_restore::Cli::try_parse_from(argv).expect("args")).await
}

/// Store `db` (etcd's form: the database, then its SHA-256) as an etcd snapshot whose
/// record claims `recorded_sha256`.
async fn store_etcd_snapshot(repo: &repos::TestRepo, db: &[u8], recorded_sha256: String) -> String {
    let w = repo.open_write().await;
    let opts = BackupOptions { source: "etcd".into(), ..Default::default() };
    let mut prepared =
        backup_stream(w.clone(), Box::new(Cursor::new(db.to_vec())), ETCD_DB_FILE, opts)
            .await
            .unwrap();
    let record = EtcdRecord {
        member: EtcdMember { name: "m1".into(), ..Default::default() },
        chosen_because: "test".into(),
        revision: 1,
        hash_kv: 0,
        hash_kv_compact_revision: 0,
        stream_bytes: db.len() as u64,
        sha256: recorded_sha256,
    };
    prepared.snapshot.meta = EtcdMeta { etcd: record }.to_meta();
    prepared.commit(&w, None).await.unwrap().id.to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_whose_recorded_sha256_differs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("repo").display());
    let repo = repos::init(&url).await;
    let id_file = tmp.path().join("id.txt");
    std::fs::write(&id_file, repo.identity_text()).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let digest = sha2::Sha256::digest(&body);
    let mut db = body.clone();
    db.extend_from_slice(&digest);

    let restore = |snap: String, out: std::path::PathBuf| {
        let (url, id_file) = (url.clone(), id_file.clone());
        async move {
            restore_job(&[
                "--repo",
                &url,
                "--identity",
                id_file.to_str().unwrap(),
                "etcd",
                "--snapshot",
                &snap,
                "--output",
                out.to_str().unwrap(),
            ])
            .await
        }
    };

    // The record agrees with the data: restored byte for byte.
    let good = store_etcd_snapshot(&repo, &db, hex::encode(digest)).await;
    let out = tmp.path().join("good.db");
    assert_eq!(restore(good, out.clone()).await, Exit::Success);
    assert_eq!(std::fs::read(&out).unwrap(), db);

    // The record names another SHA-256 (its trailer is intact): refused, nothing left.
    let bad = store_etcd_snapshot(&repo, &db, "00".repeat(32)).await;
    let out = tmp.path().join("bad.db");
    assert_eq!(restore(bad, out.clone()).await, Exit::Integrity);
    assert!(!out.exists(), "a refused restore leaves no file");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("cairn-partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial file is left behind");
}
