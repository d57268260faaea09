"""Every bench script runs with --quick and prints one JSON object with its figures and ratios.

Plumbing only: no figure is compared with a threshold (a benchmark is a script with a
command in docs/BENCHMARKS.md, never a timed assertion in a test). The Ray-free scripts run in two lanes
of one torch thread each, a lane's scripts one after another: one busy core per lane (all at once, six
processes of two threads each overran the two cores).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
# two lanes of about the same length on 2 cores (gpu.py alone is the longest script)
LANES = (("gpu", "loss"), ("gpu_train", "jpeg_views", "augment", "scaling"))
FAST = tuple(name for lane in LANES for name in lane)
TIMEOUT_S = 600


def _start(name: str, cwd: Path, **extra_env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), **extra_env}
    return subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def _result(name: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"bench/{name}.py --quick failed:\n{stderr[-3000:]}"
    out: dict[str, Any] = json.loads(stdout)  # the whole of stdout is one JSON object
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run the Ray-free scripts with --quick --json, two lanes at once; name -> parsed stdout."""
    cwd = tmp_path_factory.mktemp("bench")

    def lane(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        return {name: _result(name, _start(name, cwd, OMP_NUM_THREADS="1")) for name in names}

    with ThreadPoolExecutor(len(LANES)) as pool:
        return {name: out for done in pool.map(lane, LANES) for name, out in done.items()}


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bench/end_to_end.py --quick --json: the plain PyTorch loop, one epoch of a tiny model."""
    return _result("end_to_end", _start("end_to_end", tmp_path_factory.mktemp("bench_e2e")))


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _check_header(out: dict[str, Any], name: str) -> None:
    assert out["benchmark"] == name
    assert out["settings"]["quick"] is True
    assert out["machine"]["cores"] >= 1 and out["machine"]["torch"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_bench_prints_its_settings_and_the_machine(outputs: dict[str, dict[str, Any]], name: str) -> None:
    _check_header(outputs[name], name)


@pytest.mark.slow
def test_augment_reports_both_sides_and_their_ratio(outputs: dict[str, dict[str, Any]]) -> None:
    results = outputs["augment"]["results"]
    assert {r["case"]["output_size"] for r in results} == {32, 224}
    for r in results:
        for side in ("ours", "torchvision"):
            assert _positive(r[side]["images_per_s"]) and _positive(r[side]["images_per_s_per_core"])
        assert r["ratio_ours_over_torchvision"] == pytest.approx(
            r["ours"]["images_per_s"] / r["torchvision"]["images_per_s"])


@pytest.mark.slow
def test_jpeg_views_reports_decoders_and_both_sides_on_photos(outputs: dict[str, dict[str, Any]]) -> None:
    out = outputs["jpeg_views"]
    assert out["settings"]["photos_shorter_side"] == [375, 768] and out["settings"]["output_size"] == 224
    for d in out["decode"]:
        assert len(d["images_per_s"]) == 4 and all(_positive(v) for v in d["images_per_s"].values())
    assert {r["blur"] for r in out["results"]} == {True, False}
    for r in out["results"]:
        for side in ("ours", "ours_crop_stage_only", "ours_resized_at_decode", "torchvision", "pil"):
            assert _positive(r[side]["images_per_s"]) and _positive(r[side]["images_per_s_per_core"])
        assert r["ratio_ours_over_torchvision"] == pytest.approx(
            r["ours"]["images_per_s"] / r["torchvision"]["images_per_s"])
        assert r["ratio_ours_over_pil"] == pytest.approx(r["ours"]["images_per_s"] / r["pil"]["images_per_s"])


@pytest.mark.slow
def test_gpu_runs_every_part_on_the_cpu_and_marks_gpu_only_parts_skipped(
        outputs: dict[str, dict[str, Any]]) -> None:
    """bench/gpu.py without CUDA: the same functions at tiny sizes; compile rows skipped with a reason."""
    out = outputs["gpu"]
    if out["settings"]["device"] != "cpu":
        pytest.skip("a GPU is present: the smoke test checks the CPU path")
    names = {r["case"]["name"] for r in out["model_only"]}
    assert {"resnet18 32px bf16", "resnet18 32px fp32", "resnet50 32px bf16", "resnet50 32px fp32"} <= names
    assert all(_positive(r["images_per_s"]) and math.isfinite(r["loss"]) for r in out["model_only"])
    assert {s["what"] for s in out["skipped"]} == {"resnet18 32px bf16 compile", "resnet50 32px bf16 compile"}
    assert _positive(out["model_only_limit_images_per_s"]) and out["notes"]
    assert [a["blur"] for a in out["device_augment"]] == [True, False]
    assert all(_positive(a["images_per_s_two_views"]) for a in out["device_augment"])
    assert math.isfinite(out["ntxent_bf16_vs_fp32"]["abs_diff"])
    assert {r["augment"] for r in out["end_to_end"]} == {"cpu", "device", "pil", "nvjpeg", "nvjpeg_roi"}
    for r in out["end_to_end"]:
        assert _positive(r["images_per_s"]) and 0.0 <= r["data_wait_frac"] <= 1.0
        assert r["ratio_to_model_only"] == pytest.approx(r["images_per_s"] / out["model_only_limit_images_per_s"])
    assert set(out["cores_per_gpu"]) == {"cpu", "device", "pil"} and all(map(_positive, out["cores_per_gpu"].values()))
    decode = out["device_decode"]
    assert _positive(decode["cpu_decode_images_per_s_per_core"]) and decode["device"] == "skipped: no CUDA"
    assert decode["cpu_decode_and_crops_images_per_s_per_core"] < decode["cpu_decode_images_per_s_per_core"]
    assert out["settings"]["photos"] in ("scikit-learn sample photos", "synthetic textures (no scikit-learn)")


def test_roi_align_crops_are_close_to_torchvision_resized_crops() -> None:
    """bench/gpu.py's batched crop stage (one roi_align over padded photos) against our per-image crops,
    which equal torchvision's ``resized_crop``: the same boxes give nearly the same pixels."""
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    photos, _ = gpu.make_photos(6, shorter=120)
    images = [gpu.decode(b) for b in photos]
    aug = gpu.SimCLRAugment(48, strength=1.0)
    sizes = torch.tensor([img.shape[1:] for img in images])
    params = aug.sample_params(len(images), sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(0))
    diff = (gpu.roi_crops(images, params.boxes, 48).int() - aug.crop(images, params).int()).abs().float()
    assert diff.mean() < 1.0 and diff.max() < 32  # an area filter against antialiased bilinear: close, not equal


@pytest.mark.slow
def test_gpu_train_learns_on_the_cpu_path(outputs: dict[str, dict[str, Any]]) -> None:
    """bench/gpu_train.py without CUDA: 2 epochs of the digits recipe; the loss falls, kNN is measured."""
    out = outputs["gpu_train"]
    if out["settings"]["device"] != "cpu":
        pytest.skip("a GPU is present: the smoke test checks the CPU path")
    first, last = out["loss_first_last"]
    assert math.isfinite(first) and last < first
    assert [k["epoch"] for k in out["knn"]] == [0, 2] and all(0 < k["knn_top1"] <= 1 for k in out["knn"])
    assert out["settings"]["aug_device"] == "train" and out["settings"]["steps"] == 2 * (1437 // 128)
    assert _positive(out["steps_per_s"])


@pytest.mark.slow
def test_loss_reports_time_and_memory_per_side(outputs: dict[str, dict[str, Any]]) -> None:
    out = outputs["loss"]
    assert out["memory_calibration"] == pytest.approx(1.0, abs=0.1)  # the RSS method sees a known tensor
    results = out["results"]
    assert {(r["batch"], r["workers"]) for r in results} == {(64, 1), (64, 2), (128, 1), (128, 2)}
    for r in results:
        for side in ("ours", "naive", "ours_chunked"):
            assert _positive(r[side]["ms"]) and r[side]["peak_bytes"] >= 0
        assert _positive(r["time_ratio_naive_over_ours"])
        # An RSS delta at --quick sizes may be 0 (the pages were already resident): a figure, not a threshold.
        assert math.isfinite(r["memory_ratio_naive_over_ours"]) and r["memory_ratio_naive_over_ours"] >= 0
        assert r["logits_bytes_ours"] * r["workers"] == r["logits_bytes_naive"]


@pytest.mark.slow
def test_end_to_end_reports_images_per_second_and_data_wait(end_to_end: dict[str, Any]) -> None:
    """--quick runs the plain loop only; our side is `simclr train`, run end to end in tests/orchestrator."""
    _check_header(end_to_end, "end_to_end")
    side = end_to_end["baseline"]
    assert _positive(side["images_per_s"])
    assert 0.0 <= side["data_wait_frac"] <= 1.0
    assert end_to_end["ours"] == {} and end_to_end["ratio_ours_over_baseline"] == {}


@pytest.mark.slow
def test_scaling_counts_bytes_from_the_models_parameters(outputs: dict[str, dict[str, Any]]) -> None:
    results = outputs["scaling"]["results"]
    assert {r["gpus"] for r in results} == {8, 32}
    for r in results:
        b = r["bytes"]
        assert r["model"]["params"] > 10_000_000  # ResNet-18 and its head, counted from the model
        assert b["ddp_grad_allreduce"] == pytest.approx(2 * (r["gpus"] - 1) / r["gpus"] * 4 * r["model"]["params"])
        assert b["ntxent_total"] == pytest.approx(b["ntxent_forward"] + b["ntxent_backward"])
        assert r["ratio_ntxent_over_ddp_grads"] == pytest.approx(b["ntxent_total"] / b["ddp_grad_allreduce"])


@pytest.mark.slow
def test_scale_reports_the_fixed_costs_at_each_size(tmp_path: Path) -> None:
    """bench/scale.py --quick: one small N, in its own process with a local Ray (so not with the
    Ray-free scripts above)."""
    out = _result("scale", _start("scale", tmp_path))
    _check_header(out, "scale")
    assert [r["n"] for r in out["rows"]] == out["settings"]["sizes"]
    for row in out["rows"]:
        for key in ("read_manifest_s", "build_store_s", "prepare_udf_bytes", "task_fn_bytes", "task_fetch_bytes",
                    "index_store_bytes", "first_task_ms", "next_task_ms", "epoch_order_ms", "eval_samples_ms"):
            assert _positive(row[key]), (key, row)


@pytest.mark.slow
def test_listing_reports_listing_and_manifest_times_locally_and_on_the_s3_endpoint(tmp_path: Path) -> None:
    """bench/listing.py --quick: starts its own moto server (so not with the Ray-free scripts above)."""
    out = _result("listing", _start("listing", tmp_path))
    _check_header(out, "listing")
    local, s3 = out["results"]["local"], out["results"]["s3"]
    assert local["files"] == out["settings"]["files"] and s3["files"] == out["settings"]["keys"]
    assert s3["requests"] == math.ceil(s3["files"] / 1000)
    for side in (local, s3):
        assert _positive(side["list_s"]) and _positive(side["manifest_read_s"])
