#!/usr/bin/env python3
"""Dedup of files that change in place (#18): page chunking against content-defined chunks.

    tests/bench/dedup_bench.py [--keys 250000] [--block-mib 1024] [--pg-mib 1024]
                               [--wrong-mib 256] [--only etcd,block,pg,wrong]

Every case runs twice on the same data in the same run: into a repository with cairn's
defaults (databases recognised and cut into pages) and into one with `--no-page-detect`
(content-defined 2 MiB chunks for everything, cairn's behaviour before #18). Reported per
snapshot: bytes stored, new bytes as a share of the first snapshot, wall time, peak RSS.

* etcd: a private etcd filled with kube-like objects (~2 KiB JSON), snapshotted with
  cairn-etcd-snapshot; then 1 % of the keys updated and the revision compacted (what the API
  server does every five minutes); then `etcdctl defrag`. Restore of the last snapshot timed.
* block: a volume image of 8 KiB database pages; random 8 KiB page writes to 1 % of them.
* pg: a PostgreSQL-like data directory (base/<db>/<relfilenode> segments, 8 KiB pages,
  pg_wal segments); 1 % of the pages rewritten and one new 16 MiB WAL segment.
* wrong: the cost of cutting a file that is no database into pages (a log named by
  --page-files): first backup, then 100 bytes inserted near its start.

Prints one JSON line per measurement and a summary table. A benchmark: fails only on a
broken setup.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from etcd_bench import ETCD_DIR, start_etcd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = ROOT / "target/release"
PAGE = 8192


def timed(cmd: list[str], env: dict[str, str] | None = None, stdout=subprocess.PIPE) -> dict:
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss / 1024, 1), "stdout": p.stdout}


class Repo:
    """A local-disk repository with its keys; `cdc` ones never cut pages."""

    def __init__(self, work: Path, name: str, cdc: bool):
        self.dir = work / f"repo-{name}"
        self.name, self.cdc = name, cdc
        self.ident, self.wk = work / f"id-{name}.txt", work / f"wk-{name}.txt"
        out = subprocess.run([str(BIN / "cairn"), "key", "generate", "--out", str(self.ident)],
                             check=True, capture_output=True, text=True).stdout
        recipient = re.search(r"age1[0-9a-z]+", out + self.ident.read_text()).group(0)
        self.env = dict(os.environ, CAIRN_REPO=str(self.dir), RUST_LOG="warn", CAIRN_LOG_FORMAT="json")
        subprocess.run([str(BIN / "cairn"), "init", "--recipient", recipient, "--write-key-out", str(self.wk)],
                       env=self.env, check=True, capture_output=True)
        self.env["CAIRN_WRITE_KEY"] = str(self.wk)
        if cdc:
            self.env["CAIRN_NO_PAGE_DETECT"] = "true"
        self.first_new = None

    def record(self, case: str, phase: str, r: dict, new_bytes: int, size: int) -> dict:
        if self.first_new is None:
            self.first_new = new_bytes
        row = {"case": case, "repo": self.name, "phase": phase, "size_bytes": size, "new_bytes": new_bytes,
               "new_share_of_first": round(new_bytes / self.first_new, 4) if self.first_new else None,
               "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
        print(json.dumps(row), flush=True)
        return row

    def backup(self, case: str, phase: str, path: Path, source: str, extra: list[str] = ()) -> dict:
        r = timed([str(BIN / "cairn"), "--json", "backup", str(path), "--source", source, *extra], self.env)
        s = json.loads(r["stdout"])["summary"]
        return self.record(case, phase, r, s["new_bytes"], s["bytes"])

    def restore_latest(self, case: str, source: str, target: Path) -> dict:
        shutil.rmtree(target, ignore_errors=True)
        r = timed([str(BIN / "cairn"), "--identity", str(self.ident), "restore", "latest", "--source", source,
                   "--target", str(target)], self.env)
        row = {"case": case, "repo": self.name, "phase": "restore", "wall_s": r["wall_s"],
               "peak_rss_mib": r["peak_rss_mib"]}
        print(json.dumps(row), flush=True)
        return row


def etcd_case(work: Path, keys: int, rows: list[dict]) -> None:
    etcd, ep = start_etcd(work)
    churn = str(BIN / "examples/etcd_churn")
    try:
        t0 = time.time()
        subprocess.run([churn, "fill", ep, str(keys)], check=True)
        print(f"# filled {keys} keys in {time.time() - t0:.0f} s", file=sys.stderr)
        repos = [Repo(work, "etcd-pages", cdc=False), Repo(work, "etcd-cdc", cdc=True)]

        def snap(phase: str) -> None:
            for repo in repos:
                r = timed([str(BIN / "cairn-etcd-snapshot"), "--endpoints", ep, "--json"], repo.env)
                s = json.loads(r["stdout"])
                rows.append(repo.record("etcd", phase, r, s["new_bytes"], s["db_bytes"]))

        snap("first")
        subprocess.run([churn, "churn", ep, str(keys), "1"], check=True)
        snap("1% churn + compaction")
        subprocess.run([str(ETCD_DIR / "etcdctl"), "--endpoints", ep, "defrag"], check=True, capture_output=True)
        snap("defragmentation")
        for repo in repos:
            rows.append(repo.restore_latest("etcd", "etcd", work / "restored"))
    finally:
        etcd.terminate()
        etcd.wait()
        shutil.rmtree(work / "etcd", ignore_errors=True)


def db_page(rng: random.Random) -> bytes:
    """An 8 KiB page: a random quarter (ids, hashes), the rest row-like text."""
    row = b"%08d|customer-%05d|ACTIVE|2026-11-30|" % (rng.randrange(10**8), rng.randrange(10**5))
    return os.urandom(PAGE // 4) + (row * (PAGE // len(row) + 1))[: PAGE - PAGE // 4]


def write_pages(path: Path, mib: int, rng: random.Random) -> None:
    with open(path, "wb") as f:
        for _ in range((mib << 20) // PAGE):
            f.write(db_page(rng))


def rewrite_pages(paths: list[Path], share: float, rng: random.Random) -> int:
    """Rewrite `share` of all pages in place, at random; returns how many."""
    pages = [(p, i) for p in paths for i in range(p.stat().st_size // PAGE)]
    chosen = rng.sample(pages, max(1, int(len(pages) * share)))
    for p, i in chosen:
        with open(p, "r+b") as f:
            f.seek(i * PAGE)
            f.write(db_page(rng))
    return len(chosen)


def block_case(work: Path, mib: int, rows: list[dict]) -> None:
    rng = random.Random(1)
    data = work / "block"
    data.mkdir()
    img = data / "volume.img"
    write_pages(img, mib, rng)
    repos = [Repo(work, "block-pages", cdc=False), Repo(work, "block-cdc", cdc=True)]
    # The orchestrator cuts a Block PVC's volume.img into 4 KiB pages; --page-files does
    # the same for a file.
    for repo in repos:
        rows.append(repo.backup("block", "first", data, "block", ["--page-files", "volume.img"] if not repo.cdc else []))
    n = rewrite_pages([img], 0.01, rng)
    print(f"# block: rewrote {n} pages of 8 KiB", file=sys.stderr)
    for repo in repos:
        rows.append(repo.backup("block", "1% pages rewritten", data, "block",
                                ["--page-files", "volume.img"] if not repo.cdc else []))
    shutil.rmtree(data)


def pg_case(work: Path, mib: int, rows: list[dict]) -> None:
    rng = random.Random(2)
    data = work / "pgdata"
    base = data / "base" / "16384"
    base.mkdir(parents=True)
    (data / "global").mkdir()
    (data / "pg_wal").mkdir()
    (data / "PG_VERSION").write_text("17\n")
    rels = []
    segment = 128
    for i in range(max(1, mib // segment)):
        p = base / str(16400 + i)
        write_pages(p, segment, rng)
        rels.append(p)
    for i in range(4):
        write_pages(base / f"{16400 + i}_fsm", 1, rng)
    write_pages(data / "global" / "1262", 1, rng)
    write_pages(data / "pg_wal" / "000000010000000000000001", 16, rng)
    repos = [Repo(work, "pg-pages", cdc=False), Repo(work, "pg-cdc", cdc=True)]
    for repo in repos:
        rows.append(repo.backup("pg", "first", data, "pg"))
    n = rewrite_pages(rels, 0.01, rng)
    write_pages(data / "pg_wal" / "000000010000000000000002", 16, rng)
    print(f"# pg: rewrote {n} pages of 8 KiB and added a 16 MiB WAL segment", file=sys.stderr)
    for repo in repos:
        rows.append(repo.backup("pg", "1% pages rewritten + WAL segment", data, "pg"))
    shutil.rmtree(data)


def wrong_case(work: Path, mib: int, rows: list[dict]) -> None:
    rng = random.Random(3)
    data = work / "logs"
    data.mkdir()
    log = data / "app.log"
    with open(log, "w") as f:
        written = 0
        while written < mib << 20:
            line = f"2026-11-30T04:{rng.randrange(60):02}:{rng.randrange(60):02}Z INFO request id={rng.getrandbits(64):016x} path=/api/v1/items/{rng.randrange(10**6)} status=200 took={rng.randrange(900)}ms\n"
            f.write(line)
            written += len(line)
    repos = [Repo(work, "log-as-pages", cdc=False), Repo(work, "log-cdc", cdc=True)]
    for repo in repos:
        rows.append(repo.backup("wrong", "first", data, "logs", ["--page-files", "app.log"] if not repo.cdc else []))
    text = log.read_bytes()
    log.write_bytes(text[:4000] + b"x" * 100 + text[4000:])
    for repo in repos:
        rows.append(repo.backup("wrong", "100 bytes inserted", data, "logs",
                                ["--page-files", "app.log"] if not repo.cdc else []))
    shutil.rmtree(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=250_000)
    ap.add_argument("--block-mib", type=int, default=1024)
    ap.add_argument("--pg-mib", type=int, default=1024)
    ap.add_argument("--wrong-mib", type=int, default=256)
    ap.add_argument("--only", default="etcd,block,pg,wrong")
    ap.add_argument("--workdir", default="/tmp/cairn-dedup-bench")
    ap.add_argument("--keep", action="store_true", help="keep the repositories (and the etcd snapshot)")
    a = ap.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn", "-p", "cairn-etcd-snapshot"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn-tests", "--example", "etcd_churn"], cwd=ROOT, check=True)
    rows: list[dict] = []
    cases = {"etcd": lambda: etcd_case(work, a.keys, rows), "block": lambda: block_case(work, a.block_mib, rows),
             "pg": lambda: pg_case(work, a.pg_mib, rows), "wrong": lambda: wrong_case(work, a.wrong_mib, rows)}
    for name in a.only.split(","):
        cases[name]()
    print(f"\n{'case':6} {'repo':13} {'phase':34} {'MiB':>8} {'new MiB':>9} {'new/first':>9} {'s':>7} {'RSS MiB':>8}")
    for r in rows:
        size = f"{r['size_bytes'] / (1 << 20):8.1f}" if "size_bytes" in r else " " * 8
        new = f"{r['new_bytes'] / (1 << 20):9.2f}" if "new_bytes" in r else " " * 9
        share = f"{r['new_share_of_first'] * 100:8.1f}%" if r.get("new_share_of_first") is not None else " " * 9
        print(f"{r['case']:6} {r['repo']:13} {r['phase']:34} {size} {new} {share} {r['wall_s']:7.2f} {r['peak_rss_mib']:8.1f}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
