#!/usr/bin/env python3
"""cairn-manifest-export on a cluster with N objects: wall time, objects/s, peak RSS.

    . /tmp/cairn-testenv/env.sh            # or any KUBECONFIG with admin rights
    tests/bench/manifest_bench.py [--count 20000] [--namespace cairn-bench] [--keep]

Fills a namespace with N realistic objects (tests/examples/kube_fill.rs; skipped when the
namespace says it already holds them), then exports into fresh local (file://) repositories:
the whole cluster, first run and unchanged re-run, then `-n NAMESPACE`, first and unchanged.
Each run is measured with /usr/bin/time -v (wall time, peak RSS, CPU); object and byte counts
come from the export's --json summary. References: `kubectl get ... -o yaml` over the same
resources, and `cairn diff SNAP live`. Prints a markdown table and writes it, the raw numbers
and every command's output to the work dir. A benchmark: it fails only on a broken setup.
Target: whole-cluster export of 20k objects < 10 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MiB = 1 << 20
FILLED = "cairn.bench/kube-fill-count"  # the namespace annotation kube_fill sets when done
TARGET_S = 10.0


def log(msg: str) -> None:
    print(f"[manifest-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def test_world_env() -> dict:
    """os.environ, plus the test world's env.sh when no KUBECONFIG is set."""
    env = dict(os.environ)
    state = Path(env.get("CAIRN_TESTENV_STATE", "/tmp/cairn-testenv"))
    if "KUBECONFIG" not in env and (state / "env.sh").exists():
        for k, v in re.findall(r"^export (\w+)='?(.*?)'?$", (state / "env.sh").read_text(), re.M):
            env.setdefault(k, v)
    if "KUBECONFIG" not in env:
        sys.exit("no KUBECONFIG: load a test world (. /tmp/cairn-testenv/env.sh) or point KUBECONFIG at a cluster")
    return env


