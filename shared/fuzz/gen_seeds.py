#!/usr/bin/env python3
"""Write a small seed corpus for the cairn-fuzz targets: seeds/<target>/<name>.

Usage: gen_seeds.py [OUT_DIR]   (default: seeds/ beside this file)
Only the standard library; the byte layouts follow shared/core/src/repo/{pack,index}.rs.
"""
import base64
import json
import os
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
MAGIC = b"CAIRNPK1"


def bech32(hrp, data):
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    bits, acc, out = 0, 0, []
    for b in data:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)

    def polymod(values):
        gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
        chk = 1
        for v in values:
            top = chk >> 25
            chk = (chk & 0x1FFFFFF) << 5 ^ v
            for i in range(5):
                chk ^= gen[i] if ((top >> i) & 1) else 0
        return chk

    expand = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = polymod(expand + out + [0] * 6) ^ 1
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(charset[d] for d in out + checksum)


def header(kind, wrapped, entries):
    out = bytes([1, kind]) + struct.pack("<I", len(wrapped)) + wrapped + struct.pack("<I", len(entries))
    for (bid, flags, off, length, raw) in entries:
        out += bid + bytes([flags]) + struct.pack("<III", off, length, raw)
    return out


def index(packs):
    out = bytes([1]) + struct.pack("<I", len(packs))
    for pid, h in packs:
        out += pid + struct.pack("<I", len(h)) + h
    return out


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def zstd_raw(content):
    # frame: magic, FHD (single segment, 1-byte content size), one last raw block
    assert len(content) < 256
    return b"\x28\xb5\x2f\xfd\x20" + bytes([len(content)]) + struct.pack("<I", (len(content) << 3) | 1)[:3] + content


def zstd_rle(byte, n):
    assert n < 256
    return b"\x28\xb5\x2f\xfd\x20" + bytes([n]) + struct.pack("<I", (n << 3) | 2 | 1)[:3] + bytes([byte])


def main():
    e1 = (bytes([1] * 32), 1, 8, 100, 200)
    e2 = (bytes([2] * 32), 0, 108, 50, 10)
    h_data = header(0, b"age-wrapped-key", [e1, e2])
    h_tree = header(1, b"", [e1])
    h_empty = header(1, b"", [])
    for n, h in [("data", h_data), ("tree", h_tree), ("empty", h_empty)]:
        write("pack_header", n, h)
        write("pack_read_header", "built_" + n, b"\x01" + struct.pack("<H", 200) + h)
    write("pack_read_header", "raw_min", b"\x00" + MAGIC + struct.pack("<I", 0) + MAGIC)
    write("pack_read_header", "raw_short_box", b"\x00" + MAGIC + bytes(40) + struct.pack("<I", 40) + MAGIC)

    write("index", "two", index([(bytes([9] * 32), h_data), (bytes([8] * 32), h_tree)]))
    write("index", "empty", index([]))

    blob = "ab" * 32
    node_file = {"name": "a.txt", "kind": "file", "mode": 420, "uid": 1000, "gid": 1000,
                 "mtime_ns": 1700000000123456789, "size": 4106,
                 "xattrs": [{"name": "user.x", "value": base64.b64encode(b"v").decode()}],
                 "link_group": 3, "inode": 77, "ctime_ns": -5,
                 "content": [{"id": blob, "len": 10}, {"len": 4096}]}
    node_dir = {"name": {"b64": base64.b64encode(b"d\xff").decode()}, "kind": "dir", "mode": 493,
                "uid": 0, "gid": 0, "mtime_ns": 0, "size": 0, "subtree": [blob]}
    node_link = {"name": "l", "kind": "symlink", "mode": 511, "uid": 0, "gid": 0, "mtime_ns": 1,
                 "size": 0, "target": "a.txt"}
    node_dev = {"name": "tty", "kind": "chardev", "mode": 438, "uid": 0, "gid": 0, "mtime_ns": 1,
                "size": 0, "rdev": 1025}
    node_pages = {"name": "db", "kind": "file", "mode": 384, "uid": 0, "gid": 0, "mtime_ns": 2,
                  "size": 1 << 30, "pages": 4096, "extent_lists": [blob, "cd" * 32]}
    write("tree", "mixed", json.dumps({"version": 1, "nodes": [node_file, node_dir, node_link, node_dev, node_pages]}))
    write("tree", "empty", '{"version":1,"nodes":[]}')
    write("extent_list", "pages", json.dumps({"version": 1, "extents": [{"id": blob, "len": 4096}, {"len": 8192}]}))
    write("extent_list", "empty", '{"version":1,"extents":[]}')

    snap = {"version": 1, "time": "2024-05-06T07:08:09.123456789+02:00", "host": "h", "source": "pvc/ns/data",
            "cluster": "prod", "tags": {"k": "v"}, "parent": "cd" * 32, "root": node_dir,
            "summary": {"files": 1, "dirs": 2, "bytes": 3, "files_read": 4, "bytes_read": 5, "new_blobs": 6,
                        "new_bytes": 7, "duration_ms": 8},
            "partial": True, "failures": [{"path": "/x", "error": "denied"}],
            "meta": {"etcd_revision": 12345, "ratio": 0.25, "list": [1, -2, "s", None, False]}}
    write("snapshot", "full", json.dumps(snap))
    small = {k: snap[k] for k in ("version", "time", "host", "source", "root", "summary")}
    small["time"] = "1970-01-01T00:00:00Z"
    write("snapshot", "minimal", json.dumps(small))

    secret = bytes(range(32))
    repo = "0123456789abcdef" * 4
    ident = bech32("age-secret-key-", bytes(range(100, 132))).upper()
    write("key_material", "valid", json.dumps({"repo": repo, "write_secret": base64.b64encode(secret).decode(),
                                               "data_identity": ident}))
    write("write_key", "valid", "CAIRN-WRITE-KEY-1 %s %s\n" % (repo, base64.b64encode(secret).decode()))

    recipient = bech32("age", bytes(range(7, 39)))
    for name, ch in [("data", {"min": 524288, "avg": 2097152, "max": 8388608}),
                     ("small", {"min": 64, "avg": 64, "max": 64}),
                     ("large", {"min": 1048576, "avg": 16777216, "max": 67108864}),
                     # regression: passed validate() once, then Chunker::new indexed out of bounds
                     ("avg_32m", {"min": 64, "avg": 33554432, "max": 33554432})]:
        write("config", name, json.dumps({"version": 1, "id": repo, "chunker": ch, "compression": 3,
                                          "pack_size": 16777216, "data_recipient": recipient,
                                          "created": "2024-01-01T00:00:00Z"}, indent=2))

    for t in ("decompress", "decompress_small"):
        write(t, "raw", b"\x00" + struct.pack("<I", 5) + b"hello")
        write(t, "zstd_raw", b"\x01" + struct.pack("<I", 5) + zstd_raw(b"hello"))
        write(t, "zstd_rle", b"\x01" + struct.pack("<I", 200) + zstd_rle(0x61, 200))


if __name__ == "__main__":
    main()
