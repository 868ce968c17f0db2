#!/usr/bin/env python3
"""Prune at scale: time and peak RSS of `cairn prune` on a repository with >= 1M blobs.

    tests/bench/prune_scale.py [--files 1000000] [--workdir /tmp/cairn-prune-bench]

Builds a tree of N tiny unique files (one blob each), backs it up, deletes half of it, backs
it up again, forgets the first snapshot, then runs prune twice a grace period apart (mark,
then delete) under GNU time. Prints one JSON line per phase. A benchmark: it only fails on
a broken setup. Needs `cargo build --release -p cairn` (done here) and /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def run(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss / 1024, 1), "stdout": p.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/cairn-prune-bench")
    a = ap.parse_args()
    work = Path(a.workdir)
    data, repo = work / "data", work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    per_dir = 1000
    dirs = (a.files + per_dir - 1) // per_dir
    marker = work / f"data-{a.files}.done"
    if not marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        for d in range(dirs):
            p = data / f"d{d:05}"
            p.mkdir(parents=True)
            for f in range(min(per_dir, a.files - d * per_dir)):
                (p / f"f{f:04}").write_bytes(f"file {d} {f} {os.urandom(8).hex()}\n".encode())
        marker.touch()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn"], cwd=ROOT, check=True)
    cairn = str(ROOT / "target/release/cairn")
    env = dict(os.environ, CAIRN_REPO=str(repo), CAIRN_LOG_FORMAT="json", RUST_LOG="warn")
    ident = work / "id.txt"
    if not ident.exists():
        subprocess.run([cairn, "key", "generate", "--out", str(ident)], check=True, capture_output=True)
    recipient = [l.split(": ")[1] for l in ident.read_text().splitlines() if "public key" in l][0]
    wk = work / "wk.txt"
    wk.unlink(missing_ok=True)
    subprocess.run([cairn, "init", "--recipient", recipient, "--write-key-out", str(wk)], env=env, check=True, capture_output=True)
    env["CAIRN_IDENTITY"] = str(ident)
    out = {}
    out["backup_full"] = run([cairn, "backup", str(data), "--source", "big"], env)
    # Second version: half of the directories gone (moved aside, restored afterwards).
    aside = work / "aside"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for d in range(0, dirs, 2):
        (data / f"d{d:05}").rename(aside / f"d{d:05}")
    out["backup_half"] = run([cairn, "backup", str(data), "--source", "big"], env)
    for p in aside.iterdir():
        p.rename(data / p.name)
    out["forget"] = run([cairn, "forget", "--keep-last", "1"], env)
    prune = [cairn, "prune", "--grace", "20s", "--lock-lease", "10s", "--json"]
    out["prune_mark"] = run(prune, env)
    time.sleep(21)
    out["prune_delete"] = run(prune, env)
    out["check"] = run([cairn, "check"], env)
    for k, v in out.items():
        stdout = v.pop("stdout")
        if k.startswith("prune"):
            r = json.loads(stdout)
            v.update({x: r[x] for x in ("blobs", "packs", "marked_packs", "deleted_packs", "deleted_bytes", "index_objects_before", "index_objects_after")})
        print(json.dumps({"phase": k, **v}))


if __name__ == "__main__":
    main()
