"""Faults and bad input, with nothing lost: each test drives the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from photos import class_ordered_parquet
from PIL import Image
from services import S3, Outage
from simclr_testing import tiny_sets

from orchestrator.train.checkpoint import STATE_FILE, CheckpointError, load_state_file, read_checkpoint

SECRET = "s3cr3t-Do-Not-Log-9f2"


def cli(tmp: Path, *args: str, uri: str = "", storage: str = "") -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "train", *tiny_sets(), *args,
            "--tracking-uri", uri or f"sqlite:///{tmp}/mlflow.db", "--set", f"train.storage_path={storage or tmp}/runs",
            "--num-cpus", "2", "--object-store-mb", "300"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SIMCLR_FAULTS")}
    env.update(extra)
    return env


class Watched:
    """A subprocess whose stderr is collected by a thread; wait for lines, then for the exit."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.out: list[str] = []
        # one reader per pipe: nothing else may read them (communicate() would steal lines)
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, sink: list[str]) -> None:
        for line in pipe:
            sink.append(line)

    def wait_for(self, text: str, timeout: float = 600, after: str = "") -> None:
        """Until a line holds ``text`` (one after the first line that holds ``after``, if given)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            lines = list(self.lines)
            start = next((i for i, ln in enumerate(lines) if after in ln), len(lines)) if after else -1
            if any(text in ln for ln in lines[start + 1:]):
                return
            if self.proc.poll() is not None:
                time.sleep(0.5)
                break
            time.sleep(0.2)
        raise AssertionError(f"never saw {text!r}; stderr tail:\n{''.join(self.lines[-40:])}")

    def finish(self, timeout: float = 900) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        return self.proc.returncode, "".join(self.out), "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


def simclr_lines(stderr: str) -> list[str]:
    """The CLI's own message lines; Ray's progress bars may put cursor escapes before them, and its
    forwarded worker logs may come after them."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr)
    return [ln[ln.index("simclr: "):] for ln in plain.splitlines() if "simclr: " in ln]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def loss_steps(uri: str) -> tuple[MlflowClient, object, list[int]]:
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("simclr").experiment_id])
    return client, run, [m.step for m in client.get_metric_history(run.info.run_id, "loss")]


