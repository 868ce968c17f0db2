//! Which files are cut into fixed pages rather than content-defined chunks (FORMAT.md §8.6).
//!
//! Databases and volume images change in place, a few pages here and there. Cut into 2 MiB
//! content-defined chunks, every chunk of such a file holds a changed page after ordinary
//! churn and the whole file is stored again; cut at its own page boundaries, a changed page
//! is one new chunk and the rest dedups. Files are recognised by their first bytes (SQLite,
//! bbolt as in etcd, qcow2) or by their place in a data directory (PostgreSQL, InnoDB),
//! and operators can name more with globs. Everything else keeps content-defined chunks,
//! which survive insertions that pages do not.

use std::path::Path;

use crate::repo::chunker::Chunking;
use crate::{Error, Result};

/// Bytes of a file's start that detection looks at.
pub const SNIFF_LEN: usize = 100;
/// Smaller files are never cut into pages: one content-defined chunk holds them.
pub const MIN_PAGE_FILE: u64 = 64 << 10;
/// Pages of files named by `--page-files` and of block volumes.
pub const DEFAULT_PAGE: u32 = 4096;

/// How a backup chooses each file's chunking.
#[derive(Debug, Clone, Default)]
pub struct ChunkingPolicy {
    /// Cut every file this way (a block volume: 4 KiB pages); `None`: decide per file.
    pub force: Option<Chunking>,
    /// Do not recognise database files (every file content-defined unless `page_files`).
    pub no_detect: bool,
    /// Globs (relative paths) of more files to cut into 4 KiB pages: VM disks, other
    /// databases.
    pub page_files: Vec<String>,
}

/// A [`ChunkingPolicy`] ready to answer per file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chooser {
    force: Option<Chunking>,
    detect: bool,
    globs: globset::GlobSet,
}

impl ChunkingPolicy {
    pub(crate) fn chooser(&self) -> Result<Chooser> {
        if let Some(Chunking::Pages(p)) = self.force
            && !Chunking::valid_page_size(p)
        {
            return Err(Error::Invalid(format!("page size {p}: a power of two, 4096 to 65536")));
        }
        Ok(Chooser {
            force: self.force,
            detect: !self.no_detect,
            globs: crate::filter::glob_set("page-files", &self.page_files)?,
        })
    }
}

impl Chooser {
    /// The chunking of a file at `rel` (relative to the backup root) of `size` bytes (`None`
    /// for a stream of unknown length) whose first bytes are `head`.
    pub(crate) fn choose(&self, rel: &Path, size: Option<u64>, head: &[u8]) -> Chunking {
        if let Some(c) = self.force {
            return c;
        }
        if size.is_some_and(|s| s < MIN_PAGE_FILE) {
            return Chunking::Cdc;
        }
        if !self.globs.is_empty() && self.globs.is_match(rel) {
            return Chunking::Pages(DEFAULT_PAGE);
        }
        if self.detect
            && let Some(page) = detect(rel, size, head)
        {
            return Chunking::Pages(page);
        }
        Chunking::Cdc
    }
}

/// The page size of a file that changes in place, from what it starts with or where it
/// lies; `None` for anything else. Pages below 4 KiB are rounded up to 4 KiB.
pub fn detect(rel: &Path, size: Option<u64>, head: &[u8]) -> Option<u32> {
    let clamp = |p: u64| Some(p.clamp(u64::from(DEFAULT_PAGE), 65536) as u32);
    let u32_le =
        |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u32_be =
        |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    // SQLite: "SQLite format 3\0", page size big-endian at 16 (1 means 65536).
    if head.starts_with(b"SQLite format 3\0") {
        let raw = head.get(16..18).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let page = if raw == 1 { 65536 } else { u64::from(raw) };
        return page.is_power_of_two().then(|| clamp(page)).flatten();
    }
    // bbolt (etcd's database and snapshots): the meta page's magic after the 16-byte page
    // header, the page size 8 bytes later.
    if u32_le(16) == Some(0xED0C_DAED) {
        let page = u64::from(u32_le(24).unwrap_or(0));
        return page.is_power_of_two().then(|| clamp(page)).flatten();
    }
    // qcow2: "QFI\xfb", cluster bits big-endian at 20.
    if head.starts_with(b"QFI\xfb") {
        let bits = u32_be(20).unwrap_or(0);
        return (9..=21).contains(&bits).then(|| clamp(1 << bits)).flatten();
    }
    let name = rel.file_name()?.to_str()?;
    let multiple_of = |page: u64| size.is_none_or(|s| s.is_multiple_of(page));
    // InnoDB tablespaces and system/undo files: 16 KiB pages.
    let innodb = name.ends_with(".ibd")
        || numbered(name, "ibdata")
        || numbered(name, "undo_")
        || name == "mysql.ibd";
    if innodb && multiple_of(16384) {
        return Some(16384);
    }
    // PostgreSQL relation segments: base/<db oid>/<relfilenode>[_fsm|_vm|_init][.N] and
    // global/<relfilenode>, 8 KiB pages.
    let in_pg_dir =
        rel.components().any(|c| matches!(c.as_os_str().to_str(), Some("base" | "global")));
    if in_pg_dir && pg_relation(name) && multiple_of(8192) {
        return Some(8192);
    }
    None
}

