//! Writes the broken-repository fixtures that `tests/check_fixtures.rs` reads:
//! `tests/fixtures/check/<case>/{repo/,id.txt}`. Run after a format change:
//!
//!     cargo run -p cairn-tests --example make_check_fixtures
//!
//! Each case is the same small repository with one kind of damage.

use std::path::{Path, PathBuf};

use cairn_core::fs::{BackupOptions, backup_dir};
use cairn_core::repo::{BlobKind, IndexFile, IndexId, SymKey, pack_key};
use cairn_tests::{copy_dir, repos};

#[tokio::main]
async fn main() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/check");
    let _ = std::fs::remove_dir_all(&base);
    let good = base.join("good");
    let repo_dir = good.join("repo");
    let t = repos::init(&format!("file://{}", repo_dir.display())).await;
    std::fs::write(good.join("id.txt"), t.identity_text() + "\n").unwrap();

    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("etc")).unwrap();
    std::fs::create_dir_all(src.path().join("data")).unwrap();
    std::fs::write(src.path().join("etc/config.yaml"), "replicas: 3\nimage: web:1.2\n".repeat(40))
        .unwrap();
    let noise: Vec<u8> =
        (0..40_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.path().join("data/blob.bin"), noise).unwrap();
    std::fs::write(src.path().join("data/small.txt"), b"small").unwrap();
    let w = t.open_write().await;
    backup_dir(w, src.path(), BackupOptions { source: "fixture".into(), ..Default::default() })
        .await
        .unwrap();

    let full = t.open_full().await;
    full.load_index().await.unwrap();
    let index = full.index().await.unwrap();
    let data_pack = index.packs.iter().find(|p| p.kind == BlobKind::Data).unwrap().id;
    let data_pack_file = |root: &Path| root.join("repo").join(pack_key(&data_pack));
    let index_file = |root: &Path| {
        let dir = root.join("repo/index");
        std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path()
    };

    let case = |name: &str| {
        let dir = base.join(name);
        copy_dir(&good, &dir);
        dir
    };
    let d = case("missing-pack");
    std::fs::remove_file(data_pack_file(&d)).unwrap();

    let d = case("truncated-pack");
    let p = data_pack_file(&d);
    let len = std::fs::metadata(&p).unwrap().len();
    // Cut into the blobs, not only the trailer: data is lost, not just the header.
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 3).unwrap();

    let d = case("flipped-byte");
    let p = data_pack_file(&d);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8 + 60] ^= 0x01; // inside the first data blob's ciphertext
    std::fs::write(&p, bytes).unwrap();

    let d = case("missing-index");
    std::fs::remove_file(index_file(&d)).unwrap();

    let d = case("wrong-key");
    let p = index_file(&d);
    let id = IndexId::parse(p.file_name().unwrap().to_str().unwrap()).unwrap();
    let sealed = std::fs::read(&p).unwrap();
    let file = IndexFile::open(full.meta_key(), &id, &sealed).unwrap();
    std::fs::write(&p, file.seal(&SymKey::random(), &id)).unwrap();

    println!("fixtures written to {}", base.display());
}
