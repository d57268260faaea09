"""NT-Xent forward + backward: time and peak memory, ours against the tutorial implementation.

Ours is `workloads.simclr.loss.nt_xent` as the trainer calls it. The baseline ("naive") is the loss as
tutorials write it: the full 2N×2N similarity matrix of all embeddings, the diagonal masked with an
eye mask, cross-entropy against the positive column. With W workers the naive loss all-gathers the
embeddings (with gradient) and every worker computes the full 2N×2N matrix; ours computes only its
2N/W local rows against the 2N gathered columns. One rank is simulated in one process: the gather
returns the local rows (with gradient) between other ranks' constant rows, and its backward copies
the gradient as the real all_reduce does, so the per-worker compute is the real code's, minus the
network.

Peak memory: the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
minus the resident set before the call, measured in a child process where glibc is told to serve
every allocation above 64 KiB with mmap (mallopt M_MMAP_THRESHOLD), so that a freed tensor leaves
the resident set at once and the high-water mark is the peak of live memory, allocator and kernel
workspaces included. torch has no caching allocator on CPU; tracemalloc does not see its memory. The
child first checks the method on a tensor of known size. Times come from the parent process with
glibc's default settings.

    .venv/bin/python bench/loss.py [--json] [--quick] [--batches 256 ... 8192] [--workers 1 8]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import inspect
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from common import emit_json, load_now, machine, median, say, table

import workloads.dist
from workloads.simclr.loss import nt_xent

DIM = 128
MIN_SECONDS, MAX_REPEATS = 0.5, 50
TEMPERATURE = 0.1
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter number
MMAP_THRESHOLD_BYTES = 64 * 1024
HAS_CHUNKS = "chunk_rows" in inspect.signature(nt_xent).parameters


def naive_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """The tutorial loss: every anchor against every embedding in one 2N×2N matrix."""
    n = z0.shape[0]
    z = F.normalize(torch.cat([z0, z1]), dim=1)  # 2N x D
    sim = z @ z.T / temperature  # 2N x 2N
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)  # 2N x 2N
    sim = sim.masked_fill(eye, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # positive: other view
    return F.cross_entropy(sim, targets)


class _SimulatedGather(torch.autograd.Function):
    """Rank r's all_gather: local rows (with gradient) between the other ranks' constant rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, others: torch.Tensor, rank: int) -> torch.Tensor:
        n = x.shape[0]
        ctx.rows = slice(rank * n, (rank + 1) * n)
        return torch.cat([others[: rank * n], x, others[(rank + 1) * n:]])  # (W*N, D)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()  # the real backward all_reduces a copy of the whole gradient
        return grad[ctx.rows], None, None


class SimulatedRank:
    """Holds the other ranks' embeddings; `gather` stands in for workloads.dist.gather_with_grad."""

    def __init__(self, world: int, rank: int, n_local: int, dim: int) -> None:
        self.world, self.rank = world, rank
        g = torch.Generator().manual_seed(1)
        # z0 then z1 of the other ranks, already normalised as ours gathers them.
        self.others = [F.normalize(torch.randn(world * n_local, dim, generator=g), dim=1) for _ in range(2)]
        self.calls = 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        others = self.others[self.calls % 2]
        self.calls += 1
        if self.world == 1:
            return x
        out: torch.Tensor = _SimulatedGather.apply(x, others, self.rank)
        return out


@contextmanager
def simulated_dist(sim: SimulatedRank) -> Iterator[None]:
    """Make workloads.dist answer as rank `sim.rank` of `sim.world` workers."""
    d = workloads.dist
    saved = (d.world_size, d.rank, d.gather_with_grad)
    d.world_size, d.rank, d.gather_with_grad = (lambda: sim.world), (lambda: sim.rank), sim.gather
    try:
        yield
    finally:
        d.world_size, d.rank, d.gather_with_grad = saved


