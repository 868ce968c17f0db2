#!/usr/bin/env python3
"""`cairn ui` on a large manifest snapshot: response times of the API calls a click makes.

    tests/bench/ui_bench.py [--objects 50000] [--namespaces 100] [--no-build]

Generates a manifest-snapshot tree (the layout of FORMAT.md §10.1) with N objects: 60 % Pods,
20 % ConfigMaps, 10 % Deployments, 10 % Services, spread over the namespaces, plus 50 Nodes;
backs it up twice as source `manifests` (the second time with 1 % of the Deployments
scaled), starts `cairn ui` with the identity and times each API call a page makes, cold
(first call) and warm (repeated), and reads the server's peak RSS from /proc. A benchmark: it
fails only on a broken setup. Target (#10): every click answers in well under a second on
50k objects, and nothing loads the whole snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def log(msg: str) -> None:
    print(f"[ui-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {app}
spec:
  containers:
  - image: registry.example/{app}:1.{v}
    name: main
  nodeName: node-{node}
status:
  containerStatuses:
  - name: main
    ready: {ready}
    restartCount: {restarts}
  phase: Running
"""

DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  template:
    spec:
      containers:
      - image: registry.example/{name}:2.{v}
        name: main
status:
  availableReplicas: {ready}
  readyReplicas: {ready}
  updatedReplicas: {replicas}
"""

CONFIGMAP = """apiVersion: v1
data:
  settings.properties: "{data}"
kind: ConfigMap
metadata:
  name: {name}
  namespace: {ns}
"""

SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  ports:
  - port: 80
  selector:
    app: {name}
"""

NODE = """apiVersion: v1
kind: Node
metadata:
  name: {name}
status:
  capacity:
    cpu: "16"
    memory: 64Gi
    pods: "110"
  conditions:
  - status: "True"
    type: Ready
"""


def generate(tree: Path, objects: int, namespaces: int, scale: set[str]) -> None:
    rng = random.Random(7)
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "cluster/core/nodes").mkdir(parents=True)
    (tree / "cluster/version.json").write_text('{"gitVersion":"v1.34.4"}')
    for i in range(50):
        (tree / f"cluster/core/nodes/node-{i}.yaml").write_text(NODE.format(name=f"node-{i}"))
    kinds = [("core/pods", POD, 60), ("core/configmaps", CONFIGMAP, 20), ("apps/deployments", DEPLOY, 10),
             ("core/services", SERVICE, 10)]
    for k, (d, tmpl, share) in enumerate(kinds):
        count = objects * share // 100
        for i in range(count):
            ns = f"team-{i % namespaces:03d}"
            name = f"{d.split('/')[1][:-1]}-{i:06d}"
            p = tree / "namespaces" / ns / d
            p.mkdir(parents=True, exist_ok=True)
            replicas = 3 + (2 if f"{ns}/{name}" in scale else 0)
            text = tmpl.format(name=name, ns=ns, app=f"app-{i % 500}", v=i % 7, node=i % 50,
                               ready=str(rng.random() > 0.05).lower(), restarts=rng.randrange(3),
                               replicas=replicas, data="x" * rng.randrange(100, 2000))
            (p / f"{name}.yaml").write_text(text)


def rss_peak(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=50000)
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--workdir", default="/tmp/cairn-ui-bench")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cairn"], cwd=ROOT, check=True)
    cairn = str(ROOT / "target/release/cairn")
    env = dict(os.environ, CAIRN_REPO=f"file://{work}/repo", RUST_LOG="warn")
    subprocess.run([cairn, "key", "generate", "--out", str(work / "id.txt")], env=env, check=True,
                   capture_output=True)
    recipient = next(l.split()[-1] for l in (work / "id.txt").read_text().splitlines() if "public key" in l)
    subprocess.run([cairn, "init", "--recipient", recipient, "--write-key-out", str(work / "wk.txt")],
                   env=env, check=True, capture_output=True)
    env["CAIRN_WRITE_KEY"] = str(work / "wk.txt")
    tree = work / "manifests"
    deployments = args.objects * 10 // 100
    scaled = {f"team-{i % args.namespaces:03d}/deployment-{i:06d}" for i in range(0, deployments, 100)}
    ids = []
    for round_, scale in enumerate([set(), scaled]):
        t0 = time.time()
        generate(tree, args.objects, args.namespaces, scale)
        log(f"generated {args.objects} objects in {time.time() - t0:.1f} s")
        t0 = time.time()
        out = subprocess.run([cairn, "--json", "backup", str(tree), "--source", "manifests"], env=env,
                             check=True, capture_output=True, text=True).stdout
        ids.append(json.loads(out)["id"])
        log(f"backup {round_ + 1}: {time.time() - t0:.1f} s")
    ui = subprocess.Popen([cairn, "--identity", str(work / "id.txt"), "ui", "--listen", "127.0.0.1:0"], env=env,
                          stdout=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()
        base = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
        a, b = ids

        def call(endpoint: str, params: dict[str, str]) -> tuple[float, int]:
            url = f"{base}/api/{endpoint}?{urllib.parse.urlencode(params)}"
            t0 = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                n = len(r.read())
            return (time.perf_counter() - t0) * 1000, n

        ns = "team-042"
        calls = [
            ("timeline: snapshots", "snapshots", {}),
            ("snapshot header", "snapshot", {"id": b}),
            ("pods, all namespaces, page 1", "cluster", {"snap": b, "view": "pods", "limit": "100"}),
            ("pods, all namespaces, last page", "cluster",
             {"snap": b, "view": "pods", "limit": "100", "offset": str(args.objects * 60 // 100 - 100)}),
            ("pods filtered by name", "cluster", {"snap": b, "view": "pods", "q": "pod-000777"}),
            ("deployments of one namespace", "cluster", {"snap": b, "view": "deployments", "ns": ns}),
            ("nodes", "cluster", {"snap": b, "view": "nodes"}),
            ("namespaces", "ls", {"snap": b, "path": "namespaces", "limit": "2000"}),
            ("resources of a namespace", "resources", {"snap": b, "ns": ns}),
            ("one object's YAML", "file", {"snap": b, "path": f"namespaces/{ns}/apps/deployments/deployment-000042.yaml"}),
            ("same object earlier/later", "neighbors", {"snap": b, "path": f"namespaces/{ns}/apps/deployments/deployment-000042.yaml"}),
            ("diff of the two snapshots", "diff", {"a": a, "b": b}),
            ("diff, one namespace", "diff", {"a": a, "b": b, "ns": "team-000"}),
        ]
        rows = []
        for label, endpoint, params in calls:
            cold, size = call(endpoint, params)
            warm = min(call(endpoint, params)[0] for _ in range(3))
            rows.append((label, cold, warm, size))
            log(f"{label}: cold {cold:.0f} ms, warm {warm:.0f} ms, {size} bytes")
        peak = rss_peak(ui.pid)
        diff = json.loads(urllib.request.urlopen(f"{base}/api/diff?a={a}&b={b}").read())
        print(f"\n`cairn ui` on {args.objects} objects in {args.namespaces} namespaces (release build, file://)\n")
        print("| call | cold ms | warm ms | response bytes |\n|---|---:|---:|---:|")
        for label, cold, warm, size in rows:
            print(f"| {label} | {cold:.0f} | {warm:.0f} | {size} |")
        print(f"\nserver peak RSS: {peak:.0f} MiB; the diff found {len(diff['changes'])} changed objects "
              f"(expected {len(scaled)})")
    finally:
        ui.terminate()
        ui.wait(timeout=10)


if __name__ == "__main__":
    main()
