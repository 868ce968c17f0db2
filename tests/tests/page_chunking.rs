//! Files that change in place (databases, volume images) are cut into pages (FORMAT.md
//! §8.6): a few changed pages store a few new chunks, long extent lists live in extent-list
//! blobs (§9.10), and every reader (restore, check, prune, repair, diff) follows them.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use cairn_core::fs::pages::ChunkingPolicy;
use cairn_core::fs::{BackupOptions, RestoreOptions, backup_dir, restore};
use cairn_core::repo::check::{CheckOptions, check};
use cairn_core::repo::forget::{self, GroupBy, KeepPolicy};
use cairn_core::repo::lock::LockOptions;
use cairn_core::repo::prune::{PruneOptions, prune};
use cairn_core::repo::{ParentSpec, Repository};
use cairn_tests::repos;
use cairn_tests::trees::assert_same_tree;
use rand::{Rng, RngCore, SeedableRng};

const PAGE: usize = 4096;

/// A SQLite-looking database of `pages` 4 KiB pages: the real header, text-like pages
/// (they compress, as rows do), some all-zero pages, and a hole.
fn write_database(path: &Path, pages: usize, sqlite: bool, rng: &mut rand::rngs::StdRng) {
    let mut f = std::fs::File::create(path).unwrap();
    for p in 0..pages {
        let mut page = vec![0u8; PAGE];
        if p % 97 != 5 {
            for (i, b) in page.iter_mut().enumerate() {
                *b = b"abcdefghij klmnop"[(i * 7 + rng.random_range(0..3)) % 17];
            }
            rng.fill_bytes(&mut page[..64]);
        }
        if p == 0 && sqlite {
            page[..18].copy_from_slice(b"SQLite format 3\0\x10\x00");
        }
        if p == pages / 2 {
            // A hole of 17 pages in place of this one: 16 pages more than asked for.
            f.seek(SeekFrom::Current((17 * PAGE) as i64)).unwrap();
            continue;
        }
        f.write_all(&page).unwrap();
    }
}

/// Rewrite `count` random pages (not the first) in place, as a database does.
fn touch_pages(path: &Path, count: usize, rng: &mut rand::rngs::StdRng) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for _ in 0..count {
        let page = rng.random_range(1..len / PAGE);
        let mut bytes = vec![0u8; 512];
        rng.fill_bytes(&mut bytes);
        f.seek(SeekFrom::Start((page * PAGE + 100) as u64)).unwrap();
        f.write_all(&bytes).unwrap();
    }
}

fn prune_opts() -> PruneOptions {
    let lease = Duration::from_secs(1);
    PruneOptions {
        grace: lease * 2,
        unindexed_age: lease * 2,
        max_unused: 0.0,
        lock: LockOptions { lease, wait: lease * 6, purpose: "test".into(), ..Default::default() },
        ..Default::default()
    }
}