def make_side(side: str, sim: SimulatedRank, chunk_rows: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss one worker computes for its local views, as a function of them."""
    if side == "naive":
        def naive(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
            return naive_nt_xent(sim.gather(z0), sim.gather(z1), TEMPERATURE)
        return naive

    def ours(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"chunk_rows": chunk_rows} if side == "ours_chunked" else {}
        with simulated_dist(sim):
            return nt_xent(z0, z1, TEMPERATURE, gather=True, **kwargs)
    return ours


def local_views(n_local: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n_local, dim, generator=g).requires_grad_(),
            torch.randn(n_local, dim, generator=g).requires_grad_())


def sides(chunk_rows: int) -> list[str]:
    return ["ours", "naive"] + (["ours_chunked"] if HAS_CHUNKS and chunk_rows > 0 else [])


def time_config(batch: int, world: int, chunk_rows: int, repeats: int,
                min_seconds: float = MIN_SECONDS) -> dict[str, list[float]]:
    """Seconds of forward + backward per side, the sides interleaved so load hits them alike."""
    n_local = batch // world
    sim = SimulatedRank(world, 0, n_local, DIM)
    z0, z1 = local_views(n_local, DIM)
    names = sides(chunk_rows)
    fns = {s: make_side(s, sim, chunk_rows) for s in names}
    times: dict[str, list[float]] = {s: [] for s in names}
    first = []
    for s in names:  # one untimed call each: warms this shape up and sizes the repeat count
        start = time.perf_counter()
        fns[s](z0, z1).backward()
        first.append(time.perf_counter() - start)
    # small sizes take milliseconds: repeat them for about MIN_SECONDS per side, up to MAX_REPEATS
    repeats = max(repeats, min(MAX_REPEATS, math.ceil(min_seconds / max(max(first), 1e-6))))
    for rep in range(repeats):
        for s in names if rep % 2 == 0 else names[::-1]:
            z0.grad = z1.grad = None
            start = time.perf_counter()
            fns[s](z0, z1).backward()
            times[s].append(time.perf_counter() - start)
    return times


# --- memory (child process) ---------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Resident-set growth at the peak of fn(), in bytes."""
    gc.collect()
    base = _status_kib("VmRSS")
    _reset_peak()
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def memory_child(settings: dict[str, Any]) -> dict[str, Any]:
    libc = ctypes.CDLL("libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: not glibc?")
    torch.set_num_threads(settings["threads"])
    known = 256 * 2**20

    def allocate_known() -> None:
        t = torch.ones(known // 4)
        del t

    calibration = peak_bytes(allocate_known) / known
    out: dict[str, Any] = {"calibration": calibration, "peaks": {}}
    smallest = min(settings["batches"])
    for batch in [smallest, *settings["batches"]]:  # the first pass warms up (one-time allocations)
        for world in settings["workers"]:
            n_local = batch // world
            for side in sides(settings["chunk_rows"]):
                sim = SimulatedRank(world, 0, n_local, DIM)
                z0, z1 = local_views(n_local, DIM)
                fn = make_side(side, sim, settings["chunk_rows"])

                def step(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fn,
                         z0: torch.Tensor = z0, z1: torch.Tensor = z1) -> None:
                    fn(z0, z1).backward()

                out["peaks"][f"{batch}/{world}/{side}"] = peak_bytes(step)
    return out


def run_memory_child(settings: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(settings)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- driver ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192],
                   help="global batch sizes N (images; 2N embeddings)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="simulated worker counts W")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per side, at least (small sizes repeat for ~0.5 s; median reported)")
    p.add_argument("--chunk-rows", type=int, default=1024,
                   help="rows per chunk of the chunked path, when nt_xent has one (0: skip it)")
    p.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        sys.stdout.write(json.dumps(memory_child(json.loads(args.memory_child))) + "\n")
        return
    if args.quick:
        args.batches, args.workers, args.repeats, args.chunk_rows = [64, 128], [1, 2], 1, 32
    for b in args.batches:
        for w in args.workers:
            if b % w:
                p.error(f"--batches {b} is not divisible by --workers {w}")

    load_before = load_now()
    settings = {"batches": args.batches, "workers": args.workers, "chunk_rows": args.chunk_rows,
                "threads": torch.get_num_threads()}
    for w in args.workers:  # warm-up: first calls load kernels and thread pools
        time_config(min(args.batches), w, args.chunk_rows, 1)
    min_seconds = 0.0 if args.quick else MIN_SECONDS
    times = {(b, w): time_config(b, w, args.chunk_rows, args.repeats, min_seconds)
             for b in args.batches for w in args.workers}
    memory = run_memory_child(settings)
    load_after = load_now()

    names = sides(args.chunk_rows)
    rows, results = [], []
    for (b, w), t in times.items():
        n_local = b // w
        logits_ours = 2 * n_local * 2 * b * 4  # local rows x gathered columns, float32
        rec: dict[str, Any] = {"batch": b, "workers": w, "logits_bytes_ours": logits_ours,
                               "logits_bytes_naive": (2 * b) ** 2 * 4}
        for s in names:
            rec[s] = {"ms": 1000 * median(t[s]), "ms_all": [round(1000 * x, 3) for x in t[s]],
                      "peak_bytes": memory["peaks"][f"{b}/{w}/{s}"]}
        rec["time_ratio_naive_over_ours"] = rec["naive"]["ms"] / rec["ours"]["ms"]
        rec["memory_ratio_naive_over_ours"] = rec["naive"]["peak_bytes"] / max(rec["ours"]["peak_bytes"], 1)
        if "ours_chunked" in rec:
            rec["time_ratio_naive_over_chunked"] = rec["naive"]["ms"] / rec["ours_chunked"]["ms"]
            rec["memory_ratio_naive_over_chunked"] = (rec["naive"]["peak_bytes"]
                                                     / max(rec["ours_chunked"]["peak_bytes"], 1))
        results.append(rec)
        mib = 2**20
        row = [b, w, f"{2 * n_local}x{2 * b}", rec["naive"]["ms"], rec["ours"]["ms"]]
        row += [rec["ours_chunked"]["ms"]] if "ours_chunked" in rec else []
        row += [rec["naive"]["peak_bytes"] / mib, rec["ours"]["peak_bytes"] / mib]
        row += [rec["ours_chunked"]["peak_bytes"] / mib] if "ours_chunked" in rec else []
        row += [f"{rec['time_ratio_naive_over_ours']:.2f}x", f"{rec['memory_ratio_naive_over_ours']:.2f}x"]
        if "ours_chunked" in rec:
            row += [f"{rec['time_ratio_naive_over_chunked']:.2f}x", f"{rec['memory_ratio_naive_over_chunked']:.2f}x"]
        rows.append(row)
    chunked = "ours_chunked" in names
    headers = ["global batch N", "W", "our logits/worker", "naive ms", "ours ms"]
    headers += ["chunked ms"] if chunked else []
    headers += ["naive peak MiB", "ours peak MiB"] + (["chunked peak MiB"] if chunked else [])
    headers += ["time naive/ours", "mem naive/ours"] + (["time naive/chunked", "mem naive/chunked"] if chunked else [])

    result = {
        "benchmark": "loss",
        "settings": {**settings, "dim": DIM, "temperature": TEMPERATURE, "repeats": args.repeats,
                     "quick": args.quick, "chunked_path": chunked,
                     "memory_method": "VmHWM - VmRSS in a child with M_MMAP_THRESHOLD=64KiB"},
        "machine": {**machine(), "load_before": load_before, "load_after": load_after},
        "memory_calibration": memory["calibration"],
        "results": results,
    }
    say(args.json,
        f"NT-Xent forward+backward per worker, D={DIM}, float32, {settings['threads']} threads; "
        f"load {load_before} -> {load_after}",
        f"memory method check: a 256 MiB tensor reads as {memory['calibration']:.3f} x its size",
        "", table(headers, rows), "")
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