def measured(name: str, cmd: list[str], env: dict, logs: Path, ok_codes=(0,)) -> dict:
    """Run cmd under /usr/bin/time -v; stdout and stderr go to logs/<name>.*."""
    tfile, out_f, err_f = (logs / f"{name}.{s}" for s in ("time", "stdout", "stderr"))
    with open(out_f, "wb") as out, open(err_f, "wb") as err:
        t0 = time.perf_counter()
        rc = subprocess.call(["/usr/bin/time", "-v", "-o", str(tfile), *cmd], env=env, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    tv = tfile.read_text(errors="replace")
    grab = lambda pat: float(m.group(1)) if (m := re.search(pat, tv)) else 0.0  # noqa: E731
    if rc not in ok_codes:
        sys.exit(f"{name}: {' '.join(cmd)} failed ({rc}):\n{err_f.read_text(errors='replace')[-3000:]}")
    return {"wall_s": wall, "rss_mib": grab(r"Maximum resident set size \(kbytes\): (\d+)") / 1024,
            "cpu_s": grab(r"User time \(seconds\): ([\d.]+)") + grab(r"System time \(seconds\): ([\d.]+)"),
            "stdout": out_f.read_text(errors="replace"), "stderr": err_f.read_text(errors="replace")}


def kubectl_out(kubectl: str, args: list[str], env: dict, check=True) -> str:
    r = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed: {r.stderr[-2000:]}")
    return r.stdout.strip() if r.returncode == 0 else ""


def wait_namespace_gone(kubectl: str, ns: str, env: dict) -> None:
    t0 = time.time()
    while kubectl_out(kubectl, ["get", "ns", ns, "-o", "name", "--ignore-not-found"], env, check=False):
        if time.time() - t0 > 300:
            sys.exit(f"namespace {ns} is still terminating after 300 s")
        time.sleep(2)


def fill(a, env: dict, kubectl: str, fill_bin: Path) -> dict:
    phase = kubectl_out(kubectl, ["get", "ns", a.namespace, "-o", "jsonpath={.status.phase}", "--ignore-not-found"],
                        env)
    if phase == "Terminating":
        log(f"namespace {a.namespace} is terminating (an earlier run's clean-up): waiting")
        wait_namespace_gone(kubectl, a.namespace, env)
    elif phase:
        key = FILLED.replace(".", "\\.")
        have = kubectl_out(kubectl, ["get", "ns", a.namespace, "-o", "jsonpath={.metadata.annotations." + key + "}"], env)
        if have == str(a.count):
            log(f"namespace {a.namespace} already holds {a.count} filled objects: not filling")
            return {"skipped": True}
    log(f"filling namespace {a.namespace} with {a.count} objects ({a.fill_concurrency} in flight)")
    t0 = time.perf_counter()
    r = subprocess.run([str(fill_bin), "--namespace", a.namespace, "--count", str(a.count),
                        "--concurrency", str(a.fill_concurrency)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"kube_fill failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}")
    log(r.stdout.strip())
    # Let the controller manager catch up (EndpointSlices and Endpoints of the Services), so
    # the first export and the unchanged re-run see the same namespace.
    time.sleep(5)
    return {"skipped": False, "wall_s": wall, "line": r.stdout.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000, help="objects kube_fill creates (default 20000)")
    ap.add_argument("--namespace", default="cairn-bench", help="namespace to fill (default cairn-bench)")
    ap.add_argument("--fill-concurrency", type=int, default=32, help="creates in flight while filling (default 32)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cairn-manifest-bench"))
    ap.add_argument("--kubectl", default=None, help="default $CAIRN_TEST_BIN/kubectl, else kubectl on PATH")
    ap.add_argument("--no-build", action="store_true", help="use target/release binaries and the built kube_fill as they are")
    ap.add_argument("--keep", action="store_true", help="keep the namespace (and its objects) for the next run")
    ap.add_argument("--export-args", default="", help="extra arguments for every export, e.g. '--concurrency 16'")
    a = ap.parse_args()
    env = test_world_env()
    env.pop("RUST_LOG", None)
    for k in [k for k in env if k.startswith("CAIRN_") and k not in ("CAIRN_TEST_BIN", "CAIRN_TESTENV_STATE")]:
        del env[k]
    env["CAIRN_LOG_FORMAT"] = "json"
    kubectl = a.kubectl or (str(Path(env["CAIRN_TEST_BIN"]) / "kubectl") if "CAIRN_TEST_BIN" in env else "kubectl")

    if not a.no_build:
        log("building cairn and cairn-manifest-export (release) and kube_fill (debug: the fill is API-server bound)")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cairn", "-p", "cairn-manifest-export"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "-q", "-p", "cairn-tests", "--example", "kube_fill"], cwd=ROOT, check=True)
    cairn, export = str(ROOT / "target/release/cairn"), str(ROOT / "target/release/cairn-manifest-export")
    fill_bin = next((p for p in (ROOT / "target/debug/examples/kube_fill", ROOT / "target/release/examples/kube_fill")
                     if p.exists()), None)
    if fill_bin is None:
        sys.exit("kube_fill not built: cargo build -p cairn-tests --example kube_fill")

    work = a.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "cpus": os.cpu_count(), "count": a.count, "namespace": a.namespace, "runs": {}}
    results["server"] = kubectl_out(kubectl, ["version", "-o", "json"], env)
    results["fill"] = fill(a, env, kubectl, fill_bin)

    ident = work / "id.txt"
    out = subprocess.run([cairn, "key", "generate", "--out", str(ident)], env=env, check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"age1[0-9a-z]+", out) or re.search(r"age1[0-9a-z]+", ident.read_text())
    recipient = m.group(0)
    runs, snaps = results["runs"], {}
    extra = a.export_args.split()
    for variant, scope in (("cluster", []), ("ns", ["-n", a.namespace])):
        repo, wk = f"file://{work / f'repo-{variant}'}", work / f"wk-{variant}.txt"
        subprocess.run([cairn, "--repo", repo, "init", "--recipient", recipient, "--write-key-out", str(wk)],
                       env=env, check=True, capture_output=True)
        for phase in ("first", "unchanged"):
            name = f"export-{variant}-{phase}"
            log(f"{name}")
            r = measured(name, [export, "--repo", repo, "--write-key", str(wk), "--json", *scope, *extra], env, logs,
                         ok_codes=(0, 3))
            s = json.loads(r.pop("stdout"))
            r.pop("stderr")
            r.update({k: s.get(k) for k in ("objects", "resources", "bytes", "new_bytes", "duration_ms", "exit",
                                            "denied", "skipped", "snapshot")})
            r["per_resource_top"] = dict(sorted(s.get("per_resource", {}).items(), key=lambda kv: -kv[1])[:8])
            runs[name] = r
            snaps[variant] = (repo, s.get("snapshot"))
            if s.get("exit") != "ok":
                log(f"  {name}: exit {s.get('exit')} denied={s.get('denied')} skipped={s.get('skipped')}")

    # Reference peer: kubectl over the same resources (what the cluster-wide export lists).
    types = kubectl_out(kubectl, ["api-resources", "--verbs=list", "-o", "name"], env).split()
    types = [t for t in types if t not in ("events", "events.events.k8s.io", "componentstatuses")
             and not t.endswith("metrics.k8s.io")]
    ns_types = kubectl_out(kubectl, ["api-resources", "--verbs=list", "--namespaced=true", "-o", "name"], env).split()
    ns_types = [t for t in ns_types if t in types]
    log("kubectl references")
    for name, args in (("kubectl-cluster", ["get", ",".join(types), "-A", "-o", "yaml"]),
                       ("kubectl-ns", ["get", ",".join(ns_types), "-n", a.namespace, "-o", "yaml"])):
        r = measured(name, [kubectl, *args], env, logs)
        r["yaml_bytes"] = len(r.pop("stdout").encode())
        r["objects"] = None
        r.pop("stderr")
        runs[name] = r

    # cairn diff SNAP live: reads the snapshot back (identity) and lists the live side.
    for variant, scope in (("cluster", []), ("ns", ["-n", a.namespace])):
        repo, snap = snaps[variant]
        name = f"diff-{variant}-live"
        log(name)
        r = measured(name, [cairn, "--repo", repo, "--identity", str(ident), "diff", snap, "live", *scope], env, logs)
        last = [ln for ln in r.pop("stdout").splitlines() if ln.startswith("snapshot ")]
        r["line"] = last[-1] if last else ""
        r["stderr"] = r["stderr"][-500:]
        runs[name] = r

    if not a.keep:
        log(f"deleting namespace {a.namespace} (--keep keeps it)")
        kubectl_out(kubectl, ["delete", "ns", a.namespace, "--wait=false"], env, check=False)

    md = render(results)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    (work / "results.md").write_text(md)
    print(md)
    log(f"results in {work}/results.md and results.json; logs in {logs}")
    return 0


