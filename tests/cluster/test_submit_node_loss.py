"""Losing the node that holds a train worker: the job resumes from the last checkpoint and finishes.

The ray 46814 complaint (a node loss restarting training from epoch 1) checked end to end: a 2-worker
run with one worker on each node; once epoch 1 is checkpointed the worker node is SIGKILLed (raylet,
object store, workers: what a spot reclaim does) and a replacement node joins (what the autoscaler
does). Under the default settings (train.max_failures is not set), Ray Train restarts the workers
from the last checkpoint; MLflow must show every epoch exactly once and the restart on the run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from local_ray import TINY, LocalCluster, find_run, simclr
from mlflow.tracking import MlflowClient

EPOCHS = 5


def wait_until(predicate: object, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def registered_epoch(run_dir: Path) -> int:
    """The epoch of the newest checkpoint Ray Train has registered (its snapshot file), 0 if none."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(name.rsplit("_", 1)[1])


def test_killing_a_train_workers_node_resumes_from_checkpoint_and_logs_each_epoch_once(
        ray_cluster: LocalCluster, client_env: dict[str, str], tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "runs"
    auth = ["--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)]
    # 2-CPU workers on 3-CPU nodes: exactly one worker per node, a CPU per node left for Ray Data.
    submitted = simclr(["submit", "--no-wait", "train", *TINY, "--set", "data.num_samples=256",
                        "--epochs", str(EPOCHS), "--workers", "2", "--name", "node-loss",
                        "--set", "train.cpus_per_worker=2",
                        "--set", f"train.storage_path={storage}", "--tracking-uri", uri, *auth],
                       client_env, tmp_path, timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.strip().splitlines()[0]

    victim = ray_cluster.nodes[-1]  # the newest worker node (the head is nodes[0])
    wait_until(lambda: len(ray_cluster.actors_on(victim, "RayTrainWorker")) == 1, 420,
               f"a train worker on {victim.tag}", poll=1.0)
    wait_until(lambda: registered_epoch(storage / "node-loss") >= 1, 420, "a registered checkpoint")
    victim.kill()
    assert registered_epoch(storage / "node-loss") < EPOCHS, "the run ended before the kill"
    ray_cluster.add_node(num_cpus=3)  # the replacement, as an autoscaler would launch

    followed = simclr(["jobs", "logs", "--follow", job_id, *auth], client_env, tmp_path, timeout=600)
    assert followed.returncode == 0, (followed.stdout + followed.stderr)[-4000:]
    logs = simclr(["jobs", "logs", job_id, *auth], client_env, tmp_path, timeout=120).stdout
    (tmp_path / "job.log").write_text(logs)  # kept by pytest for a post-mortem

    resumed = [int(n) for n in re.findall(r"resumed from \S+ after epoch (\d+)", logs)]
    assert resumed, "the workers never restarted from a checkpoint:\n" + logs[-3000:]
    assert all(1 <= n < EPOCHS for n in resumed), resumed  # from a checkpoint, not from scratch
    assert logs.count(f"epoch 1/{EPOCHS} done") == 1  # epoch 1 was not trained again

    run = find_run(uri, "node-loss")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # each epoch once, none lost
    assert run.data.params["train.max_failures"] == "3"  # the default
    restart = json.loads(run.data.tags["simclr.restart.1"])  # the restart is on the run
    assert 1 <= restart["resumed_after_epoch"] < EPOCHS
    # system metrics from each node that trained: the head, the lost node, its replacement
    nodes = {k.split("/")[1] for k in run.data.metrics if k.startswith("system/")}
    assert len(nodes) == 3, sorted(nodes)
