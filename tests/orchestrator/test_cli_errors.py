"""Every user error of `simclr train` is one line on stderr and exit code 2, before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

BASE = ["train", "--num-cpus", "2", "--object-store-mb", "300"]


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("simclr: error: "), err[-2000:]
    return code, last


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "data.source=imagenet21k"], "data.source must be one of"),
        (["--set", "loss.temperature=0"], "loss.temperature must be > 0"),
        (["--set", "loss.temperature=-0.1"], "loss.temperature must be > 0"),
        (["--workers", "2", "--set", "train.batch_size=2"], "train.batch_size / train.workers must be >= 2"),
        (["--set", "data.source=cifar10", "--set", "data.root=/nonexistent/cifar"], "data.root: no such folder"),
        (["--set", "data.source=imagefolder", "--set", "data.root=/nonexistent/tree"], "data.root: no such folder"),
        (["--set", "data.source=parquet", "--set", "data.uri=/nonexistent/x.parquet"], "data.uri"),
        (["--set", "loss.temprature=0.1"], "unknown key 'loss.temprature'"),
        (["--set", "loss.temperature"], "expected section.field=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], expected: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, line = run_main(BASE + args, capsys)
    assert code == 2
    assert expected in line
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow store was even opened


@pytest.mark.slow
def test_argparse_errors_also_exit_2_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--recipe", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "invalid choice" in proc.stderr


@pytest.mark.slow
def test_cli_subprocess_bad_temperature_exit_2_single_line_no_ray(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--set", "loss.temperature=0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "simclr: error: loss.temperature must be > 0; got 0.0"
    assert proc.stdout == ""


def test_more_workers_than_cpus_is_refused_before_any_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, line = run_main([*BASE, "--workers", "3", "--set", "train.batch_size=6"], capsys)
    assert code == 2
    assert "train.workers=3 is more than the cluster's 2 CPUs" in line
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0"]) == []


def test_gpu_workers_without_gpus_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, line = run_main([*BASE, "--workers", "1", "--use-gpu"], capsys)
    assert code == 2 and "needs 1 GPUs; the cluster has 0" in line


@pytest.mark.slow
def test_unreadable_image_under_fail_policy_names_the_file_before_training(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for cls in ("a", "b"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 10), (40 * i, 100, 200)).save(tmp_path / "tree" / cls / f"{i}.png")
    (tmp_path / "tree" / "b" / "broken.png").write_bytes(b"not a png at all")
    code, line = run_main([*BASE, "--set", "data.source=imagefolder", "--set", f"data.root={tmp_path / 'tree'}",
                           "--set", "data.bad_images=fail", "--set", "train.batch_size=4"], capsys)
    assert code == 2
    assert "unreadable image" in line and "broken.png" in line and "data.bad_images=skip" in line
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0"]) == []


def test_unwritable_storage_path_is_one_line_and_exit_2_before_ray_starts(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    code, line = run_main([*BASE, "--set", f"train.storage_path={tmp_path}/a_file/runs"], capsys)
    assert code == 2
    assert line.startswith(f"simclr: error: train.storage_path: cannot write to {tmp_path}/a_file/runs")
    assert not ray.is_initialized()  # refused before Ray started
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("before", "after"), [(None, "true"), ("false", "false")])
def test_mlflow_telemetry_is_off_unless_the_user_set_it(before: str | None, after: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import os

    if before is None:
        monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", before)
    assert main(["export", str(tmp_path / "none"), "-o", str(tmp_path / "x.pt")]) == 2
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == after
