#!/usr/bin/env python3
"""cairn-etcd-snapshot vs `etcdctl snapshot save`, on the same >= 1 GiB etcd, in one run.

    tests/bench/etcd_bench.py [--mib 1100] [--workdir /tmp/cairn-etcd-bench]

Starts a private etcd (the test world's build, ~/.cache/cairn-testenv), fills it with random
1 MiB values, then times: `etcdctl snapshot save` to local disk, cairn's first snapshot into
a local-disk repository, and a second cairn snapshot of the unchanged database (dedup).
Prints a JSON line per run and the ratios. A benchmark: fails only on a broken setup.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ETCD_DIR = Path(os.environ.get("CAIRN_TESTENV_CACHE", Path.home() / ".cache/cairn-testenv")) / "etcd-v3.6.16"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(work: Path) -> tuple[subprocess.Popen, str]:
    """A private etcd (8 GiB quota) with its data in `work`, healthy; and its endpoint."""
    cport, pport = free_port(), free_port()
    ep = f"http://127.0.0.1:{cport}"
    etcd = subprocess.Popen(
        [str(ETCD_DIR / "etcd"), "--data-dir", str(work / "etcd"), "--quota-backend-bytes", str(8 << 30),
         "--listen-client-urls", ep, "--advertise-client-urls", ep,
         "--listen-peer-urls", f"http://127.0.0.1:{pport}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"default=http://127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=open(work / "etcd.log", "w"))
    for _ in range(100):
        if subprocess.run([str(ETCD_DIR / "etcdctl"), "--endpoints", ep, "endpoint", "health"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    return etcd, ep


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss / 1024, 1), "stdout": p.stdout}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1100)
    ap.add_argument("--workdir", default="/tmp/cairn-etcd-bench")
    a = ap.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn", "-p", "cairn-etcd-snapshot"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn-tests", "--example", "etcd_fill"], cwd=ROOT, check=True)
    etcd, ep = start_etcd(work)
    try:
        t0 = time.time()
        subprocess.run([str(ROOT / "target/release/examples/etcd_fill"), ep, str(a.mib)], check=True)
        print(f"filled {a.mib} MiB in {time.time() - t0:.1f}s", file=sys.stderr)
        runs = {}
        runs["etcdctl_snapshot_save"] = timed([str(ETCD_DIR / "etcdctl"), "--endpoints", ep, "snapshot", "save", str(work / "etcdctl.db")])
        db = (work / "etcdctl.db").stat().st_size
        ident = work / "id.txt"
        cairn = str(ROOT / "target/release/cairn")
        out = subprocess.run([cairn, "key", "generate", "--out", str(ident)], check=True, capture_output=True, text=True).stdout.strip()
        env = dict(os.environ, CAIRN_REPO=str(work / "repo"), RUST_LOG="warn", CAIRN_LOG_FORMAT="json")
        subprocess.run([cairn, "init", "--recipient", out, "--write-key-out", str(work / "wk.txt")], env=env, check=True, capture_output=True)
        env["CAIRN_WRITE_KEY"] = str(work / "wk.txt")
        snap = [str(ROOT / "target/release/cairn-etcd-snapshot"), "--endpoints", ep, "--json"]
        runs["cairn_first"] = timed(snap, env)
        runs["cairn_unchanged"] = timed(snap, env)
        for name, r in runs.items():
            stdout = r.pop("stdout")
            if name.startswith("cairn"):
                s = json.loads(stdout)
                r.update(new_bytes=s["new_bytes"], db_bytes=s["db_bytes"])
            r["mib_per_s"] = round(db / (1 << 20) / r["wall_s"], 1)
            print(json.dumps({"run": name, "db_bytes": db, **r}))
        base = runs["etcdctl_snapshot_save"]["wall_s"]
        print(json.dumps({
            "ratio_cairn_first_vs_etcdctl_speed": round(base / runs["cairn_first"]["wall_s"], 2),
            "ratio_cairn_unchanged_vs_etcdctl_speed": round(base / runs["cairn_unchanged"]["wall_s"], 2),
        }))
    finally:
        etcd.terminate()
        etcd.wait()


if __name__ == "__main__":
    main()
