"""The data path's fixed costs against the dataset's size N: what an ImageNet-sized listing (1.28 M
photos) costs the driver and every stream task before a single image is read.

For each N a synthetic manifest of N photos (ImageNet-like relative paths, 1,000 classes, ``path`` and
``label`` in Parquet) is read as ``data.source=manifest`` reads it, in a fresh Python process each (its
memory is its own), on a local Ray of 2 CPUs:

- driver: the time to read the manifest and to build the training row store of a files-kind run (the
  decoded cache does not fit at this size: each epoch's tasks read and decode the files), and the
  driver's RSS over its RSS before reading (after Ray started);
- the decode-once preparation's map UDF (``rows.dataset()`` of the rows): its pickled bytes;
- a stream task: the bytes of its function as Ray pickles it (the UDF with the store and config
  bound), the objects it fetches (the store's index, once per worker process) and their size in the
  object store; its time on a 1-row chunk, the first in a fresh worker process (what a task on a new
  worker or a new epoch pays) and the next one in the same process;
- the epoch's order over all N, and the evaluation samples (the stratified hold-out and the class-
  balanced bank and query orders over N labels).

The paths need not exist for the index's costs; the reads go to a small set of real photos
(tests/photos.py): the store's filesystem maps every path to one of them, so the read path is real.

    .venv/bin/python bench/scale.py [--json] [--quick] [--sizes 10000,100000,1280000]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import emit_json, load_now, machine, say, table

CLASSES = 1000
PHOTOS = 32  # real photos behind every path
SIZES = (10_000, 100_000, 1_280_000)
QUICK_SIZES = (2_000,)


# --- the parent: one child process per N ---------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one small N, for the smoke test")
    parser.add_argument("--sizes", default="", help="comma-separated N (default 10000,100000,1280000)")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # a child: measure this N
    parser.add_argument("--photos", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        emit_json(measure(args.one, Path(args.photos)))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        photos = real_photos(Path(tmp) / "photos")
        rows = [child(n, photos) for n in sizes]
    result = {"benchmark": "scale", "settings": {"quick": args.quick, "sizes": sizes, "classes": CLASSES,
                                                 "photos": PHOTOS},
              "rows": rows, "machine": machine()}
    say(args.json, report(rows))
    if args.json:
        emit_json(result)


def real_photos(folder: Path) -> list[str]:
    from photos import image_folder

    image_folder(folder, 4, PHOTOS // 4, shorter=16)
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def child(n: int, photos: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(photos, f)
    try:
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--photos", f.name], env=env,
                              capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"N={n} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def report(rows: list[dict[str, Any]]) -> str:
    headers = ["N", "read manifest s", "build store s", "driver RSS MB", "prep UDF KB", "task fn KB",
               "task fetches KB", "index in store KB", "1st task ms", "next task ms", "first batch s",
               "epoch order ms", "eval samples ms"]
    cells = [[r["n"], r["read_manifest_s"], r["build_store_s"], r["driver_rss_mb"], r["prepare_udf_bytes"] / 1e3,
              r["task_fn_bytes"] / 1e3, r["task_fetch_bytes"] / 1e3, r["index_store_bytes"] / 1e3,
              r["first_task_ms"], r["next_task_ms"], first_batch_s(r), r["epoch_order_ms"], r["eval_samples_ms"]]
             for r in rows]
    return table(headers, cells)


def first_batch_s(r: dict[str, Any]) -> float:
    """From the start to the first chunk's views, index side: read the manifest, build the store, first task."""
    return float(r["read_manifest_s"] + r["build_store_s"] + r["first_task_ms"] / 1e3)


# --- the child: one N ------------------------------------------------------------------------------------