def render(res: dict) -> str:
    runs = res["runs"]
    lines = [f"cairn-manifest-export, {res['count']} filled objects in namespace {res['namespace']}, "
             f"{res['date']}, {res['cpus']} CPUs", "",
             "| run | objects | wall s | objects/s | peak RSS MiB | CPU s | bytes | new bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        if not name.startswith("export"):
            continue
        lines.append(f"| {name.removeprefix('export-')} | {r['objects']} | {r['wall_s']:.2f} | "
                     f"{r['objects'] / r['wall_s']:.0f} | {r['rss_mib']:.1f} | {r['cpu_s']:.2f} | "
                     f"{r['bytes'] / MiB:.1f} MiB | {r['new_bytes'] / MiB:.2f} MiB |")
    lines += ["", "| reference | wall s | peak RSS MiB | CPU s | export first / this (wall) | note |",
              "|---|---:|---:|---:|---:|---|"]
    for name, first in (("kubectl-cluster", "export-cluster-first"), ("kubectl-ns", "export-ns-first"),
                        ("diff-cluster-live", None), ("diff-ns-live", None)):
        r = runs[name]
        ratio = f"{runs[first]['wall_s'] / r['wall_s']:.2f}" if first else ""
        note = f"{r['yaml_bytes'] / MiB:.1f} MiB of YAML" if "yaml_bytes" in r else r.get("line", "")
        lines.append(f"| {name} | {r['wall_s']:.2f} | {r['rss_mib']:.1f} | {r['cpu_s']:.2f} | {ratio} | {note} |")
    w = runs["export-cluster-first"]["wall_s"]
    lines += ["", f"Target: whole-cluster export < {TARGET_S:.0f} s: first run {w:.2f} s "
              f"({'met' if w < TARGET_S else 'NOT met'}), unchanged re-run {runs['export-cluster-unchanged']['wall_s']:.2f} s; "
              f"peak RSS {max(r['rss_mib'] for n, r in runs.items() if n.startswith('export')):.1f} MiB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
