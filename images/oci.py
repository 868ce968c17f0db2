#!/usr/bin/env python3
"""Offline image builder: the same images as the Dockerfiles, with no Docker and no registry.

    oci.py base DIR
        Writes the base root filesystem every cairn image starts from: what
        gcr.io/distroless/static-debian12:nonroot gives a static binary (CA certificates, passwd
        and group with root, nobody and nonroot (65532), nsswitch.conf, a world-writable /tmp,
        /home/nonroot, the licence files), taken from this Debian machine. The Dockerfiles COPY
        the same directory onto `scratch`, so both builds yield the same files.

    oci.py archive --tag NAME:TAG --base DIR --add SRC=DEST[:MODE] ... --entrypoint PATH --out TAR
        Writes a `docker save`-style archive (what `ctr images import` and `docker load` read):
        one layer for the base, one for the binaries, a config with USER 65532:65532. Layers
        are reproducible: sorted entries, fixed mtimes, numeric owners only.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

NONROOT = 65532
# Fixed timestamps make the same inputs give the same image digest (SOURCE_DATE_EPOCH).
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

PASSWD = """root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = """root:x:0:
nobody:x:65534:
nonroot:x:65532:
"""
# Debian files the base carries, with where they go. The CA bundle is what the S3 and OTLP
# clients trust (rustls reads SSL_CERT_FILE / the platform path); the copyright files are
# the licences of what the image redistributes.
HOST_FILES = [
    ("/etc/ssl/certs/ca-certificates.crt", "etc/ssl/certs/ca-certificates.crt", 0o444),
    ("/usr/share/doc/ca-certificates/copyright", "usr/share/doc/ca-certificates/copyright", 0o444),
    ("/usr/share/common-licenses/Apache-2.0", "usr/share/doc/cairn/LICENSE", 0o444),
]


def write_base(root):
    if os.path.exists(root):
        shutil.rmtree(root)
    for d, mode in [("etc", 0o755), ("etc/ssl/certs", 0o755), ("tmp", 0o1777),
                    ("home", 0o755), ("home/nonroot", 0o700), ("usr/local/bin", 0o755),
                    ("usr/share/doc/cairn", 0o755), ("usr/share/doc/ca-certificates", 0o755)]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, d), mode)
    for name, text in [("etc/passwd", PASSWD), ("etc/group", GROUP),
                       ("etc/nsswitch.conf", "hosts: files dns\n")]:
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(root, name), 0o444)
    for src, dest, mode in HOST_FILES:
        if not os.path.exists(src):
            sys.exit(f"oci.py: {src} is missing (install ca-certificates and base-files)")
        shutil.copyfile(src, os.path.join(root, dest))
        os.chmod(os.path.join(root, dest), mode)


def tar_layer(entries):
    """entries: list of (path in image, local path or None for a directory, mode, uid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, local, mode, uid in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime, info.mode, info.uid, info.gid = EPOCH, mode, uid, uid
            info.uname = info.gname = ""
            if local is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = os.path.getsize(local)
                with open(local, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def base_entries(root):
    """The base directory as layer entries; /home/nonroot belongs to nonroot, as in distroless."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            local = os.path.join(dirpath, name)
            path = os.path.normpath(os.path.join(rel, name))
            mode = os.stat(local).st_mode & 0o7777
            uid = NONROOT if path == "home/nonroot" else 0
            entries.append((path, None if os.path.isdir(local) else local, mode, uid))
    return entries


def parents(path):
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def write_archive(args):
    layers = [tar_layer(base_entries(args.base))]
    added, dirs = [], set()
    for spec in args.add:
        src, _, dest = spec.partition("=")
        dest, _, mode = dest.partition(":")
        dest = dest.lstrip("/")
        dirs.update(parents(dest))
        added.append((dest, src, int(mode or "555", 8), 0))
    added += [(d, None, 0o755, 0) for d in sorted(dirs)]
    layers.append(tar_layer(added))

    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [args.entrypoint],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.source": "https://github.com/cairn-backup/cairn",
                       "org.opencontainers.image.licenses": "Apache-2.0"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cairn base (images/oci.py base)"},
                    {"created": "1970-01-01T00:00:00Z", "created_by": "cairn binaries"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [d.split(":")[1] + "/layer.tar" for d in diff_ids]
    manifest = [{"Config": config_name, "RepoTags": [args.tag], "Layers": layer_names}]
    files = [(config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())]
    files += list(zip(layer_names, layers))
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            if "/" in name:
                d = tarfile.TarInfo(name.split("/")[0])
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                tar.addfile(d)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    size = sum(len(layer) for layer in layers)
    print(f"{args.tag}\t{size}\t{args.out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    base = sub.add_parser("base", help="write the base root filesystem")
    base.add_argument("dir")
    arc = sub.add_parser("archive", help="write an image archive")
    arc.add_argument("--tag", required=True)
    arc.add_argument("--base", required=True)
    arc.add_argument("--add", action="append", default=[], help="SRC=DEST[:MODE] (mode in octal, default 555)")
    arc.add_argument("--entrypoint", required=True)
    arc.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.cmd == "base":
        write_base(args.dir)
    else:
        write_archive(args)


if __name__ == "__main__":
    main()