def wait_registered(run_dir: Path, epoch: int, timeout: float = 300) -> None:
    """Until Ray Train has registered the checkpoint of ``epoch`` (its snapshot file names it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
            if int(snapshot["latest_checkpoint_result"]["checkpoint_dir_name"].rsplit("_", 1)[1]) >= epoch:
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no registered checkpoint of epoch {epoch} in {run_dir}")


# --- checkpoints ---------------------------------------------------------------------------------------


def test_partial_or_truncated_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    only_tmp = tmp_path / "a"
    only_tmp.mkdir()
    (only_tmp / (STATE_FILE + ".tmp")).write_bytes(b"half a file")
    with pytest.raises(CheckpointError, match="incomplete or unreadable"):
        load_state_file(str(only_tmp))
    truncated = tmp_path / "b"
    truncated.mkdir()
    import torch

    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 1}, truncated / STATE_FILE)
    data = (truncated / STATE_FILE).read_bytes()
    (truncated / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_state_file(str(truncated))
    partial_keys = tmp_path / "c"
    partial_keys.mkdir()
    torch.save({"model": {}, "epoch": 1}, partial_keys / STATE_FILE)
    with pytest.raises(CheckpointError, match="lacks"):
        load_state_file(str(partial_keys))


# --- non-finite loss, bad images, secrets ----------------------------------------------------------------


def write_tree_with_bad_images(root: Path) -> int:
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (20, 18), (100 * c, 6 * i, 200 - 4 * i)).save(root / cls / f"{i}.png")
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("this is not a jpeg")
    good = root / "a" / "0.png"
    (root / "b" / "truncated.png").write_bytes(good.read_bytes()[:40])
    return 3


@pytest.mark.slow
def test_nan_loss_fails_the_run_keeps_the_last_checkpoint_counts_bad_images_and_logs_no_secret(
        tmp_path: Path) -> None:
    bad = write_tree_with_bad_images(tmp_path / "tree")
    env = clean_env(SIMCLR_FAULTS="nan_loss@2.1", AWS_SECRET_ACCESS_KEY=SECRET)
    args = ["--epochs", "3", "--name", "nan", "--set", "data.source=imagefolder", "--set",
            f"data.root={tmp_path / 'tree'}", "--set", "data.bad_images=skip", "--set",
            f"data.uri=s3://AKIAEXAMPLE:{SECRET}@bucket/unused?X-Amz-Signature={SECRET}"]
    proc = subprocess.run(cli(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-4000:]
    (line,) = simclr_lines(proc.stderr)
    assert line.startswith("simclr: training failed: non-finite loss") and "epoch 2, step 1" in line
    client, run, steps = loss_steps(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FAILED"
    assert "epoch 2, step 1" in run.data.tags["error"]
    assert steps == [1]
    state = load_state_file(str(tmp_path / "runs" / "nan" / "checkpoint_epoch_00001"))
    assert state["epoch"] == 1
    # failed at once: a restart would only repeat the loss, so the worker group was never restarted
    (log,) = (tmp_path / "runs" / "nan" / "logs").iterdir()
    assert log.read_text().count("Attempting to start training worker group") == 1
    # bad images: skipped and counted
    assert run.data.params["dataset.bad_images_skipped"] == str(bad)
    assert run.data.metrics["bad_images_skipped"] == bad
    # secrets: nowhere in params, tags, the config artifact or the logs
    assert SECRET not in proc.stderr + proc.stdout
    assert all(SECRET not in v for v in [*run.data.params.values(), *run.data.tags.values()])
    assert run.data.params["data.uri"].startswith("s3://***@bucket/unused")
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert SECRET not in Path(config).read_text()


@pytest.mark.slow
def test_an_unreadable_file_found_while_training_under_fail_fails_the_run_naming_it(tmp_path: Path) -> None:
    """Files decoded in each epoch's tasks (data.cache_decoded=false): the stream's error reaches the
    driver inside Ray's wrappers and is found there by its class."""
    write_tree_with_bad_images(tmp_path / "tree")
    args = ["--epochs", "1", "--name", "bad", "--set", "data.source=imagefolder", "--set",
            f"data.root={tmp_path / 'tree'}", "--set", "data.bad_images=fail", "--set", "data.cache_decoded=false",
            "--set", "data.holdout_fraction=0", "--set", "train.workers=1", "--set", "train.max_failures=0",
            # a seed whose first 16 rows of epoch 0 (the views picture, drawn in the driver before training)
            # are all readable: the bad file is met by the stream's tasks, in training
            "--set", "train.seed=1"]
    proc = subprocess.run(cli(tmp_path, *args), cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 1, proc.stderr[-4000:]
    (line,) = simclr_lines(proc.stderr)
    assert line.startswith(f"simclr: training failed: unreadable image {tmp_path / 'tree'}/"), line
    assert "data.bad_images=skip" in line
    run = loss_steps(f"sqlite:///{tmp_path}/mlflow.db")[1]
    assert run.info.status == "FAILED"  # type: ignore[attr-defined]
    assert run.data.tags["error"].startswith("unreadable image ")  # type: ignore[attr-defined]


# --- MLflow away -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(port: int, proc: subprocess.Popen[Any], failure: str, timeout: float = 120) -> None:
    """Until the MLflow server on ``port`` answers /health; ``failure`` if ``proc`` ends or time runs out."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(failure) from None
            time.sleep(0.5)


@contextmanager
def mlflow_server(tmp: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:

    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
         "--artifacts-destination", str(tmp / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(port, proc, "mlflow server did not start")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_unreachable_tracking_server_is_a_one_line_error_before_any_work(tmp_path: Path) -> None:
    start = time.time()
    proc = subprocess.run(cli(tmp_path, uri=f"http://127.0.0.1:{free_port()}"), cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    (line,) = simclr_lines(proc.stderr)
    assert line.startswith("simclr: error: tracking.uri: no MLflow server answers")
    assert "Started a local Ray" not in proc.stderr  # refused before Ray started
    assert time.time() - start < 60


FAULT_EPOCHS = 6  # two worker deaths (epochs 2 and 3), then the tracking server away for an epoch or more


@pytest.mark.slow
def test_worker_deaths_and_the_tracking_server_away_lose_no_epoch_and_the_restarts_are_recorded(
        tmp_path: Path) -> None:
    """Three faults in one run under the default train.max_failures, tracked on an MLflow server: the worker
    dies while writing the epoch-2 checkpoint, then a train worker is SIGKILLed during epoch 3, then the
    tracking server goes away and comes back. Each restart resumes from the newest complete checkpoint;
    training goes on while the server is away and what could not be sent is sent later. MLflow holds one
    FINISHED run with each epoch once, and both restarts recorded on it (the ``restarts`` metric, a tag and
    a JSON artifact each)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = clean_env(SIMCLR_FAULTS="die_in_checkpoint@2", SIMCLR_FAULTS_DIR=str(tmp_path / "faults"))
    server = ExitStack()
    server.enter_context(mlflow_server(tmp_path, port))
    run = Watched(cli(tmp_path, "--epochs", str(FAULT_EPOCHS), "--name", "faults", uri=uri), tmp_path, env)
    try:
        run.wait_for("after epoch 1")  # restarted after the death in checkpointing, from epoch 1
        run.wait_for(f"epoch 2/{FAULT_EPOCHS} done")
        wait_registered(tmp_path / "runs" / "faults", 2)  # the kill lands in epoch 3, after its checkpoint
        workers = [p for p in descendants(run.proc.pid) if "RayTrainWorker" in cmdline(p)]
        assert workers, "no train worker process found"
        os.kill(workers[-1], signal.SIGKILL)
        run.wait_for("restart 2: ")
        # an epoch of the restarted workers, whose restart record went to MLflow before they trained
        run.wait_for(f"/{FAULT_EPOCHS} done", after="restart 2: ")
        server.close()  # the tracking server goes away: the next epochs cannot be logged
        run.wait_for("MLflow unreachable")
        with mlflow_server(tmp_path, port):
            code, _, err = run.finish()
            assert code == 0, err[-4000:]
            client, mlflow_run, steps = loss_steps(uri)
            knn = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "knn_top1")]
            restarts = client.get_metric_history(mlflow_run.info.run_id, "restarts")
            recorded = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "restarts")}
    finally:
        run.kill()
        server.close()
    resumes = re.findall(r"resumed from \S+ after epoch (\d+)", err)
    assert resumes[0] == "1"  # the half-written epoch-2 checkpoint was not used
    assert len(resumes) == 2 and int(resumes[1]) >= 2  # the kill in epoch 3 (or just after it) resumed later
    assert mlflow_run.info.status == "FINISHED"
    assert steps == list(range(1, FAULT_EPOCHS + 1))
    assert knn == list(range(FAULT_EPOCHS + 1))
    assert mlflow_run.data.params["train.max_failures"] == "3"  # the default, not set by the test
    assert [m.value for m in restarts] == [1, 2]
    first = json.loads(mlflow_run.data.tags["simclr.restart.1"])
    assert first["resumed_after_epoch"] == 1 and "worker process was lost" in first["cause"]
    assert json.loads(mlflow_run.data.tags["simclr.restart.2"])["resumed_after_epoch"] >= 2
    assert recorded == {"restarts/restart_1.json", "restarts/restart_2.json"}
    assert err.count("restart 1: ") == 1 and err.count("restart 2: ") == 1  # on the console too


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------------

