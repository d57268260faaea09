"""`python -m cluster.resources`, run as a job's first step, against the real token-protected cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from local_ray import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


def wait_for(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env(), "RAY_ADDRESS": cluster.gcs_address}  # as the job supervisor sets it
    return subprocess.run([sys.executable, "-m", "cluster.resources", *args], env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=ROOT)


@pytest.mark.slow
def test_resources_present_return_at_once_and_missing_gpus_time_out_with_one_line(ray_cluster: LocalCluster) -> None:
    ok = wait_for(ray_cluster, "--cpus", "2", "--timeout-s", "5")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "the cluster has" in ok.stderr

    short = wait_for(ray_cluster, "--gpus", "2", "--timeout-s", "2", "--poll-s", "0.5")
    assert short.returncode == 2, short.stderr[-2000:]
    errors = [ln for ln in short.stderr.splitlines() if ln.startswith("simclr: error:")]
    assert len(errors) == 1 and "0 GPU after 2 s; the run needs 2 GPU" in errors[0], short.stderr[-2000:]
