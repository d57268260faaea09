"""Wait, on the cluster, until it has the CPUs/GPUs a run needs, asking the autoscaler for them.

``simclr train`` sizes its workers from the resources present when it starts and refuses a run the
cluster cannot hold ("train.workers=4 with --use-gpu needs 4 GPUs; the cluster has 0"). On an
autoscaling cluster (GPU workers from zero, spot nodes being replaced, KubeRay pods still pulling
their image) the GPUs come minutes later. ``simclr submit`` therefore runs this first in the job:

    python -m cluster.resources --gpus 4 --timeout-s 1200 && python -m orchestrator.cli train ...

It asks the autoscaler for the bundles (``ray.autoscaler.sdk.request_resources``), polls until the
cluster has them, then withdraws the request so idle nodes can scale down after the run. Exit code 2
with one line when they don't arrive in time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from orchestrator.errors import UserError


def missing(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """What ``have`` lacks of ``need`` (empty when satisfied)."""
    return {k: v - have.get(k, 0.0) for k, v in need.items() if v > 0 and have.get(k, 0.0) + 1e-9 < v}


def wait_for_resources(need: dict[str, float], timeout_s: float, poll_s: float = 5.0) -> dict[str, float]:
    """Block until the connected cluster's total resources cover ``need``; return them."""
    import ray
    from ray.autoscaler.sdk import request_resources

    need = {k: v for k, v in need.items() if v > 0}
    bundles = _bundles(need)
    requested = False
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            have = {k: float(v) for k, v in ray.cluster_resources().items()}
            lack = missing(need, have)
            if not lack:
                return have
            if not requested:
                request_resources(bundles=bundles)
                requested = True
                _say(f"waiting up to {timeout_s:.0f} s for {_fmt(lack)} more (asked the autoscaler)")
            if time.monotonic() > deadline:
                raise UserError(f"the cluster has {_fmt({k: have.get(k, 0.0) for k in need})} after {timeout_s:.0f} s; "
                                f"the run needs {_fmt(need)}: raise the node types' max_workers, check quotas and "
                                f"spot capacity, or lower train.workers")
            time.sleep(poll_s)
    finally:
        if requested:
            request_resources(bundles=[])  # withdraw: a standing request would keep the nodes forever


def _bundles(need: dict[str, float]) -> list[dict[str, float]]:
    """One bundle per GPU (a worker's shape), else the CPUs as one-CPU bundles."""
    gpus = int(need.get("GPU", 0))
    if gpus:
        return [{"GPU": 1.0} for _ in range(gpus)]
    return [{"CPU": 1.0} for _ in range(int(need.get("CPU", 0)))]


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items())) or "nothing"


def _say(message: str) -> None:
    print(f"cluster.resources: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.resources", description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=float, default=0.0, help="CPUs the cluster must have in total")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs the cluster must have in total")
    p.add_argument("--timeout-s", type=float, default=1200.0, help="give up after this long (default 20 min)")
    p.add_argument("--poll-s", type=float, default=5.0)
    args = p.parse_args(argv)
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False, logging_level=logging.WARNING)
    try:
        have = wait_for_resources({"CPU": args.cpus, "GPU": args.gpus}, args.timeout_s, args.poll_s)
    except UserError as err:
        print(f"simclr: error: {err}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    _say(f"the cluster has {_fmt({k: v for k, v in have.items() if k in ('CPU', 'GPU')})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
