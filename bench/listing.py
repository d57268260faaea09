"""What listing a dataset's folder costs, against reading its manifest: 100 k local files in an ImageFolder
tree, and 20 k keys in a bucket on the S3 test endpoint (moto's server on 127.0.0.1, started here).

Each listing is the one a run does (``sources.list_image_folder``); the manifest is the one a run keeps of
that listing (``manifest.listed``) and reads on its resume. S3 returns at most 1,000 keys per
ListObjectsV2 request, so a listing of K keys is at least K / 1,000 requests one after the other; the
time per request measured here is moto's on this machine, not S3's (BENCHMARKS.md says what it assumes
for S3).

    .venv/bin/python bench/listing.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json, machine, say, table

KEYS_PER_REQUEST = 1000  # S3's ListObjectsV2 page


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def tree_names(n: int, classes: int = 1000) -> list[str]:
    """ImageNet-like relative paths: ``n0000xxxx/n0000xxxx_0000yyy.JPEG``, class-sorted."""
    return [f"n{c:08d}/n{c:08d}_{i:07d}.JPEG" for i in range(n) for c in [i * classes // n]]


def listing_vs_manifest(root: str, folder: str) -> dict[str, float]:
    from orchestrator.data import manifest, sources

    list_s, listing = timed(lambda: sources.list_image_folder(root))
    manifest.listed(lambda: listing, root, "data.root", folder)  # kept, as a run keeps it
    read_s, kept = timed(lambda: manifest.listed(lambda: sources.list_image_folder(root), root, "data.root", folder))
    assert kept.paths == listing.paths
    return {"files": len(listing.paths), "list_s": list_s, "manifest_read_s": read_s}


def local(n: int, tmp: Path) -> dict[str, float]:
    root = tmp / "tree"
    for name in tree_names(n):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return listing_vs_manifest(str(root), str(tmp / "run"))


def bucket(n: int, tmp: Path) -> dict[str, float]:
    from cluster.services import S3Server

    server = S3Server.start(tmp)
    try:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        server.make_bucket("photos")
        client: Any = server.client()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket="photos", Key=f"train/{k}", Body=b""), tree_names(n)))
        out = listing_vs_manifest("s3://photos/train", "s3://photos/runs/r")
        out["requests"] = math.ceil(n / KEYS_PER_REQUEST)
        out["ms_per_request"] = out["list_s"] / out["requests"] * 1e3
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2,000 files and 1,000 keys, for the smoke test")
    args = parser.parse_args()
    files, keys = (2_000, 1_000) if args.quick else (100_000, 20_000)
    with tempfile.TemporaryDirectory(prefix="listing-bench-") as tmp:
        results = {"local": local(files, Path(tmp) / "local"), "s3": bucket(keys, Path(tmp))}
    rows = [[where, r["files"], r["list_s"], r["manifest_read_s"], r["list_s"] / r["manifest_read_s"]]
            for where, r in results.items()]
    say(args.json, table(["where", "files", "list s", "kept manifest read s", "list / manifest"], rows))
    if args.json:
        emit_json({"benchmark": "listing", "settings": {"quick": args.quick, "files": files, "keys": keys},
                   "results": results, "machine": machine()})


if __name__ == "__main__":
    main()
