"""How many copies of the decoded cache's blocks the nodes' object stores hold after an epoch, on a
multi-node Ray on this machine (cluster/ray_nodes.py: a head and worker nodes as local processes, each
with its own object store, as separate machines would have).

An ImageFolder of JPEG photos (tests/photos.py) is prepared as `simclr train` prepares it (decoded once
into the object store), then one epoch of the training stream is read; each stream task gathers its
chunk's rows from whichever blocks hold them, and Ray copies a block to the task's node. Ray's own
object directory (``ray.experimental.get_object_locations``) then says which nodes hold each block.

    .venv/bin/python bench/cache_copies.py [--json] [--quick] [--nodes 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import emit_json, machine, say, table


def copies(blocks: list[Any]) -> dict[str, Any]:
    """Copies per block and each node's share of the cache's bytes."""
    import ray

    where = ray.experimental.get_object_locations(blocks)
    total = sum(int(w["object_size"]) for w in where.values())
    per_node: dict[str, int] = {}
    for w in where.values():
        for node in w["node_ids"]:
            per_node[node] = per_node.get(node, 0) + int(w["object_size"])
    counts = [len(w["node_ids"]) for w in where.values()]
    return {"blocks": len(counts), "cache_mb": total / 2**20, "mean_copies": sum(counts) / max(len(counts), 1),
            "max_copies": max(counts, default=0),
            "node_share": sorted((b / total for b in per_node.values()), reverse=True) if total else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 nodes, 64 photos")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    nodes, photos = (2, 64) if args.quick else (args.nodes, 512)

    import ray
    import ray.data
    from photos import image_folder

    from cluster.ray_nodes import LocalCluster
    from orchestrator.data.prepare import prepare
    from orchestrator.data.stream import EpochClock, train_stream
    from workloads.config import Config

    cluster = LocalCluster(auth_mode="disabled")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        cluster.start_head(num_cpus=1, object_store_mb=300)
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_mb=300)
        with tempfile.TemporaryDirectory() as tmp:
            root = image_folder(Path(tmp) / "photos", 8, photos // 8, shorter=96)
            ray.init(address=cluster.gcs_address, log_to_driver=False)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.execution_options.preserve_order = True
            cfg = Config().replace({"data.source": "imagefolder", "data.root": str(root), "data.decode_size": 64,
                                    "data.image_size": 32, "data.holdout_fraction": 0.0,
                                    "data.augment_batch_size": 16})
            data = prepare(cfg.data, 0)
            assert data.train is not None and data.train.blocks
            blocks = list(data.train.blocks)
            prepared = copies(blocks)
            clock = EpochClock.remote()  # type: ignore[attr-defined]
            ray.get(clock.set.remote(1))
            rows = sum(len(b["row_id"]) for b in train_stream(data.train, cfg, clock).iter_batches(batch_size=64))
            after = copies(blocks)
            ray.shutdown()
    finally:
        cluster.stop()
    result = {"benchmark": "cache_copies", "settings": {"quick": args.quick, "nodes": nodes, "photos": photos},
              "rows_streamed": rows, "after_prepare": prepared, "after_epoch": after, "machine": machine()}
    say(args.json, table(["when", "blocks", "cache MB", "mean copies", "max copies", "nodes' shares of the cache"],
                         [[when, r["blocks"], r["cache_mb"], r["mean_copies"], r["max_copies"],
                           " / ".join(f"{s:.2f}" for s in r["node_share"])]
                          for when, r in (("after prepare", prepared), ("after one epoch", after))]))
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