def photo_filesystem(photos: list[str]) -> Any:
    """A pyarrow filesystem that serves every path from one of a few real photos (by the path's hash), so
    that a synthetic index of any size reads real JPEGs."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    class Photos(pafs.FileSystemHandler):
        def __init__(self, photos: list[str]) -> None:
            self.photos = photos

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Photos) and other.photos == self.photos

        def __reduce__(self) -> Any:
            return photo_handler, (self.photos,)

        def get_type_name(self) -> str:
            return "photos"

        def normalize_path(self, path: str) -> str:
            return path

        def open_input_file(self, path: str) -> Any:
            return pa.OSFile(self.photos[hash(path) % len(self.photos)])

        def open_input_stream(self, path: str) -> Any:
            return self.open_input_file(path)

        def _unused(self, *args: Any) -> Any:
            raise NotImplementedError

        get_file_info = get_file_info_selector = create_dir = delete_dir = delete_dir_contents = _unused
        delete_root_dir_contents = delete_file = move = copy_file = open_output_stream = open_append_stream = _unused

    return pafs.PyFileSystem(Photos(photos))


def photo_handler(photos: list[str]) -> Any:
    return photo_filesystem(photos).handler


def measure(n: int, photos_list: Path) -> dict[str, Any]:
    import numpy as np
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.cloudpickle

    from orchestrator.data import manifest, rows, stream
    from orchestrator.data.evalsets import balanced_order, stratified_holdout
    from workloads.config import Config

    photos = json.loads(photos_list.read_text())
    ray.init(address="local", num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False,
             log_to_driver=False)
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        path = f"{tmp}/train.parquet"
        labels = np.arange(n) % CLASSES
        names = [f"n{c:08d}/n{c:08d}_{i:07d}.JPEG" for i, c in enumerate(labels.tolist())]
        pq.write_table(pa.table({"path": names, "label": labels}), path)
        del names
        rss0 = proc.memory_info().rss

        start = time.perf_counter()
        listing = manifest.read(path, "/imagenet/train")
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        source = rows.from_listing(listing, path)
        del listing
        store = stream.RowStore.from_files(list(source.paths or ()), source.ids, photo_filesystem(photos))
        build_s = time.perf_counter() - start
        rss = proc.memory_info().rss

    udf = prepare_udf(source)
    cfg = Config().replace({"data.augment_batch_size": 1, "data.image_size": 16, "data.decode_size": 16,
                            "data.holdout_fraction": 0.0})
    fn = partial(stream.chunk_views, store=store, cfg=cfg, clock=None)
    fetched = [store.index]
    index_bytes = sum(int(v["object_size"]) for v in ray.experimental.get_object_locations(fetched).values())
    task_times = ray.remote(max_calls=1, num_cpus=1)(_task_times)  # max_calls=1: a fresh worker process
    first_ms, next_ms = ray.get(task_times.remote(store, cfg))

    index = ray.get(store.index)
    start = time.perf_counter()
    stream.epoch_order(index, 0, 7)
    order_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    held = stratified_holdout(source.labels, 0.2, rng)
    balanced_order(source.labels[~held], rng)
    balanced_order(source.labels[held], rng)
    eval_ms = (time.perf_counter() - start) * 1e3
    sizes = {"prepare_udf_bytes": len(ray.cloudpickle.dumps(udf)), "task_fn_bytes": len(ray.cloudpickle.dumps(fn)),
             "task_fetch_bytes": len(pickle.dumps(index, 5))}
    ray.shutdown()
    return {"n": n, "read_manifest_s": read_s, "build_store_s": build_s, "driver_rss_mb": (rss - rss0) / 2**20,
            "driver_rss_total_mb": rss / 2**20, **sizes, "index_store_bytes": index_bytes, "first_task_ms": first_ms,
            "next_task_ms": next_ms, "epoch_order_ms": order_ms, "eval_samples_ms": eval_ms, "load_1min": load_now()}


def prepare_udf(source: Any) -> Any:
    """The map UDF that ``source.dataset()`` hands Ray Data for a files source (nothing is read here: the
    dataset constructors are replaced by a stand-in that keeps what is mapped over it)."""
    import ray.data

    class Captured:
        fn: Any = None

        def map_batches(self, fn: Any, **kwargs: Any) -> Captured:
            self.fn = fn
            return self

    captured = Captured()
    names = ("read_binary_files", "from_arrow")
    real = {name: getattr(ray.data, name) for name in names}
    for name in names:
        setattr(ray.data, name, lambda *args, **kwargs: captured)
    try:
        source.dataset()
    finally:
        for name, fn in real.items():
            setattr(ray.data, name, fn)
    return captured.fn


def _task_times(store: Any, cfg: Any) -> tuple[float, float]:
    """A stream task's time on a 1-row chunk: the first in this fresh worker process, then the next."""
    import numpy as np

    from orchestrator.data import stream

    out = []
    for chunk in (0, 1):
        start = time.perf_counter()
        stream.chunk_views({"id": np.asarray([chunk])}, store, cfg, clock=None, epoch=3)
        out.append((time.perf_counter() - start) * 1e3)
    return out[0], out[1]


if __name__ == "__main__":
    main()
