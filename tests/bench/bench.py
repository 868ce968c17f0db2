#!/usr/bin/env python3
"""cairn vs restic vs kopia on the same data, in one run, with results as ratios.

This is a benchmark, not a test: it never fails on a slow number, only on a broken setup. See
tests/bench/README.md for what it measures and the targets it reports against.

    tests/bench/bench.py --quick            # ~200 MiB of mixed data, no "system" set: smoke run
    tests/bench/bench.py                    # 2 GiB mixed + a copy of /usr/lib and /usr/share
    tests/bench/bench.py --size-gib 8 --workdir /mnt/scratch/cairn-bench

Standard library only. Needs root only for what setup.sh installs (restic, GNU time).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import pickle
import platform
import random
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
MiB = 1 << 20
GiB = 1 << 30
KiB = 1 << 10

TOOLS = ("cairn", "restic", "kopia")
PEERS = ("restic", "kopia")
PHASES = (
    ("first", "first backup"),
    ("unchanged", "unchanged re-backup"),
    ("changed", "re-backup after 5 % change"),
    ("restore", "full restore"),
)
# Passwords for the peers' repository encryption (throwaway repositories in the work dir).
PEER_PASSWORD = "cairn-bench-password"
GENERATOR_VERSION = 2  # bump when the generator's output changes, so old data is regenerated


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Mixed data set: deterministic, text-like and compressible, with some incompressible parts.
# --------------------------------------------------------------------------------------------

SYLLABLES = (
    "ka ri to na mi se lo du ve an el in or us at ex pro con ter mal ist ent ing ed ly tion "
    "ba co de fi ga he ja ku le mo nu pe qui ra so ti um va we xi yo za ch sh th ph st tr"
).split()


class TextSource:
    """Pseudo-English over a Zipf-distributed word list, sampled from a large pool.

    A pool of text (16-64 MiB) is made once from a seeded word list; files are sequences of
    512-byte slices taken at random offsets of the pool. The slices are far below any chunker's
    minimum, so the result does not deduplicate, and the pool is much larger than a compressor's
    window, so it compresses like text (about 3x with zstd), not like repeats.
    """

    SLICE = 512

    def __init__(self, seed: int, pool_bytes: int):
        rng = random.Random(f"words-{seed}")
        words: list[bytes] = []
        seen = set()
        while len(words) < 6000:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))))
            if w not in seen:
                seen.add(w)
                words.append(w.encode())
        # A 65536-entry table maps a uniform 16-bit number to a token: words with Zipf weights
        # 1/(rank+1), plus punctuation and line ends, so one table lookup makes one token.
        weights = [1.0 / (r + 1) for r in range(len(words))]
        tokens = words + [b",", b".\n", b";", b"?\n", b"-", b"\n"]
        wsum = sum(weights)
        weights += [0.06 * wsum, 0.08 * wsum, 0.01 * wsum, 0.01 * wsum, 0.01 * wsum, 0.01 * wsum]
        total = sum(weights)
        table: list[bytes] = []
        for tok, w in zip(tokens, weights):
            table += [tok] * round(w / total * 65536)
        table = (table + [words[0]] * 65536)[:65536]
        rng.shuffle(table)
        rng = random.Random(f"pool-{seed}")
        parts, made = [], 0
        while made < pool_bytes:
            idx = memoryview(rng.randbytes(2 * 65536)).cast("H")
            part = b" ".join([table[i] for i in idx])
            parts.append(part)
            made += len(part)
        self.pool = b"".join(parts)[:pool_bytes]

    def text(self, rng: random.Random, n: int) -> bytes:
        if n <= 0:
            return b""
        s, last = self.SLICE, len(self.pool) - self.SLICE
        pool, rr = self.pool, rng.randrange
        out = b"".join([pool[(o := rr(last)):o + s] for _ in range(n // s + 1)])
        return out[:n]


@dataclass
class MixedLayout:
    seed: int
    size_bytes: int
    small: list[tuple[str, int, bool]] = field(default_factory=list)  # (relpath, size, random?)
    large: list[tuple[str, int]] = field(default_factory=list)  # (relpath, size)

    @property
    def total(self) -> int:
        return sum(s for _, s, _ in self.small) + sum(s for _, s in self.large)


def mixed_layout(seed: int, size_bytes: int) -> MixedLayout:
    """100k small files (1-16 KiB) per 2 GiB, the rest in a few large files of 200-500 MiB."""
    rng = random.Random(f"layout-{seed}")
    lay = MixedLayout(seed, size_bytes)
    n_small = max(100, round(100_000 * size_bytes / (2 * GiB)))
    for i in range(n_small):
        size = rng.randint(1 * KiB, 16 * KiB)
        is_random = rng.random() < 0.05  # 5 % of small files are incompressible
        ext = "bin" if is_random else "txt"
        lay.small.append((f"small/a{i // 10000:02d}/b{(i // 100) % 100:02d}/f{i:06d}.{ext}", size, is_random))
    small_total = sum(s for _, s, _ in lay.small)
    large_total = max(0, size_bytes - small_total)
    if large_total > 0:
        n_large = max(2, round(large_total / (300 * MiB)))
        weights = [0.7 + 0.6 * i / (n_large - 1) for i in range(n_large)]  # 0.7x .. 1.3x
        rng.shuffle(weights)
        wsum = sum(weights)
        sizes = [int(large_total * w / wsum) for w in weights]
        sizes[-1] += large_total - sum(sizes)
        for i, s in enumerate(sizes):
            lay.large.append((f"large/blob{i:02d}.dat", s))
    return lay


LARGE_SEGMENT = 4 * MiB
LARGE_RANDOM_FRACTION = 0.15  # share of each large file's 4 MiB segments that is incompressible


def generate_mixed(root: Path, lay: MixedLayout) -> None:
    t0 = time.perf_counter()
    pool_bytes = min(64 * MiB, max(16 * MiB, lay.size_bytes // 32))
    src = TextSource(lay.seed, pool_bytes)
    log(f"mixed: text pool of {pool_bytes / MiB:.0f} MiB built in {time.perf_counter() - t0:.1f} s")
    made_dirs: set[Path] = set()
    rng = random.Random(f"small-{lay.seed}")
    for rel, size, is_random in lay.small:
        p = root / rel
        if p.parent not in made_dirs:
            p.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(p.parent)
        p.write_bytes(rng.randbytes(size) if is_random else src.text(rng, size))
    log(f"mixed: {len(lay.small):,} small files written ({time.perf_counter() - t0:.1f} s)")
    (root / "large").mkdir(parents=True, exist_ok=True)
    for j, (rel, size) in enumerate(lay.large):
        rng = random.Random(f"large-{lay.seed}-{j}")
        with open(root / rel, "wb") as f:
            left = size
            while left > 0:
                n = min(LARGE_SEGMENT, left)
                f.write(rng.randbytes(n) if rng.random() < LARGE_RANDOM_FRACTION else src.text(rng, n))
                left -= n
        log(f"mixed: {rel} ({size / MiB:.0f} MiB) written ({time.perf_counter() - t0:.1f} s)")


# --------------------------------------------------------------------------------------------
# Manifests (for sizes, cache warming and restore verification)
# --------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    files: dict[str, tuple[int, str, int, int]]  # rel -> (size, sha1, mode bits, mtime s)
    links: dict[str, str]
    dirs: set[str]

    @property
    def bytes(self) -> int:
        return sum(v[0] for v in self.files.values())


def manifest(root: Path, hash_content: bool = True) -> Manifest:
    files: dict[str, tuple[int, str, int, int]] = {}
    links: dict[str, str] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != ".":
            dirs.add(rel_dir)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                digest = ""
                if hash_content:
                    with open(p, "rb") as f:
                        digest = hashlib.file_digest(f, "sha1").hexdigest()
                files[rel] = (st.st_size, digest, stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return Manifest(files, links, dirs)


def compare(src: Manifest, got: Manifest) -> dict:
    missing = [k for k in src.files if k not in got.files]
    extra = [k for k in got.files if k not in src.files]
    differ = [k for k, v in src.files.items() if k in got.files and got.files[k][:2] != v[:2]]
    mode = [k for k, v in src.files.items() if k in got.files and got.files[k][2] != v[2]]
    mtime = [k for k, v in src.files.items() if k in got.files and got.files[k][3] != v[3]]
    links = [k for k, v in src.links.items() if got.links.get(k) != v]
    dirs = [d for d in src.dirs if d not in got.dirs and d not in src.links]
    content_ok = not (missing or extra or differ or links or dirs)
    return {
        "ok": content_ok,
        "missing_files": len(missing),
        "extra_files": len(extra),
        "content_differs": len(differ),
        "symlinks_wrong": len(links),
        "dirs_missing": len(dirs),
        "mode_differs": len(mode),
        "mtime_differs": len(mtime),
        "examples": (missing[:3] + differ[:3] + extra[:3] + links[:3] + dirs[:3])[:6],
    }


# --------------------------------------------------------------------------------------------
# The 5 % change, applied the same way to any tree, with a journal to undo it.
# --------------------------------------------------------------------------------------------

LARGE_FILE = 16 * MiB


def shift_bytes(b: bytes) -> bytes:
    # A byte permutation: every byte changes, the entropy (compressibility) stays the same.
    return b.translate(SHIFT_TABLE)


SHIFT_TABLE = bytes((i + 1) % 256 for i in range(256))


def mutate(root: Path, seed: int, journal: Path) -> dict:
    """Change ~5 % of the data: 5 % of the files under 16 MiB (overwrite or insert inside them)
    and 5 % of the bytes of every file of 16 MiB or more (10 regions of 0.5 % each, in place).
    Originals go to `journal` first, so undo() restores the tree byte for byte, mtimes included."""
    rng = random.Random(f"mutate-{seed}")
    small, large = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            (large if st.st_size >= LARGE_FILE else small).append((p, st))
    chosen = rng.sample(small, k=math.ceil(0.05 * len(small))) if small else []
    entries = []
    changed_bytes = 0
    for p, st in chosen:
        orig = Path(p).read_bytes()
        entries.append((os.path.relpath(p, root), "whole", orig, st.st_atime_ns, st.st_mtime_ns, st.st_mode))
    for p, st in large:
        regions = []
        stripe = st.st_size // 10
        rlen = max(1, int(st.st_size * 0.005))
        with open(p, "rb") as f:
            for k in range(10):
                off = k * stripe + rng.randrange(max(1, stripe - rlen))
                f.seek(off)
                regions.append((off, f.read(rlen)))
        entries.append((os.path.relpath(p, root), "regions", regions, st.st_atime_ns, st.st_mtime_ns, st.st_mode))
    tmp = journal.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(entries, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(journal)
    # Now change the files.
    for rel, kind, data, _, _, mode in entries:
        p = root / rel
        if not (mode & stat.S_IWUSR):
            os.chmod(p, mode | stat.S_IWUSR)
        if kind == "whole":
            orig: bytes = data
            if not orig or rng.random() < 0.5:
                # insert 100 bytes somewhere: shifts the rest of the file
                off = rng.randrange(len(orig) + 1)
                ins = shift_bytes(orig[off:off + 100]) if len(orig) - off >= 100 else rng.randbytes(100)
                new = orig[:off] + ins + orig[off:]
                changed_bytes += 100
            else:
                off = rng.randrange(len(orig))
                n = min(len(orig) - off, rng.randint(64, 1024))
                new = orig[:off] + shift_bytes(orig[off:off + n]) + orig[off + n:]
                changed_bytes += n
            p.write_bytes(new)
        else:
            with open(p, "r+b") as f:
                for off, old in data:
                    f.seek(off)
                    f.write(shift_bytes(old))
                    changed_bytes += len(old)
        if not (mode & stat.S_IWUSR):
            os.chmod(p, mode)
    return {"files_changed": len(entries), "small_files_changed": len(chosen), "large_files_changed": len(large),
            "bytes_changed": changed_bytes}


def undo(root: Path, journal: Path) -> None:
    with open(journal, "rb") as f:
        entries = pickle.load(f)
    for rel, kind, data, atime, mtime, mode in entries:
        p = root / rel
        os.chmod(p, mode | stat.S_IWUSR)
        if kind == "whole":
            p.write_bytes(data)
        else:
            with open(p, "r+b") as f:
                for off, old in data:
                    f.seek(off)
                    f.write(old)
        os.chmod(p, mode)
        os.utime(p, ns=(atime, mtime))
    journal.unlink()
    log(f"undid the 5 % change in {root} ({len(entries)} files)")


# --------------------------------------------------------------------------------------------
# Running and measuring one command
# --------------------------------------------------------------------------------------------


@dataclass
class Measure:
    ok: bool
    wall_s: float
    rss_kib: int
    cpu_s: float
    rc: int
    stdout: str
    stderr_tail: str
    repo_bytes: int | None = None
    extra: dict = field(default_factory=dict)


def run_measured(cmd: list[str], *, env: dict, cwd: Path, logbase: Path, ok_codes=(0,)) -> Measure:
    logbase.parent.mkdir(parents=True, exist_ok=True)
    tfile = logbase.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(tfile)] + cmd
    busy0 = cpu_busy_s()
    with open(logbase.with_suffix(".stdout"), "wb") as out, open(logbase.with_suffix(".stderr"), "wb") as err:
        t0 = time.perf_counter()
        rc = subprocess.call(full, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    busy = cpu_busy_s() - busy0
    tv = tfile.read_text(errors="replace") if tfile.exists() else ""
    rss = int(m.group(1)) if (m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)) else 0
    user = float(m.group(1)) if (m := re.search(r"User time \(seconds\): ([\d.]+)", tv)) else 0.0
    sys_ = float(m.group(1)) if (m := re.search(r"System time \(seconds\): ([\d.]+)", tv)) else 0.0
    stdout = logbase.with_suffix(".stdout").read_text(errors="replace")
    stderr = logbase.with_suffix(".stderr").read_text(errors="replace")
    # CPU time the rest of the machine used meanwhile, as a share of all CPUs: other work
    # (a compiler, a test suite) competing with the measured tool.
    other = max(0.0, busy - (user + sys_)) / max(wall * (os.cpu_count() or 1), 1e-9)
    return Measure(rc in ok_codes, wall, rss, user + sys_, rc, stdout, stderr[-2000:],
                   extra={"other_cpu_share": round(min(other, 1.0), 3)})


def cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has been busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def du_bytes(p: Path) -> int:
    out = subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def quick_run(cmd: list[str], env: dict, cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


# --------------------------------------------------------------------------------------------
# The three tools, behind one interface
# --------------------------------------------------------------------------------------------


class Tool:
    name = ""

    def __init__(self, bins: dict, base: Path, data: Path, dataset: str, logs: Path):
        self.bins, self.base, self.data, self.dataset, self.logs = bins, base, data, dataset, logs
        self.repo = base / "repo"
        self.env = dict(os.environ)
        self.env.pop("RUST_LOG", None)

    def fresh(self) -> None:
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)

    def logbase(self, phase: str) -> Path:
        return self.logs / f"{self.dataset}-{self.name}-{phase}"

    def init(self) -> None: ...
    def backup(self, phase: str) -> Measure: ...
    def restore(self, target: Path) -> Measure: ...


class Cairn(Tool):
    name = "cairn"

    def init(self) -> None:
        self.env.update({"CAIRN_LOG_FORMAT": "json"})
        for k in [k for k in self.env if k.startswith("CAIRN_") and k != "CAIRN_LOG_FORMAT"]:
            del self.env[k]
        self.identity = self.base / "id.txt"
        self.write_key = self.base / "wk.txt"
        out = quick_run([self.bins["cairn"], "key", "generate", "--out", str(self.identity)], self.env)
        m = re.search(r"age1[0-9a-z]+", out) or re.search(r"age1[0-9a-z]+", self.identity.read_text())
        if not m:
            raise RuntimeError(f"cairn key generate printed no age public key: {out!r}")
        quick_run([self.bins["cairn"], "--repo", str(self.repo), "init", "--recipient", m.group(0),
                   "--write-key-out", str(self.write_key)], self.env)

    def backup(self, phase: str) -> Measure:
        m = run_measured([self.bins["cairn"], "--json", "--repo", str(self.repo), "--write-key", str(self.write_key),
                          "backup", str(self.data), "--source", f"bench/{self.dataset}"],
                         env=self.env, cwd=self.base, logbase=self.logbase(phase))
        try:
            j = json.loads(m.stdout)
            m.extra |= {"summary": j.get("summary"), "partial": j.get("partial"), "failures": len(j.get("failures") or [])}
            if j.get("partial") or j.get("failures"):
                m.ok = False
        except json.JSONDecodeError:
            m.extra |= {"stdout": m.stdout[-500:]}
        return m

    def restore(self, target: Path) -> Measure:
        m = run_measured([self.bins["cairn"], "--json", "--repo", str(self.repo), "--identity", str(self.identity),
                          "restore", "latest", "--source", f"bench/{self.dataset}", "--target", str(target)],
                         env=self.env, cwd=self.base, logbase=self.logbase("restore"))
        try:
            j = json.loads(m.stdout)
            m.extra |= {"report": j.get("report")}
        except json.JSONDecodeError:
            m.extra |= {"stdout": m.stdout[-500:]}
        return m


class Restic(Tool):
    name = "restic"

    def init(self) -> None:
        self.env.update({"RESTIC_PASSWORD": PEER_PASSWORD})
        for k in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"):
            self.env.pop(k, None)
        self.cache = self.base / "cache"
        quick_run([self.bins["restic"], "-r", str(self.repo), "--cache-dir", str(self.cache), "init"], self.env)

    def backup(self, phase: str) -> Measure:
        # Back up "." from inside the data set so that a restore lands directly in the target.
        m = run_measured([self.bins["restic"], "-r", str(self.repo), "--cache-dir", str(self.cache), "--json",
                          "backup", ".", "--host", "bench"],
                         env=self.env, cwd=self.data, logbase=self.logbase(phase))
        for line in reversed(m.stdout.splitlines()):
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue
            if j.get("message_type") == "summary":
                m.extra |= {"summary": j}
                break
        return m

    def restore(self, target: Path) -> Measure:
        return run_measured([self.bins["restic"], "-r", str(self.repo), "--cache-dir", str(self.cache),
                             "restore", "latest", "--host", "bench", "--target", str(target)],
                            env=self.env, cwd=self.base, logbase=self.logbase("restore"))


class Kopia(Tool):
    name = "kopia"
    compression = "none"

    def init(self) -> None:
        self.config = self.base / "repository.config"
        self.env.update({
            "KOPIA_PASSWORD": PEER_PASSWORD,
            "KOPIA_LOG_DIR": str(self.base / "logs"),
            "KOPIA_CHECK_FOR_UPDATES": "false",
            "KOPIA_CONFIG_PATH": str(self.config),
        })
        self.k = [self.bins["kopia"], "--config-file", str(self.config)]
        quick_run(self.k + ["repository", "create", "filesystem", "--path", str(self.repo),
                            "--password", PEER_PASSWORD, "--cache-directory", str(self.base / "cache"),
                            "--no-check-for-updates"], self.env)
        if self.compression != "none":
            quick_run(self.k + ["policy", "set", "--global", f"--compression={self.compression}"], self.env)
        self.last_id = None

    def backup(self, phase: str) -> Measure:
        m = run_measured(self.k + ["snapshot", "create", str(self.data), "--json", "--no-progress"],
                         env=self.env, cwd=self.base, logbase=self.logbase(phase))
        try:
            j = json.loads(m.stdout)
            self.last_id = j.get("id")
            summ = (j.get("rootEntry") or {}).get("summ") or {}
            m.extra |= {"summary": {k: j.get(k) for k in ("id", "incomplete") if k in j} | {"summ": summ}}
            if summ.get("numFailed"):
                m.ok = False
        except json.JSONDecodeError:
            m.extra |= {"stdout": m.stdout[-500:]}
        return m

    def restore(self, target: Path) -> Measure:
        if not self.last_id:
            return Measure(False, 0.0, 0, 0.0, -1, "", "no kopia snapshot id from the last backup")
        return run_measured(self.k + ["snapshot", "restore", self.last_id, str(target), "--no-progress"],
                            env=self.env, cwd=self.base, logbase=self.logbase("restore"))


TOOL_CLASSES = {"cairn": Cairn, "restic": Restic, "kopia": Kopia}


# --------------------------------------------------------------------------------------------
# Data set preparation
# --------------------------------------------------------------------------------------------


def prepare_mixed(workdir: Path, seed: int, size_bytes: int) -> Path:
    root = workdir / "data" / "mixed"
    state = workdir / "data" / "mixed.json"
    journal = workdir / "data" / "mixed.journal"
    want = {"generator": GENERATOR_VERSION, "seed": seed, "size_bytes": size_bytes}
    if journal.exists() and root.exists():
        undo(root, journal)
    if root.exists() and state.exists() and json.loads(state.read_text()) == want:
        log(f"mixed: reusing {root} (seed {seed}, {size_bytes / GiB:.2f} GiB)")
        return root
    if root.exists():
        shutil.rmtree(root)
    state.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    root.mkdir(parents=True)
    lay = mixed_layout(seed, size_bytes)
    log(f"mixed: generating {lay.total / GiB:.2f} GiB: {len(lay.small):,} small files + "
        f"{len(lay.large)} large ({', '.join(f'{s / MiB:.0f}' for _, s in lay.large)} MiB)")
    t0 = time.perf_counter()
    generate_mixed(root, lay)
    log(f"mixed: generated in {time.perf_counter() - t0:.1f} s")
    state.write_text(json.dumps(want))
    return root


def prepare_system(workdir: Path, sources: list[str]) -> Path:
    root = workdir / "data" / "system"
    state = workdir / "data" / "system.json"
    journal = workdir / "data" / "system.journal"
    want = {"sources": sources}
    if journal.exists() and root.exists():
        undo(root, journal)
    if root.exists() and state.exists() and json.loads(state.read_text()) == want:
        log(f"system: reusing the copy in {root}")
        return root
    if root.exists():
        shutil.rmtree(root)
    state.unlink(missing_ok=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    log(f"system: copying {' '.join(sources)} into {root} (a copy, so the 5 % change never touches the system)")
    # Files vanishing or unreadable mid-copy are not fatal: the copy is the data set.
    subprocess.run(["cp", "-a", "--", *sources, str(root)], check=False)
    log(f"system: copied in {time.perf_counter() - t0:.1f} s")
    state.write_text(json.dumps(want))
    return root


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def fmt_bytes_mib(b: float | None) -> str:
    return "–" if b is None else f"{b / MiB:,.1f}"


def version_of(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def run_dataset(name: str, data: Path, args, bins: dict, results: dict) -> None:
    work = args.workdir
    logs = work / "logs"
    tools = {t: TOOL_CLASSES[t](bins, work / "runs" / name / t, data, name, logs) for t in args.tools}
    Kopia.compression = args.kopia_compression
    ds = results["datasets"].setdefault(name, {"phases": {}})

    log(f"{name}: reading the data set once (hashes for verification; warms the page cache)")
    t0 = time.perf_counter()
    src = manifest(data)
    ds["files"], ds["bytes"], ds["symlinks"], ds["dirs"] = len(src.files), src.bytes, len(src.links), len(src.dirs)
    log(f"{name}: {len(src.files):,} files, {src.bytes / GiB:.2f} GiB ({time.perf_counter() - t0:.1f} s)")

    for t in tools.values():
        t.fresh()
        t.init()

    def record(phase: str, tool: str, m: Measure, nbytes: int) -> None:
        r = {"ok": m.ok, "rc": m.rc, "wall_s": m.wall_s, "rss_kib": m.rss_kib, "cpu_s": m.cpu_s,
             "bytes": nbytes, "repo_bytes": m.repo_bytes, **m.extra}
        if not m.ok:
            r["stderr_tail"] = m.stderr_tail
            log(f"{name}/{phase}/{tool}: FAILED rc={m.rc}: {m.stderr_tail[-600:]}")
        ds["phases"].setdefault(phase, {})[tool] = r
        rb = f", repo {m.repo_bytes / MiB:,.1f} MiB" if m.repo_bytes is not None else ""
        log(f"{name}/{phase}/{tool}: {m.wall_s:.2f} s, {nbytes / 1e6 / max(m.wall_s, 1e-9):,.1f} MB/s, "
            f"RSS {m.rss_kib / 1024:,.0f} MiB, CPU {m.cpu_s:.1f} s{rb}")

    for phase in ("first", "unchanged", "changed"):
        if phase == "changed":
            journal = work / "data" / f"{name}.journal"
            info = mutate(data, args.seed, journal)
            ds["change"] = info
            log(f"{name}: changed {info['files_changed']:,} files, {info['bytes_changed'] / MiB:,.1f} MiB rewritten")
            src = manifest(data)
            ds["bytes_after_change"] = src.bytes
        for tn, t in tools.items():
            m = t.backup(phase)
            m.repo_bytes = du_bytes(t.repo)
            record(phase, tn, m, src.bytes)

    for tn, t in tools.items():
        target = t.base / "restore"
        if target.exists():
            shutil.rmtree(target)
        m = t.restore(target)
        if m.ok and target.exists() and not args.no_verify:
            tv = time.perf_counter()
            v = compare(src, manifest(target))
            log(f"{name}/restore/{tn}: restored tree compared with the source in {time.perf_counter() - tv:.1f} s")
            m.extra["verify"] = v
            if not v["ok"]:
                m.ok = False
                m.stderr_tail = f"restored tree differs from the source: {v}"
        record("restore", tn, m, src.bytes)
    # Restored trees are deleted only after every tool has restored: ext4 makes inode allocation
    # slower for a few minutes after a mass deletion (it skips recently deleted inodes), which
    # would slow whichever tool restores right after one.

    journal = work / "data" / f"{name}.journal"
    if journal.exists():
        undo(data, journal)
    if not args.keep:
        for t in tools.values():
            shutil.rmtree(t.base, ignore_errors=True)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or a == 0:
        return "–"
    return f"{a / b:.2f}"


def render(results: dict, tools: list[str]) -> str:
    out = []
    env = results["env"]
    out.append(f"# cairn benchmark — {env['date']}\n")
    out.append(f"- machine: {env['cpus']} CPUs, {env['mem_gib']:.0f} GiB RAM, {env['kernel']}; "
               f"work dir `{env['workdir']}` (local disk); page cache **warm** (dropping it needs privileges "
               f"this benchmark does not assume; every tool reads the same cached data)")
    out.append(f"- versions: {'; '.join(f'{k} `{v}`' for k, v in env['versions'].items())}")
    out.append(f"- settings: each tool's defaults (cairn zstd-3; restic repo v2, compression auto; "
               f"kopia compression `{env['kopia_compression']}`), encryption on for all three; "
               f"mode {'quick' if env['quick'] else 'full'}, seed {env['seed']}")
    loads = [r["other_cpu_share"] for ds in results["datasets"].values() for rs in ds["phases"].values()
             for r in rs.values() if "other_cpu_share" in r]
    if loads:
        busy = max(loads) > 0.1
        out.append(f"- other work on the machine during the measurements: {100 * min(loads):.0f} % to "
                   f"{100 * max(loads):.0f} % of all CPUs (the \"other CPU\" row)"
                   + (" — **the tools competed with other work: absolute numbers are pessimistic and noisy**"
                      if busy else ""))
    out.append("- order: within each phase the tools run one after another in the order of the columns, "
               "on the same data")
    out.append("- throughput = data-set bytes / wall time (MB = 10^6 bytes), for every phase; "
               "ratios are cairn / peer: throughput > 1 means cairn is faster, wall time, RSS, CPU and "
               "repository size < 1 mean cairn is smaller\n")
    peers = [p for p in PEERS if p in tools]
    for dname, ds in results["datasets"].items():
        out.append(f"## {dname}: {ds['files']:,} files, {ds['bytes'] / GiB:.2f} GiB"
                   + (f", {ds['symlinks']:,} symlinks" if ds.get("symlinks") else ""))
        if "change" in ds:
            c = ds["change"]
            out.append(f"\n5 % change: {c['small_files_changed']:,} files under 16 MiB edited in place or with a "
                       f"100-byte insertion, {c['large_files_changed']} files of 16 MiB or more with 5 % of their "
                       f"bytes rewritten; {c['bytes_changed'] / MiB:,.1f} MiB rewritten in all.")
        for phase, title in PHASES:
            rows = ds["phases"].get(phase)
            if not rows:
                continue
            out.append(f"\n### {dname} — {title}\n")
            head = "| metric | " + " | ".join(tools) + " | " + " | ".join(f"cairn/{p}" for p in peers) + " |"
            out.append(head)
            out.append("|" + "---|" * (2 + len(tools) - 1 + len(peers)))

            def line(label, get, fmt):
                vals = {t: (get(rows[t]) if t in rows and rows[t].get("ok") else None) for t in tools}
                cells = [("FAILED" if t in rows and not rows[t].get("ok") else "–") if vals[t] is None
                         else fmt(vals[t]) for t in tools]
                rat = [ratio(vals.get("cairn"), vals.get(p)) for p in peers]
                out.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rat) + " |")

            line("wall time (s)", lambda r: r["wall_s"], lambda v: f"{v:,.2f}")
            line("throughput (MB/s)", lambda r: r["bytes"] / 1e6 / max(r["wall_s"], 1e-9), lambda v: f"{v:,.1f}")
            line("peak RSS (MiB)", lambda r: r["rss_kib"] / 1024, lambda v: f"{v:,.1f}")
            line("CPU user+sys (s)", lambda r: r["cpu_s"], lambda v: f"{v:,.2f}")
            other = [rows[t].get("other_cpu_share") if t in rows else None for t in tools]
            out.append("| other CPU load meanwhile | " + " | ".join("–" if o is None else f"{100 * o:.0f} %" for o in other)
                       + " |" + " |" * len(peers))
            if phase != "restore":
                line("repository size (MiB)", lambda r: r["repo_bytes"], lambda v: fmt_bytes_mib(v))
            else:
                vers = []
                for t in tools:
                    v = rows.get(t, {}).get("verify")
                    if v is None:
                        vers.append("not checked" if rows.get(t, {}).get("ok") else "–")
                    elif v["ok"]:
                        extra = []
                        if v["mode_differs"]:
                            extra.append(f"{v['mode_differs']} modes differ")
                        if v["mtime_differs"]:
                            extra.append(f"{v['mtime_differs']} mtimes differ")
                        vers.append("identical" + (f" ({', '.join(extra)})" if extra else ""))
                    else:
                        vers.append("DIFFERS")
                out.append("| restored tree vs source | " + " | ".join(vers) + " |" + " |" * len(peers))
            fails = [(t, rows[t]) for t in tools if t in rows and not rows[t].get("ok")]
            for t, r in fails:
                tail = (r.get("stderr_tail") or "").strip().splitlines()[-3:]
                out.append(f"\n**{t} failed** (exit {r['rc']}): `{' / '.join(tail)[:400]}`")
    out.append("\n## Targets\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    for line_ in targets(results):
        out.append(line_)
    out.append("")
    return "\n".join(out)


def targets(results: dict) -> list[str]:
    rows = []
    ds = results["datasets"].get("mixed")

    def get(phase, tool):
        r = (ds or {}).get("phases", {}).get(phase, {}).get(tool)
        return r if r and r.get("ok") else None

    def tp(r):
        return r["bytes"] / 1e6 / max(r["wall_s"], 1e-9)

    def verdict(ok):
        return "met" if ok else "**not met**"

    if ds:
        c, k, r = get("first", "cairn"), get("first", "kopia"), get("first", "restic")
        if c:
            rows.append(f"| first backup ≥ 300 MB/s (mixed, compressible) | {tp(c):,.1f} MB/s | {verdict(tp(c) >= 300)} |")
        if c and k:
            rows.append(f"| first backup ≥ 1.5× kopia | {tp(c) / tp(k):.2f}× | {verdict(tp(c) / tp(k) >= 1.5)} |")
        if c and r:
            rows.append(f"| first backup ≥ 2× restic | {tp(c) / tp(r):.2f}× | {verdict(tp(c) / tp(r) >= 2)} |")
        u = get("unchanged", "cairn")
        if u:
            n = ds["files"]
            note = "" if n >= 100_000 else f" ({n:,} files here; scaled to 100k: {u['wall_s'] * 100_000 / n:.2f} s)"
            rows.append(f"| unchanged re-backup of 100k files < 2 s | {u['wall_s']:.2f} s{note} | "
                        f"{verdict(u['wall_s'] * max(1.0, 100_000 / n) < 2)} |")
        cr, rr = get("restore", "cairn"), get("restore", "restic")
        if cr and rr:
            rows.append(f"| restore ≥ 1.5× restic | {tp(cr) / tp(rr):.2f}× | {verdict(tp(cr) / tp(rr) >= 1.5)} |")
    peak = [(d, p, r["rss_kib"]) for d, dsx in results["datasets"].items() for p, rs in dsx["phases"].items()
            for t, r in rs.items() if t == "cairn" and r.get("rss_kib")]
    if peak:
        d, p, v = max(peak, key=lambda x: x[2])
        rows.append(f"| cairn peak RSS ≤ 256 MiB (any phase) | {v / 1024:,.1f} MiB ({d}, {p}) | {verdict(v <= 256 * 1024)} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cairn-bench"), help="default /tmp/cairn-bench")
    ap.add_argument("--size-gib", type=float, default=None, help="size of the mixed data set (default 2; quick 0.2)")
    ap.add_argument("--quick", action="store_true", help="~200 MiB of mixed data, no system data set")
    ap.add_argument("--datasets", default=None, help="comma list of mixed,system (default both; quick: mixed)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list, cairn first (default cairn,restic,kopia)")
    ap.add_argument("--system-paths", default="/usr/lib,/usr/share", help="what the system data set copies")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kopia-compression", default="none",
                    help="kopia's global compression policy (default none = kopia's own default; e.g. zstd-fastest)")
    ap.add_argument("--no-verify", action="store_true", help="skip comparing restored trees with the source")
    ap.add_argument("--no-build", action="store_true",
                    help="use the static binary in target/x86_64-unknown-linux-musl/release as it is")
    ap.add_argument("--cairn-bin", type=Path, default=None,
                    help="measure this cairn binary instead of the static one (e.g. target/release/cairn, glibc)")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restored trees")
    args = ap.parse_args()
    if args.size_gib is None:
        args.size_gib = 0.2 if args.quick else 2.0
    args.datasets = (args.datasets or ("mixed" if args.quick else "mixed,system")).split(",")
    args.tools = [t for t in args.tools.split(",") if t]
    for t in args.tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t}")
    for d in args.datasets:
        if d not in ("mixed", "system"):
            ap.error(f"unknown data set {d}")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    # Install/build the peers and cairn (idempotent), and learn where the binaries are.
    setup = [str(HERE / "setup.sh")] + (["--no-cairn-build"] if args.no_build else []) \
        + ([] if "kopia" in args.tools else ["--no-kopia"])
    out = subprocess.run(setup, stdout=subprocess.PIPE, text=True, check=True).stdout
    envs = dict(re.findall(r"^export (\w+)=(.*)$", out, re.M))
    bins = {"cairn": envs["CAIRN_BIN"], "restic": envs["RESTIC_BIN"], "kopia": envs["KOPIA_BIN"]}
    if args.cairn_bin:
        bins["cairn"] = str(args.cairn_bin.resolve())

    versions = {
        "cairn": version_of([bins["cairn"], "version"]).replace("\n", " "),
        "restic": version_of([bins["restic"], "version"]),
        "kopia": version_of([bins["kopia"], "--version"]),
    }
    try:
        versions["cairn"] = json.dumps(json.loads(subprocess.run([bins["cairn"], "version"], capture_output=True,
                                                                 text=True).stdout), separators=(",", ":"))
    except Exception:  # noqa: BLE001
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results = {
        "env": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "cpus": os.cpu_count(), "mem_gib": mem / GiB, "kernel": platform.release(),
                "workdir": str(args.workdir), "versions": versions, "quick": args.quick, "seed": args.seed,
                "size_gib": args.size_gib, "kopia_compression": args.kopia_compression,
                "cairn_binary": bins["cairn"],
                "cairn_linkage": subprocess.run(["file", "-b", bins["cairn"]], capture_output=True,
                                                text=True).stdout.split(",")[:2]},
        "datasets": {},
    }
    t_all = time.perf_counter()
    for d in args.datasets:
        if d == "mixed":
            data = prepare_mixed(args.workdir, args.seed, int(args.size_gib * GiB))
        else:
            data = prepare_system(args.workdir, args.system_paths.split(","))
        run_dataset(d, data, args, bins, results)
        # Write as we go, so a long run that dies later still leaves its numbers.
        (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = render(results, args.tools)
    (args.workdir / "results.md").write_text(md)
    print(md)
    log(f"done in {time.perf_counter() - t_all:.0f} s; results in {args.workdir / 'results.md'} "
        f"and results.json; logs in {args.workdir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
