"""Decode once per sweep: a 4-trial `simclr tune` sweep's data time, prepared once for the sweep (the
default) against each trial reading and decoding the source itself (`--prepare-per-trial`).

The source is a class-sorted ImageFolder of JPEG photographs (crops of scikit-learn's two sample photos,
tests/photos.py; shorter side `--shorter` px), decoded at `data.decode_size` = 64. Each sweep runs 4
trials of 1 epoch (a grid over `loss.temperature`, no scheduler, one trial at a time on one worker) as
`simclr tune` in a subprocess with its own local Ray. Reported per sweep: the data time (the parent's
`prepare_seconds` plus every trial's, from MLflow) and the sweep's wall time. The two sweeps alternate
over `--repeats` rounds.

    .venv/bin/python bench/sweep_data.py [--json] [--quick] [--images 800] [--repeats 1] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit_json, load_now, machine, median, say, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photos import image_folder

SETS = {"data.source": "imagefolder", "data.decode_size": 64, "data.image_size": 32, "data.holdout_fraction": 0.0,
        "data.augment_batch_size": 64, "model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": 16,
        "train.batch_size": 64, "train.workers": 1, "optim.warmup_epochs": 0, "eval.every_epochs": 100,
        "eval.linear_probe_epochs": 0}
TEMPERATURES = "grid(0.1,0.2,0.3,0.5)"


def run_sweep(root: Path, work: Path, name: str, per_trial: bool, cores: int) -> dict[str, Any]:
    """One sweep; its data time (parent + trials' prepare_seconds) and wall time."""
    uri = f"sqlite:///{work}/mlflow.db"
    args = ["tune", "--name", name, "--epochs", "1", "--tracking-uri", uri, "--set", f"data.root={root}",
            "--set", f"train.storage_path={work}/runs", "--search", f"loss.temperature={TEMPERATURES}",
            "--num-samples", "1", "--scheduler", "none", "--metric", "loss", "--max-concurrent", "1",
            "--num-cpus", str(cores), "--object-store-mb", "400", "--json"]
    for key, value in SETS.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    if per_trial:
        args.append("--prepare-per-trial")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("simclr")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.`simclr.sweep` = '{name}'")
    parent = [r for r in runs if r.data.tags.get("simclr.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("simclr.kind") != "sweep"]
    parent_s = sum(r.data.metrics.get("prepare_seconds", 0.0) for r in parent)
    trial_s = [r.data.metrics.get("prepare_seconds", 0.0) for r in trials]
    return {"data_seconds": parent_s + sum(trial_s), "parent_prepare_seconds": parent_s,
            "trial_prepare_seconds": trial_s, "sweep_seconds": wall, "trials": len(trials)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--images", type=int, default=800, help="photos in the folder (10 classes)")
    p.add_argument("--shorter", type=int, default=375, help="the photos' shorter side in px")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the two sweeps (median reported)")
    p.add_argument("--cores", type=int, default=2, help="the local Ray's CPUs")
    args = p.parse_args()
    images, shorter = (160, 64) if args.quick else (args.images, args.shorter)
    load_before = load_now()
    sides = {"prepared once for the sweep": False, "each trial prepares (--prepare-per-trial)": True}
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = image_folder(Path(tmp) / "photos", 10, images // 10, shorter=shorter)
        for rep in range(args.repeats):
            order = list(sides.items()) if rep % 2 == 0 else list(reversed(sides.items()))
            for side, per_trial in order:
                work = Path(tmp) / f"w{rep}-{int(per_trial)}"
                work.mkdir()
                results[side].append(run_sweep(root, work, f"s{rep}{int(per_trial)}", per_trial, args.cores))
    load_after = load_now()
    rows = [[side, median([r["data_seconds"] for r in rs]), median([r["sweep_seconds"] for r in rs]),
             rs[0]["trials"]] for side, rs in results.items()]
    say(args.json, f"4-trial sweep of 1 epoch on {images} JPEG photos (shorter side {shorter} px), decode at 64; "
        f"load {load_before} -> {load_after}", "",
        table(["data", "data time s (parent + trials)", "sweep wall s", "trials"], rows), "")
    if args.json:
        emit_json({"benchmark": "sweep_data", "settings": {"images": images, "shorter": shorter,
                                                            "repeats": args.repeats, "cores": args.cores},
                   "machine": {**machine(), "load_before": load_before, "load_after": load_after},
                   "results": results})


if __name__ == "__main__":
    main()