async fn node(
    repo: &Repository,
    s: &cairn_core::repo::Snapshot,
    path: &str,
) -> cairn_core::repo::Node {
    repo.lookup(s, path).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_cut_into_pages_and_a_few_changed_pages_store_a_few_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    std::fs::create_dir_all(src.join("pg/base/16384")).unwrap();
    // 24 MiB: 6144 pages, more than fit inline: extent-list blobs.
    write_database(&src.join("app.sqlite"), 6144, true, &mut rng);
    // A PostgreSQL relation segment: 8 KiB pages by its place, inline extents.
    write_database(&src.join("pg/base/16384/2619"), 512, false, &mut rng);
    // An ordinary file keeps content-defined chunks.
    let mut text = vec![0u8; 3 << 20];
    rng.fill_bytes(&mut text);
    std::fs::write(src.join("notes.bin"), &text).unwrap();

    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let w = repo.open_write().await;
    let opts = BackupOptions { source: "db".into(), ..Default::default() };
    let first = backup_dir(w.clone(), &src, opts.clone()).await.unwrap();
    let full = repo.open_full().await;
    full.load_index().await.unwrap();

    let db = node(&full, &first.snapshot, "app.sqlite").await;
    assert_eq!(db.pages, Some(4096));
    assert!(db.content.is_empty() && db.extent_lists.len() == 2, "{:?}", db.extent_lists.len());
    let pg = node(&full, &first.snapshot, "pg/base/16384/2619").await;
    assert_eq!(pg.pages, Some(8192));
    assert!(pg.extent_lists.is_empty() && pg.content.len() > 200, "{}", pg.content.len());
    let notes = node(&full, &first.snapshot, "notes.bin").await;
    assert_eq!(notes.pages, None);
    assert!(notes.content.len() < 8, "{}", notes.content.len());

    let out1 = tmp.path().join("out1");
    restore(full.clone(), first.snapshot.root.clone(), &out1, RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(&src, &out1);

    // 1 % of the database's pages change in place.
    touch_pages(&src.join("app.sqlite"), 61, &mut rng);
    let second = backup_dir(
        w.clone(),
        &src,
        BackupOptions { parent: ParentSpec::Snapshot(first.id.to_hex()), ..opts.clone() },
    )
    .await
    .unwrap();
    let (s1, s2) = (&first.snapshot.summary, &second.snapshot.summary);
    assert_eq!(s2.files_read, 1, "only the database changed");
    // 61 pages of ~1 KiB compressed and the database's two extent lists (~70 KiB each).
    let ratio = s2.new_bytes as f64 / s1.new_bytes as f64;
    assert!(
        ratio < 0.05,
        "second backup stored {} of {} bytes ({ratio:.3})",
        s2.new_bytes,
        s1.new_bytes
    );

    // The same backup with page detection off stores the database's chunks again.
    let off = backup_dir(
        w.clone(),
        &src,
        BackupOptions {
            parent: ParentSpec::None,
            chunking: ChunkingPolicy { no_detect: true, ..Default::default() },
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    full.load_index().await.unwrap();
    assert_eq!(node(&full, &off.snapshot, "app.sqlite").await.pages, None);

    // Forget the first snapshot and prune twice (mark, then delete after the grace): the
    // data reached only through extent lists must survive.
    forget::forget(
        &full,
        &KeepPolicy { last: 2, ..Default::default() },
        GroupBy::default(),
        None,
        false,
    )
    .await
    .unwrap();
    prune(full.clone(), &prune_opts()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = prune(full.clone(), &prune_opts()).await.unwrap();
    assert!(report.deleted_packs > 0, "{report:?}");

    let full = repo.open_full().await;
    let out2 = tmp.path().join("out2");
    restore(full.clone(), second.snapshot.root.clone(), &out2, RestoreOptions::default())
        .await
        .unwrap();
    assert_same_tree(&src, &out2);
    let checked = check(&full, &CheckOptions { read_data_fraction: 1.0 }).await.unwrap();
    assert!(checked.ok(), "check: {:?}", checked.problems);
    assert_eq!(checked.snapshots, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_repair_see_data_lost_behind_an_extent_list() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    write_database(&src.join("a.db"), 3000, true, &mut rng);
    std::fs::write(src.join("small.txt"), b"kept").unwrap();
    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let w = repo.open_write().await;
    let out = backup_dir(w, &src, BackupOptions { source: "db".into(), ..Default::default() })
        .await
        .unwrap();
    let full = repo.open_full().await;
    full.load_index().await.unwrap();
    let db = node(&full, &out.snapshot, "a.db").await;
    assert!(!db.extent_lists.is_empty());
    // Delete the pack of one data blob named only inside the extent list.
    let list = full.read_extent_list(&db.extent_lists[0]).await.unwrap();
    let blob = list.iter().rev().find_map(|e| e.id).unwrap();
    let index = full.index().await.unwrap();
    let pack = index.pack(index.get(&blob).unwrap().unwrap().pack).id;
    full.store().delete(&cairn_core::repo::pack_key(&pack)).await.unwrap();

    let full = repo.open_full().await;
    let checked = check(&full, &CheckOptions { read_data_fraction: 0.0 }).await.unwrap();
    assert!(!checked.ok());
    let affected: Vec<&String> = checked.affected.iter().flat_map(|a| &a.paths).collect();
    assert!(affected.iter().any(|p| p.ends_with("a.db")), "{affected:?}");
    assert!(!affected.iter().any(|p| p.ends_with("small.txt")), "{affected:?}");
}

/// A single file backed up on its own is recognised by its name too (it is its own root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_is_recognised_by_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("orders.ibd");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    write_database(&file, 64, false, &mut rng);
    let repo = repos::init(&format!("file://{}", tmp.path().join("repo").display())).await;
    let w = repo.open_write().await;
    let out = backup_dir(w, &file, BackupOptions { source: "mysql".into(), ..Default::default() })
        .await
        .unwrap();
    let full = repo.open_full().await;
    full.load_index().await.unwrap();
    assert_eq!(node(&full, &out.snapshot, "orders.ibd").await.pages, Some(16384));
}
