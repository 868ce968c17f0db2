#!/usr/bin/env python3
"""Scale benchmark (#29): peak RSS and time of cairn's commands as the repository grows.

A benchmark, not a test. For each size it writes one file of random 4 KiB pages (N pages:
N data blobs, page-chunked with --page-files), backs it up, changes 1 % of its pages, and
then measures, with /usr/bin/time -v, the static binary the images ship:

  incremental backup (1 % changed), check, check --read-data-subset 1%, prune --dry-run,
  a single-file restore, and a first backup of a small other source (20 MiB of files) into
  the same bucket: the run whose memory must not grow with the bucket at all,

each twice: with the index kept in memory (--memory-budget 64GiB: how cairn ran before
budgets) and with a small budget (--memory-budget, default 256MiB) and --cache-dir, where the
index goes to local disk past a quarter of the budget. It prints one JSON line per
measurement and a markdown table with the RSS slope per blob between the sizes.

  tests/bench/scale_bench.py --blobs 250000,1000000
  tests/bench/scale_bench.py --blobs 1000000,5000000 --workdir /mnt/big/scale

Disk: 4 KiB x N for the data, about as much again for the repository, 100 B x N for the
cache. 1M blobs = 4 GiB of data.
"""

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

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = ROOT / "target/x86_64-unknown-linux-musl/release/cairn"
PAGE = 4096


def timed(cmd: list[str], env: dict) -> dict:
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss_kib / 1024, 1), "stdout": p.stdout}


def write_pages(path: Path, pages: int, seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = pages
        while left:
            n = min(left, 4096)
            f.write(rnd.randbytes(n * PAGE))
            left -= n


def change_pages(path: Path, pages: int, share: float, seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        for p in rnd.sample(range(pages), max(1, int(pages * share))):
            f.seek(p * PAGE)
            f.write(rnd.randbytes(PAGE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", default="250000,1000000", help="sizes, comma-separated")
    ap.add_argument("--workdir", default="/tmp/cairn-scale")
    ap.add_argument("--cairn", default=str(DEFAULT_BIN), help="the static binary (images/build.sh binaries)")
    ap.add_argument("--budget", default="256MiB", help="the small budget measured against 64GiB")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cairn = args.cairn
    sizes = [int(x) for x in args.blobs.split(",")]
    rows = []
    for n in sizes:
        base = work / f"n{n}"
        shutil.rmtree(base, ignore_errors=True)
        (base / "data").mkdir(parents=True)
        ident = base / "id.txt"
        out = subprocess.run([cairn, "key", "generate", "--out", str(ident)], check=True,
                             capture_output=True, text=True).stdout
        recipient = re.search(r"age1[0-9a-z]+", out + ident.read_text()).group(0)
        env = dict(os.environ, CAIRN_REPO=str(base / "repo"), RUST_LOG="warn", CAIRN_LOG_FORMAT="json")
        subprocess.run([cairn, "init", "--recipient", recipient, "--write-key-out", str(base / "wk.txt")],
                       env=env, check=True, capture_output=True)
        env["CAIRN_IDENTITY"] = str(ident)
        data = base / "data" / "volume.img"
        small = base / "small"
        small.mkdir()
        rnd = random.Random(7)
        for i in range(20):
            (small / f"file{i}").write_bytes(rnd.randbytes(1 << 20))
        sys.stderr.write(f"[scale] {n} blobs: writing {n * PAGE >> 20} MiB\n")
        write_pages(data, n, seed=n)
        backup = [cairn, "--json", "backup", str(base / "data"), "--source", "scale", "--page-files", "volume.img"]
        first = timed(backup, env)
        rows.append({"blobs": n, "mode": "-", "command": "first backup", **{k: v for k, v in first.items() if k != "stdout"}})
        print(json.dumps(rows[-1]), flush=True)
        for mode, flags in [("memory", ["--memory-budget", "64GiB"]),
                            ("budget", ["--memory-budget", args.budget, "--cache-dir", str(base / "cache")])]:
            (base / "cache").mkdir(exist_ok=True)
            change_pages(data, n, 0.01, seed=hash((n, mode)) & 0xffff)
            target = base / "restore"
            shutil.rmtree(target, ignore_errors=True)
            commands = [
                ("backup 1% changed", backup + flags),
                ("check", [cairn, "check", *flags]),
                ("check --read-data-subset 1%", [cairn, "check", "--read-data-subset", "1%", *flags]),
                ("prune --dry-run", [cairn, "prune", "--dry-run", *flags]),
                ("restore one file", [cairn, "restore", "latest", "--source", "scale", "--target", str(target), *flags]),
                ("small other source, first backup",
                 [cairn, "--json", "backup", str(small), "--source", f"small-{mode}", *flags]),
            ]
            for name, cmd in commands:
                r = timed(cmd, env)
                r.pop("stdout")
                rows.append({"blobs": n, "mode": mode, "command": name, **r})
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(base / "data", ignore_errors=True)
        shutil.rmtree(small, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| command | mode | " + " | ".join(f"{n:,} blobs RSS MiB (s)" for n in sizes) + " | slope B/blob |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    keys = sorted({(r["command"], r["mode"]) for r in rows}, key=lambda k: [r["command"] for r in rows].index(k[0]))
    for cmd, mode in keys:
        cells = {r["blobs"]: r for r in rows if r["command"] == cmd and r["mode"] == mode}
        row = [f"{cells[n]['peak_rss_mib']} ({cells[n]['wall_s']})" if n in cells else "" for n in sizes]
        slope = ""
        if len(sizes) > 1 and sizes[0] in cells and sizes[-1] in cells:
            d = (cells[sizes[-1]]["peak_rss_mib"] - cells[sizes[0]]["peak_rss_mib"]) * 1048576
            slope = f"{d / (sizes[-1] - sizes[0]):.1f}"
        print(f"| {cmd} | {mode} | " + " | ".join(row) + f" | {slope} |")


if __name__ == "__main__":
    main()
