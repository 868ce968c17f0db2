//! Random file trees with every kind of entry cairn must round-trip, and an exact comparison
//! of two trees (contents, metadata, holes, hard links).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// What to put in a generated tree.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub seed: u64,
    pub depth: u32,
    pub max_entries: u32,
    /// Largest regular file.
    pub max_file: usize,
    /// Add a sparse file of this logical size (0: none).
    pub sparse_size: u64,
    /// Add a directory with this many entries (listing split across blobs past 4096).
    pub wide: u32,
    /// Add a chain of nested directories this deep.
    pub deep: u32,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            seed: 1,
            depth: 3,
            max_entries: 7,
            max_file: 3 << 20,
            sparse_size: 64 << 20,
            wide: 0,
            deep: 0,
        }
    }
}

/// Does this filesystem keep user xattrs?
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    let ok = File::create(&probe).is_ok() && xattr::set(&probe, "user.cairn", b"1").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

pub fn generate(root: &Path, spec: &TreeSpec) {
    fs::create_dir_all(root).unwrap();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let xattrs = xattrs_supported(root);
    let mut files: Vec<PathBuf> = Vec::new();
    gen_dir(root, spec, spec.depth, &mut rng, xattrs, &mut files);
    if spec.sparse_size > 0 {
        let p = root.join("sparse.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(spec.sparse_size).unwrap();
        for at in [0, spec.sparse_size / 3, spec.sparse_size - 4096] {
            f.seek(SeekFrom::Start(at)).unwrap();
            let mut block = vec![0u8; 4096];
            rng.fill_bytes(&mut block);
            f.write_all(&block).unwrap();
        }
    }
    if spec.wide > 0 {
        let w = root.join("wide");
        fs::create_dir(&w).unwrap();
        for i in 0..spec.wide {
            fs::write(
                w.join(format!("f{i:06}")),
                if i % 7 == 0 { format!("{i}") } else { String::new() },
            )
            .unwrap();
        }
    }
    if spec.deep > 0 {
        let mut p = root.join("deep");
        for i in 0..spec.deep {
            p = p.join(format!("d{i}"));
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("bottom.txt"), b"the bottom").unwrap();
    }
}

fn content(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let size = match rng.random_range(0..10) {
        0 => 0,
        1..=5 => rng.random_range(1..4096),
        6..=7 => rng.random_range(4096..64 << 10),
        _ => rng.random_range(64 << 10..max.max((64 << 10) + 1)),
    };
    let mut v = vec![0u8; size];
    if rng.random_bool(0.5) {
        rng.fill_bytes(&mut v);
    } else {
        // Compressible: words from a small vocabulary.
        let words: [&[u8]; 6] = [b"etcd ", b"pod ", b"volume ", b"namespace ", b"cairn ", b"\n"];
        let mut i = 0;
        while i < size {
            let w = words[rng.random_range(0..words.len())];
            let n = w.len().min(size - i);
            v[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
    v
}

fn name(rng: &mut StdRng, i: u32) -> Vec<u8> {
    match rng.random_range(0..8) {
        0 => format!("ünïcødé-{i}").into_bytes(),
        1 => vec![b'r', b'a', b'w', 0xff, 0xfe, b'0' + (i % 10) as u8],
        2 => format!("with space {i}.txt").into_bytes(),
        _ => format!("entry-{i}").into_bytes(),
    }
}

fn gen_dir(
    dir: &Path,
    spec: &TreeSpec,
    depth: u32,
    rng: &mut StdRng,
    xattrs: bool,
    files: &mut Vec<PathBuf>,
) {
    let n = rng.random_range(0..=spec.max_entries);
    for i in 0..n {
        let p = dir.join(OsStr::from_bytes(&name(rng, i)));
        if p.exists() || p.symlink_metadata().is_ok() {
            continue;
        }
        match rng.random_range(0..12) {
            0 | 1 if depth > 0 => {
                fs::create_dir(&p).unwrap();
                gen_dir(&p, spec, depth - 1, rng, xattrs, files);
                fs::set_permissions(
                    &p,
                    fs::Permissions::from_mode([0o755, 0o700, 0o750][rng.random_range(0..3)]),
                )
                .unwrap();
            }
            2 => {
                let target = if rng.random_bool(0.5) {
                    "../somewhere/else".to_string()
                } else {
                    format!("entry-{}", i + 1)
                };
                std::os::unix::fs::symlink(&target, &p).unwrap();
            }
            3 if !files.is_empty() => {
                let first = files[rng.random_range(0..files.len())].clone();
                fs::hard_link(&first, &p).unwrap();
            }
            4 => {
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
            }
            _ => {
                fs::write(&p, content(rng, spec.max_file)).unwrap();
                fs::set_permissions(
                    &p,
                    fs::Permissions::from_mode(
                        [0o644, 0o600, 0o755, 0o444, 0o4755][rng.random_range(0..5)],
                    ),
                )
                .unwrap();
                if xattrs && rng.random_bool(0.3) {
                    xattr::set(&p, "user.cairn.test", format!("value-{i}").as_bytes()).unwrap();
                }
                if nix::unistd::geteuid().is_root() && rng.random_bool(0.3) {
                    std::os::unix::fs::chown(&p, Some(1000 + i), Some(2000 + i)).unwrap();
                }
                files.push(p.clone());
            }
        }
        let t = filetime::FileTime::from_unix_time(
            rng.random_range(1_000_000_000..1_800_000_000),
            rng.random_range(0..1_000_000_000),
        );
        let _ = filetime::set_symlink_file_times(&p, t, t);
    }
}

/// Change a tree a little: rewrite some files, add one, remove one.
pub fn mutate(root: &Path, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changed = 0;
    let mut paths = Vec::new();
    collect_files(root, &mut paths);
    paths.sort();
    for p in paths.iter().filter(|_| rng.random_bool(0.2)) {
        let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b"changed").unwrap();
        changed += 1;
    }
    fs::write(root.join("added-later.txt"), b"new file").unwrap();
    changed + 1
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        if m.is_dir() {
            collect_files(&e.path(), out);
        } else if m.is_file() && m.permissions().mode() & 0o200 != 0 && m.nlink() == 1 {
            out.push(e.path());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    digest: Option<[u8; 32]>,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Entries by relative path, hard-link groups (sorted paths per inode), allocated bytes.
type Scan = (BTreeMap<Vec<u8>, Entry>, Vec<Vec<Vec<u8>>>, HashMap<Vec<u8>, u64>);

fn scan(root: &Path) -> Scan {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut allocated = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let m = p.symlink_metadata().unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "file"
            };
            let digest = (kind == "file").then(|| *blake3::hash(&fs::read(&p).unwrap()).as_bytes());
            let target = (kind == "symlink")
                .then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec());
            let xattrs = if kind == "symlink" {
                BTreeMap::new()
            } else {
                xattr::list(&p)
                    .map(|names| {
                        names
                            .map(|n| {
                                (
                                    n.as_bytes().to_vec(),
                                    xattr::get(&p, &n).unwrap().unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if kind == "file" {
                if m.nlink() > 1 {
                    inodes.entry(m.ino()).or_default().push(rel.clone());
                }
                allocated.insert(rel.clone(), m.blocks() * 512);
            }
            entries.insert(
                rel,
                Entry {
                    kind,
                    mode: if kind == "symlink" { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    // Directory times change as entries are created; compare them only for
                    // non-directories.
                    mtime: if kind == "dir" { (0, 0) } else { (m.mtime(), m.mtime_nsec()) },
                    size: if kind == "file" { m.len() } else { 0 },
                    digest,
                    target,
                    xattrs,
                },
            );
            if kind == "dir" {
                stack.push(p);
            }
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (entries, groups, allocated)
}

/// Assert two trees are equal in every way cairn promises.
pub fn assert_same_tree(original: &Path, restored: &Path) {
    let (a, groups_a, _) = scan(original);
    let (b, groups_b, alloc_b) = scan(restored);
    let names_a: Vec<String> = a.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    let names_b: Vec<String> = b.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(names_a, names_b, "the same paths");
    for (k, ea) in &a {
        assert_eq!(Some(ea), b.get(k), "entry {}", String::from_utf8_lossy(k));
    }
    assert_eq!(groups_a, groups_b, "hard-link groups");
    // Holes stay holes: a sparse file restores sparse.
    if let Some(e) = a.get(&b"sparse.img"[..]) {
        let allocated = alloc_b[&b"sparse.img"[..]];
        assert!(
            allocated < e.size / 4,
            "sparse.img restored with {allocated} bytes allocated of {}",
            e.size
        );
    }
}

/// What a tree holds, path by path: kind, size and a hash of the content (or link target).
/// Restores are compared against this when the original tree has changed since.
pub fn digest(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let value = if ft.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                let mut h = blake3::Hasher::new();
                h.update_reader(File::open(&path).unwrap()).unwrap();
                format!("file {} {}", meta.len(), h.finalize().to_hex())
            } else {
                format!("other {:o}", meta.mode() & 0o170000)
            };
            out.insert(rel, value);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}