# The endpoint goes away once epoch 1's line is out and the SIGTERM lands an epoch after it is back: enough
# epochs that the run is still training when the stop arrives on a loaded machine.
EPOCHS = 6
OUTAGE_S = 12  # the storage endpoint away: longer than an epoch and its checkpoint


@pytest.mark.slow
def test_an_s3_outage_stalls_checkpoints_without_loss_and_sigterm_checkpoints_marks_the_run_killed_and_stops_ray(
        tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a cluster's storage: the photos (Parquet) and the checkpoints are in a bucket, reached through an
    endpoint that goes away for a while and comes back. The checkpoints of those epochs are retried until
    it is back (or the workers restart from the newest complete checkpoint in the bucket); the run goes on.

    Then SIGTERM (ray job stop, Kubernetes, Slurm, docker stop) takes the Ctrl-C path: a checkpoint at the
    current step, the run KILLED, Ray stopped, exit 143 without a traceback. (Resuming a stopped run by its
    name: tests/cluster/test_submit_node_loss.py, where `simclr jobs stop` sends the SIGTERM.)"""
    for key, value in s3.env().items():  # this process reads the checkpoints in the bucket
        monkeypatch.setenv(key, value)
    bucket = s3.bucket()
    data = s3.upload(class_ordered_parquet(tmp_path / "photos.parquet", 8, 32), f"{bucket}/photos.parquet")
    photos = ["--set", "data.source=parquet", "--set", f"data.uri={data}", "--set", "data.decode_size=20"]
    endpoint = Outage(s3.server.port)  # the training's way to the bucket, which the test can cut
    env = clean_env(**{**s3.env(), "AWS_ENDPOINT_URL": endpoint.endpoint})
    storage = f"{bucket}/runs"
    run = Watched(cli(tmp_path, "--epochs", str(EPOCHS), "--name", "cc", *photos, storage=bucket), tmp_path, env)
    try:
        run.wait_for(f"epoch 1/{EPOCHS} done")  # its checkpoint is on the way to the bucket
        endpoint.cut()
        time.sleep(OUTAGE_S)
        # still running: the outage met its checkpoints (and did not fail it)
        assert run.proc.poll() is None, "the run ended while the endpoint was away:\n" + "".join(run.lines[-30:])
        endpoint.restore()
        met = max(int(e) for e in re.findall(rf"epoch (\d+)/{EPOCHS} done", "".join(run.lines)))
        run.wait_for(f"epoch {met + 1}/{EPOCHS} done")  # training goes on once the endpoint is back
        ray_procs = [p for p in descendants(run.proc.pid) if "raylet" in cmdline(p) or "gcs_server" in cmdline(p)]
        assert ray_procs
        os.kill(run.proc.pid, signal.SIGTERM)
        code, _out, err = run.finish(timeout=300)
    finally:
        run.kill()
        endpoint.close()
    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    (line,) = simclr_lines(err)
    assert line.startswith("simclr: interrupted: stopped with a checkpoint")
    _, mlflow_run, logged = loss_steps(f"sqlite:///{tmp_path}/mlflow.db")
    assert mlflow_run.info.status == "KILLED"
    stopped = {f.split("/")[0] for f in s3.files(f"{storage}/cc") if "_stopped_" in f.split("/")[0]}
    assert len(stopped) == 1
    epoch = read_checkpoint(f"{storage}/cc/{stopped.pop()}")["epoch"]
    assert met < epoch < EPOCHS
    # every epoch before the stop logged once; the last epoch's checkpoint, written once the endpoint was
    # back, complete in the bucket
    assert logged == list(range(1, epoch + 1))
    assert read_checkpoint(f"{storage}/cc/checkpoint_epoch_{epoch:05d}")["epoch"] == epoch
    deadline = time.time() + 30
    while any(alive(p) for p in ray_procs) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(alive(p) for p in ray_procs), "Ray processes left running"


@pytest.mark.slow
def test_sigterm_to_a_sweep_exits_143_ends_every_run_and_stops_ray(tmp_path: Path) -> None:
    """SIGTERM to ``simclr tune`` (forwarded to Tune's graceful Ctrl-C stop): exit 143 without a
    traceback, the parent run and the trials' child runs KILLED or FINISHED (none RUNNING), Ray stopped."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "orchestrator.cli", "tune", *tiny_sets(), "--set", "train.workers=1",
           "--set", "eval.linear_probe_epochs=0", "--epochs", "30", "--name", "st", "--tracking-uri", uri,
           "--set", f"train.storage_path={tmp_path}/runs", "--search", "loss.temperature=grid(0.1,0.2)",
           "--num-samples", "1", "--scheduler", "none", "--max-concurrent", "1",
           "--num-cpus", "2", "--object-store-mb", "300"]
    run = Watched(cmd, tmp_path, clean_env())
    try:
        run.wait_for(" epoch 1/30: ")  # a trial reported its first epoch to Tune
        ray_procs = [p for p in descendants(run.proc.pid) if "raylet" in cmdline(p) or "gcs_server" in cmdline(p)]
        assert ray_procs
        os.kill(run.proc.pid, signal.SIGTERM)
        code, out, err = run.finish(timeout=300)
    finally:
        run.kill()
    assert code == 143, err[-3000:]
    assert "Traceback" not in err + out
    assert "interrupted: resume with  simclr tune --resume st" in out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("simclr").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("simclr.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert children and all(r.info.status in ("KILLED", "FINISHED") for r in children), \
        [(r.info.run_name, r.info.status) for r in children]
    deadline = time.time() + 30
    while any(alive(p) for p in ray_procs) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(alive(p) for p in ray_procs), "Ray processes left running"


@pytest.mark.slow
def test_sigterm_to_simclr_ui_stops_its_whole_server(tmp_path: Path) -> None:
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("simclr")
    port = free_port()
    ui = Watched([sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri",
                  f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port)], tmp_path, clean_env())
    try:
        wait_healthy(port, ui.proc, "simclr ui's server did not start:\n" + "".join(ui.lines)[-3000:])
        server = descendants(ui.proc.pid)
        assert server
        assert "/experiments/" in "".join(ui.lines)  # opens on the training runs of the experiment
        os.kill(ui.proc.pid, signal.SIGTERM)
        code, _out, err = ui.finish(timeout=60)
    finally:
        ui.kill()
    assert "Traceback" not in err
    assert code in (0, 143)
    assert not [p for p in server if alive(p)], "MLflow server processes left running"
