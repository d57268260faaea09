"""`simclr submit train` on a real two-node Ray cluster with token auth, through what a spot cluster does to
a job: a node lost on the way, then a stop (`simclr jobs stop`), then the same submit resumed to the end.

A node loss restarting training from epoch 1 (a complaint Ray's tracker has seen) checked end to end, on
the parts a cluster has: the photos, their manifest (data.source=manifest) and the checkpoints in a
bucket, the run on the team's MLflow server (PostgreSQL). A 2-worker run with one worker on each node;
once epoch 1 is checkpointed in the bucket the worker node is SIGKILLed (raylet, object store, workers:
what a spot reclaim does) and a replacement node joins (what the autoscaler does). Under the default
settings (train.max_failures is not set), Ray Train restarts the workers from the bucket's last
checkpoint. Once the restarted workers have checkpointed an epoch, the job is stopped: a stopped job is a
run to resume, not a run lost. The stop's SIGTERM takes the Ctrl-C path (a checkpoint at the current step,
the run KILLED), and the same submit with the same --name goes on from there. MLflow must show one run,
every epoch exactly once, and the restart on it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from local_ray import SIMCLR, TINY, LocalCluster, find_run, registered_epoch, simclr, wait_until
from mlflow.tracking import MlflowClient
from photos import image_folder
from services import S3, TrackingServer

from orchestrator import cli
from orchestrator.tracking.tags import CHECKPOINT_TAG
from orchestrator.train.checkpoint import read_checkpoint

# The stop lands an epoch or two after the restarted workers' first checkpoint (epoch 2 or 3): enough
# epochs after it that the job is still training when the stop arrives on a loaded machine.
EPOCHS = 8


@pytest.mark.slow
def test_submit_follows_a_job_through_a_node_loss_and_a_stop_and_the_same_submit_resumes_it_to_the_end(
        ray_cluster: LocalCluster, client_env: dict[str, str], tmp_path: Path, s3: S3,
        tracking_server: TrackingServer, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3.env().items():  # this process reads the checkpoints in the bucket
        monkeypatch.setenv(key, value)
    uri = tracking_server.uri
    bucket = s3.bucket()
    photos = s3.upload(image_folder(tmp_path / "photos", 4, 64), f"{bucket}/photos")  # 256 JPEGs under a prefix
    # ... named by a manifest in the bucket (data.source=manifest): paths relative to data.root, no labels
    names = sorted(str(p.relative_to(tmp_path / "photos")) for p in (tmp_path / "photos").rglob("*.jpg"))
    (tmp_path / "photos.csv").write_text("path\n" + "".join(f"{n}\n" for n in names))
    manifest_uri = s3.upload(tmp_path / "photos.csv", f"{bucket}/photos.csv")
    storage = f"{bucket}/runs"
    run_uri = f"{storage}/node-loss"
    auth = ["--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)]
    # 2-CPU workers on 3-CPU nodes: exactly one worker per node, a CPU per node left for Ray Data. The
    # client has no storage credentials: the nodes have theirs.
    train = ["train", *TINY, "--set", "data.source=manifest", "--set", f"data.manifest={manifest_uri}",
             "--set", f"data.root={photos}", "--set", "data.decode_size=20", "--epochs", str(EPOCHS),
             "--workers", "2", "--name", "node-loss", "--set", "train.cpus_per_worker=2",
             "--set", f"train.storage_path={storage}", "--tracking-uri", uri, *auth]
    # The client follows the job as a user's terminal would (no --no-wait); its output goes to files.
    with open(tmp_path / "submit.stdout", "w") as out, open(tmp_path / "submit.stderr", "w") as err:
        submit = subprocess.Popen([SIMCLR, "submit", *train], env=client_env, cwd=tmp_path, stdout=out, stderr=err,
                                  text=True, stdin=subprocess.DEVNULL)
    job_id = ""
    try:
        victim = ray_cluster.nodes[-1]  # the newest worker node (the head is nodes[0])
        wait_until(lambda: len(ray_cluster.actors_on(victim, "RayTrainWorker")) == 1, 420,
                   f"a train worker on {victim.tag}", poll=1.0)
        job_id = (tmp_path / "submit.stdout").read_text().strip().splitlines()[0]
        wait_until(lambda: registered_epoch(s3, run_uri) >= 1, 420, "a registered checkpoint")
        victim.kill()
        lost_at = registered_epoch(s3, run_uri)
        assert lost_at < EPOCHS, "the run ended before the kill"
        ray_cluster.add_node(num_cpus=3)  # the replacement, as an autoscaler would launch
        wait_until(lambda: registered_epoch(s3, run_uri) > lost_at, 420, "a checkpoint of the restarted workers")
        # `simclr jobs stop`, here in this process so that the stop lands in the next epoch
        capfd.readouterr()
        assert cli.main(["jobs", "stop", job_id, *auth]) == 0
        assert "stop requested" in capfd.readouterr().out
        code = submit.wait(timeout=300)
    finally:
        submit.kill()
        if job_id:
            cli.main(["jobs", "stop", job_id, *auth])  # a failed test leaves no job on the session's cluster
    stdout, stderr = (tmp_path / "submit.stdout").read_text(), (tmp_path / "submit.stderr").read_text()
    assert job_id.startswith("raysubmit_"), stdout
    assert code == 1, stderr[-4000:]  # the job was stopped
    assert f"job {job_id} STOPPED" in stderr
    # The job's driver has no terminal: what it prints (and the client streams) is our header, epoch
    # lines, the restart and the stop; Ray's own output (the connection, Ray Data, the workers' logs, the
    # lost node) went to the run's log file. The lines Ray's job manager and supervisor write into the
    # job's log, and the Jobs SDK's end-of-stream line, are not shown either.
    assert f"epoch 1/{EPOCHS} done" in stderr and "  Ray's output: " in stderr and "restart 1: " in stderr
    assert "simclr: interrupted: stopped with a checkpoint" in stderr
    for noise in ("Connecting to existing Ray cluster", "RayTrainWorker", "(pid=", "Running Dataset",
                  "Runtime env is setting up", "job_manager.py", "Running entrypoint for job", "WebSocket closed"):
        assert noise not in stderr, stderr
    assert len(stderr.splitlines()) < 40, stderr
    assert ray_cluster.token not in stdout + stderr

    logs = simclr(["jobs", "logs", job_id, *auth], client_env, tmp_path, timeout=120)
    assert logs.returncode == 0, logs.stderr
    (tmp_path / "job.log").write_text(logs.stdout)  # kept by pytest for a post-mortem
    # Ray's lines are still in the job's log
    assert "Runtime env is setting up" in logs.stdout and f"Running entrypoint for job {job_id}: " in logs.stdout
    resumed = [int(n) for n in re.findall(r"resumed from \S+ after epoch (\d+)", logs.stdout)]
    assert resumed, "the workers never restarted from a checkpoint:\n" + logs.stdout[-3000:]
    assert all(1 <= n < EPOCHS for n in resumed), resumed  # from a checkpoint, not from scratch
    bucket_path = storage.removeprefix("s3://")
    assert all(p.startswith(f"{bucket_path}/node-loss/checkpoint_epoch_")  # ... in the bucket
               for p in re.findall(r"resumed from (\S+) after epoch", logs.stdout))
    assert logs.stdout.count(f"epoch 1/{EPOCHS} done") == 1  # epoch 1 was not trained again

    killed = find_run(uri, "node-loss")
    assert killed.info.status == "KILLED"
    where = killed.data.tags[CHECKPOINT_TAG]  # the checkpoint the stop saved, in the bucket
    assert where.startswith(f"{run_uri}/checkpoint_epoch_") and "_stopped_" in where, where
    stopped_at = read_checkpoint(where)["epoch"]
    assert lost_at < stopped_at < EPOCHS

    again = simclr(["submit", *train], client_env, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SUCCEEDED" in again.stderr and f"after epoch {stopped_at}" in again.stderr
    listed = simclr(["jobs", "list", *auth], client_env, tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "STOPPED" in listed.stdout and "SUCCEEDED" in listed.stdout

    run = find_run(uri, "node-loss")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert "error" not in run.data.tags  # the stop's message went with the stop
    assert run.data.params["train.workers"] == "2"
    steps = [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # each epoch once, none lost
    assert run.data.params["train.max_failures"] == "3"  # the default
    restart = json.loads(run.data.tags["simclr.restart.1"])  # the restart is on the run
    assert 1 <= restart["resumed_after_epoch"] < EPOCHS
    # system metrics from each node that trained, each series named by its node: one address here, three
    # Ray node ids (the head, the lost node, its replacement)
    nodes = {k.split("/")[1] for k in run.data.metrics if k.startswith("system/")}
    assert len(nodes) == 3, sorted(nodes)
    assert all(re.fullmatch(r"[0-9.]+-[0-9a-f]{8}", n) for n in nodes), nodes
    for node in nodes:
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics
    # where things are: the data's manifest as the dataset's source, the last checkpoint's URI as a tag
    (used,) = run.inputs.dataset_inputs
    assert json.loads(used.dataset.source) == {"uri": manifest_uri}
    assert run.data.params["dataset.num_train"] == str(len(names))  # every photo the manifest names
    last = f"{run_uri}/checkpoint_epoch_{EPOCHS:05d}"
    assert run.data.tags[CHECKPOINT_TAG] == last
    assert f"checkpoint_epoch_{EPOCHS:05d}/state.pt" in s3.files(run_uri)
