//! `check` finds every kind of damage in the committed broken-repository fixtures
//! (tests/fixtures/check, written by `examples/make_check_fixtures.rs`) and names the
//! affected snapshots and paths; restoring damaged data fails with exit 4 naming the file.

use std::path::{Path, PathBuf};

use cairn::Cli;
use cairn_core::Exit;
use cairn_core::repo::check::{CheckOptions, CheckReport, check};
use cairn_core::repo::{Access, Repository, Store, Unlock};
use cairn_tests::copy_dir;
use clap::Parser;

/// A scratch copy of a fixture, so tests never alter the committed bytes.
fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/check").join(name);
    assert!(
        src.exists(),
        "fixture {name} missing: run `cargo run -p cairn-tests --example make_check_fixtures`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&src, &dir);
    (tmp, dir)
}

async fn check_fixture(name: &str, read_data: bool) -> (CheckReport, PathBuf, tempfile::TempDir) {
    let (tmp, dir) = fixture(name);
    let unlock = Unlock::from_identity_file(&dir.join("id.txt")).unwrap();
    let store = Store::open(&format!("file://{}", dir.join("repo").display())).unwrap();
    let repo = Repository::open(store, Access::Unlock(unlock)).await.unwrap();
    let report =
        check(&repo, &CheckOptions { read_data_fraction: if read_data { 1.0 } else { 0.0 } })
            .await
            .unwrap();
    (report, dir, tmp)
}

fn kinds(r: &CheckReport) -> Vec<String> {
    r.problems.iter().map(|p| p.kind.clone()).collect()
}

fn affected_paths(r: &CheckReport) -> Vec<String> {
    r.affected.iter().flat_map(|a| a.paths.clone()).collect()
}

async fn cairn(args: &[&str]) -> Exit {
    let mut argv = vec!["cairn"];
    argv.extend_from_slice(args);
    cairn::run(Cli::try_parse_from(argv).unwrap()).await
}

async fn restore_exit(dir: &Path) -> Exit {
    let repo = format!("file://{}", dir.join("repo").display());
    let id = dir.join("id.txt");
    let target = dir.join("restored");
    cairn(&[
        "--repo",
        &repo,
        "--identity",
        id.to_str().unwrap(),
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_fixture_is_clean() {
    let (report, dir, _t) = check_fixture("good", true).await;
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 1);
    assert!(report.packs >= 2 && report.packs_read == report.packs);
    assert_eq!(restore_exit(&dir).await, Exit::Success);
    assert_eq!(std::fs::read(dir.join("restored/data/small.txt")).unwrap(), b"small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pack_is_found_and_named() {
    let (report, dir, _t) = check_fixture("missing-pack", false).await;
    assert!(kinds(&report).contains(&"pack".to_string()), "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| p.detail.contains("missing")));
    let paths = affected_paths(&report);
    assert!(
        paths.contains(&"/data/blob.bin".to_string())
            && paths.contains(&"/etc/config.yaml".to_string()),
        "{paths:?}"
    );
    assert_eq!(restore_exit(&dir).await, Exit::Integrity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_pack_is_found_and_named() {
    let (report, dir, _t) = check_fixture("truncated-pack", false).await;
    let p = report.problems.iter().find(|p| p.kind == "pack").expect("a pack problem");
    assert!(p.detail.contains("truncated") || p.detail.contains("magic"), "{p:?}");
    assert!(affected_paths(&report).contains(&"/data/blob.bin".to_string()));
    assert_eq!(restore_exit(&dir).await, Exit::Integrity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_found_by_read_data_and_named() {
    // Metadata alone cannot see damage inside a blob...
    let (report, _, _t) = check_fixture("flipped-byte", false).await;
    assert!(report.ok(), "{:?}", report.problems);
    // ...reading the data does, and names the file.
    let (report, dir, _t2) = check_fixture("flipped-byte", true).await;
    assert_eq!(kinds(&report), vec!["blob".to_string()], "{:?}", report.problems);
    assert!(report.problems[0].detail.contains("authentication failed"));
    assert_eq!(affected_paths(&report).len(), 1, "{:?}", report.affected);
    assert_eq!(restore_exit(&dir).await, Exit::Integrity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_is_found_and_named() {
    let (report, dir, _t) = check_fixture("missing-index", false).await;
    assert!(kinds(&report).contains(&"missing-blob".to_string()), "{:?}", report.problems);
    assert_eq!(report.unindexed_packs.len(), 2, "both packs are left unindexed");
    assert!(!report.affected.is_empty());
    // The repository opens, but the snapshot's data cannot be found: exit 4, not a crash.
    assert_ne!(restore_exit(&dir).await, Exit::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_sealed_with_the_wrong_key_is_found() {
    let (report, dir, _t) = check_fixture("wrong-key", false).await;
    let p = report.problems.iter().find(|p| p.kind == "index").expect("an index problem");
    assert!(p.detail.contains("authentication failed"), "{p:?}");
    assert_eq!(restore_exit(&dir).await, Exit::Integrity);
    // And a wrong identity is refused outright, with exit 4.
    let other = dir.join("other.txt");
    assert_eq!(cairn(&["key", "generate", "--out", other.to_str().unwrap()]).await, Exit::Success);
    let repo = format!("file://{}", dir.join("repo").display());
    assert_eq!(
        cairn(&["--repo", &repo, "--identity", other.to_str().unwrap(), "check"]).await,
        Exit::Integrity
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_exits_4_on_damage() {
    let (_t, dir) = fixture("missing-pack");
    let repo = format!("file://{}", dir.join("repo").display());
    let id = dir.join("id.txt");
    assert_eq!(
        cairn(&["--repo", &repo, "--identity", id.to_str().unwrap(), "check"]).await,
        Exit::Integrity
    );
}