/// `prefix` followed by one or more digits.
fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `<digits>[_fsm|_vm|_init][.<digits>]`
fn pg_relation(name: &str) -> bool {
    let (stem, segment) = match name.split_once('.') {
        Some((s, n)) => (s, Some(n)),
        None => (name, None),
    };
    let stem = ["_fsm", "_vm", "_init"].iter().find_map(|f| stem.strip_suffix(f)).unwrap_or(stem);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(stem) && segment.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chooser(policy: ChunkingPolicy) -> Chooser {
        policy.chooser().unwrap()
    }

    #[test]
    fn databases_are_recognised_by_their_first_bytes() {
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.extend_from_slice(&[0x10, 0x00]);
        assert_eq!(detect(Path::new("app.db"), Some(1 << 20), &sqlite), Some(4096));
        sqlite[16..18].copy_from_slice(&[0x00, 0x01]);
        assert_eq!(detect(Path::new("x"), None, &sqlite), Some(65536));
        sqlite[16..18].copy_from_slice(&[0x04, 0x00]);
        assert_eq!(detect(Path::new("x"), None, &sqlite), Some(4096), "1 KiB pages round up");

        let mut bolt = vec![0u8; 32];
        bolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        bolt[24..28].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(detect(Path::new("snapshot.db"), None, &bolt), Some(4096));

        let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow.resize(24, 0);
        qcow[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(detect(Path::new("disk"), Some(1 << 30), &qcow), Some(65536));

        assert_eq!(detect(Path::new("notes.txt"), Some(1 << 20), b"SQLite is a database"), None);
    }

    #[test]
    fn database_directories_are_recognised_by_their_layout() {
        let pg = |p: &str, size| detect(Path::new(p), Some(size), b"");
        assert_eq!(pg("pgdata/base/16384/2619", 81920), Some(8192));
        assert_eq!(pg("data/base/1/1259_fsm", 24576), Some(8192));
        assert_eq!(pg("global/1262.1", 8192 * 100), Some(8192));
        assert_eq!(pg("data/base/16384/2619", 81921), None, "not a whole number of pages");
        assert_eq!(pg("data/pg_wal/000000010000000000000001", 16 << 20), None);
        assert!(pg("src/base/12345", 81920).is_some(), "a digit name under base/");
        assert_eq!(pg("docs/12345", 81920), None);
        assert_eq!(pg("mysql/shop/orders.ibd", 16384 * 64), Some(16384));
        assert_eq!(pg("mysql/ibdata1", 16384 * 64), Some(16384));
        assert_eq!(pg("mysql/ibdata", 16384 * 64), None);
    }

    #[test]
    fn the_policy_decides_before_detection() {
        let big = Some(1 << 20);
        let auto = chooser(ChunkingPolicy::default());
        assert_eq!(auto.choose(Path::new("vm/disk.img"), big, b""), Chunking::Cdc);
        assert_eq!(auto.choose(Path::new("base/1/2"), Some(8192), b""), Chunking::Cdc, "small");
        let globs =
            chooser(ChunkingPolicy { page_files: vec!["**/*.img".into()], ..Default::default() });
        assert_eq!(globs.choose(Path::new("vm/disk.img"), big, b""), Chunking::Pages(4096));
        let off = chooser(ChunkingPolicy { no_detect: true, ..Default::default() });
        assert_eq!(off.choose(Path::new("base/1/2"), big, b""), Chunking::Cdc);
        let block =
            chooser(ChunkingPolicy { force: Some(Chunking::Pages(4096)), ..Default::default() });
        assert_eq!(block.choose(Path::new("volume.img"), Some(10), b""), Chunking::Pages(4096));
        let bad = ChunkingPolicy { force: Some(Chunking::Pages(1000)), ..Default::default() };
        assert!(bad.chooser().is_err());
    }
}
