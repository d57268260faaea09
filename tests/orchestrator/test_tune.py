"""``simclr tune``: search-space parsing, resource planning, and a real sweep on a small local Ray."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler

from orchestrator import cli, tune
from orchestrator.cli.tune import resolve_with_search
from orchestrator.errors import NonFiniteLossError, UserError
from orchestrator.tune.spec import SweepSpec
from orchestrator.tune.trial import shares_data
from workloads.augment.views import AugConfig
from workloads.config import Config, ConfigError, TrainConfig
from workloads.contrastive import LossConfig

# --- search space -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind", "args"), [
    ("loss.temperature=loguniform(0.05,1.0)", "loguniform", (0.05, 1.0)),
    ("aug.strength=uniform(0.25, 1.5)", "uniform", (0.25, 1.5)),
    ("aug.min_scale=choice(0.08,0.2,0.5)", "choice", (0.08, 0.2, 0.5)),
    ("loss.temperature=grid(0.1,0.2,0.5)", "grid", (0.1, 0.2, 0.5)),
    ("loss.temperature=grid(1e-3, 2E-1)", "grid", (0.001, 0.2)),  # YAML 1.1 reads 1e-3 as a string
    ("train.batch_size=randint(16,65)", "randint", (16, 65)),
    ("model.widths=choice([8,16],[16,32])", "choice", ([8, 16], [16, 32])),
])
def test_search_expressions_parse_to_their_kind_and_values(text: str, kind: str, args: tuple[Any, ...]) -> None:
    dims = tune.parse_search([text])
    (dim,) = dims.values()
    assert (dim.kind, dim.args) == (kind, args)
    assert tune.parse_dimension(dim.key, dim.expr) == dim  # the expression round-trips (spec file, MLflow)


@pytest.mark.parametrize("text", [
    "loss.temperature", "loss.temperature=loguniform(0.05)", "loss.temperature=loguniform(0,1)",
    "loss.temperature=uniform(1,0.5)", "loss.temperature=normal(0,1)", "loss.temperature=grid()",
    "loss.temperature=grid(0.1,[)", "=grid(1,2)", "loss..temperature=grid(1,2)", "train.batch_size=randint(1.5,3)",
])
def test_malformed_search_expressions_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        tune.parse_search([text])


@pytest.mark.parametrize(("text", "message"), [
    ("loss.temprature=grid(0.1,0.2)", "unknown key 'loss.temprature'"),
    ("losses.temperature=grid(0.1,0.2)", "unknown key 'losses'"),
    ("loss.temperature=grid(0.1,-1)", "loss.temperature must be > 0"),
    ("aug.strength=uniform(0.5,9)", "aug.strength must be in [0, 4]"),  # the upper bound is probed too
    ("train.workers=grid(1,2)", "fixed for the whole sweep"),
    ("train.epochs=grid(2,4)", "fixed for the whole sweep"),
])
def test_search_keys_and_values_are_validated_against_config(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tune.validate_space(Config(), tune.parse_search([text]), "random")


def test_optuna_refuses_grid_and_grid_alg_refuses_continuous_values() -> None:
    with pytest.raises(ConfigError, match="optuna does not take grid"):
        tune.validate_space(Config(), tune.parse_search(["loss.temperature=grid(0.1,0.2)"]), "optuna")
    with pytest.raises(ConfigError, match="grid needs grid"):
        tune.validate_space(Config(), tune.parse_search(["loss.temperature=uniform(0.1,0.2)"]), "grid")


def test_grid_search_alg_expands_choice_into_every_value() -> None:
    space = tune.param_space(tune.parse_search(["aug.min_scale=choice(0.08,0.2)"]), "grid")
    assert space == {"aug.min_scale": {"grid_search": [0.08, 0.2]}}


def test_malformed_search_on_the_command_line_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["tune", "--search", "loss.temperature=loguniform(0.05)"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert err.count("\n") == 1 and err.startswith("simclr: error: --search loss.temperature=loguniform(0.05)")


def test_unknown_search_key_on_the_command_line_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["tune", "--search", "loss.temprature=grid(0.1,0.2)"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert err.count("\n") == 1 and "unknown key 'loss.temprature'" in err


def test_search_section_of_the_config_file_is_read_and_kept_out_of_config(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("recipe: digits\nloss: {temperature: 0.3}\n"
                    "search:\n  loss.temperature: loguniform(0.05, 1.0)\n  aug: {min_scale: 'choice(0.08, 0.2)'}\n")
    cfg, texts = resolve_with_search("", str(path), ["aug.strength=0.7"], {"train.epochs": 3})
    assert (cfg.get(LossConfig).temperature, cfg.get(AugConfig).strength, cfg.train.epochs) == (0.3, 0.7, 3)
    dims = tune.parse_search(texts)
    assert {k: d.kind for k, d in dims.items()} == {"loss.temperature": "loguniform", "aug.min_scale": "choice"}


def test_default_metric_follows_the_labels() -> None:
    labelled = Config().replace({"data.source": "synthetic", "data.holdout_fraction": 0.2})
    unlabelled = labelled.replace({"data.holdout_fraction": 0.0})
    assert tune.metric_and_mode(labelled, tune.TuneOptions()) == ("knn_top1", "max")
    assert tune.metric_and_mode(unlabelled, tune.TuneOptions()) == ("loss", "min")
    with pytest.raises(UserError, match="no held-out labels"):
        tune.prepare_sweep(unlabelled, tune.TuneOptions(metric="knn_top1"))
    with pytest.raises(UserError, match="every epoch"):
        tune.prepare_sweep(labelled.replace({"eval.every_epochs": 2}), tune.TuneOptions())


def test_optuna_tpe_samples_our_dotted_space_within_its_bounds() -> None:
    dims = tune.parse_search(["loss.temperature=loguniform(0.05,1.0)", "aug.min_scale=choice(0.08,0.2,0.5)"])
    spec = tune.SweepSpec(name="s", storage="/tmp", base=Config().to_dict(), user_base={}, search={},
                          search_alg="optuna", scheduler="asha", num_samples=4, metric="knn_top1", mode="max",
                          grace_period=1, reduction_factor=2, resources={"max_concurrent": 2}, tracking_uri="",
                          experiment_id="")
    alg = tune.build_search_alg(spec)
    assert type(alg).__name__ == "ConcurrencyLimiter" and type(alg.searcher).__name__ == "OptunaSearch"
    assert alg.set_search_properties("knn_top1", "max", tune.param_space(dims, "optuna"))
    for i in range(3):
        suggested = alg.suggest(f"t{i}")
        assert 0.05 <= suggested["loss.temperature"] <= 1.0
        assert suggested["aug.min_scale"] in (0.08, 0.2, 0.5)
        alg.on_trial_complete(f"t{i}", {"knn_top1": 0.5, "loss.temperature": suggested["loss.temperature"]})


def test_optuna_missing_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    code = cli.main(["tune", "--search-alg", "optuna"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR and err.count("\n") == 1 and "optuna is not installed" in err


# --- resources ------------------------------------------------------------------------------------------


def test_two_cpus_run_one_trial_at_a_time_and_leave_a_cpu_for_ray_data() -> None:
    plan = tune.plan_resources(TrainConfig(workers=1, batch_size=32), cpus=2, gpus=0)
    assert (plan.max_concurrent, plan.cpus_per_worker) == (1, 0.9)
    assert plan.max_concurrent * plan.cpus_per_trial <= 2 - 1 + 1e-9


def test_max_concurrent_shares_the_cpus_not_kept_for_data() -> None:
    plan = tune.plan_resources(TrainConfig(workers=1, batch_size=32), cpus=2, gpus=0, max_concurrent=2)
    assert (plan.max_concurrent, plan.cpus_per_worker) == (2, 0.4)
    plan = tune.plan_resources(TrainConfig(workers=2, batch_size=32), cpus=16, gpus=0)
    assert plan.max_concurrent * plan.cpus_per_trial <= 16 - 4 + 1e-9 and plan.cpus_per_worker >= 1


@pytest.mark.parametrize(("train", "cpus", "gpus", "max_concurrent", "message"), [
    (TrainConfig(workers=1, batch_size=32), 2, 0, 6, "leave"),  # 6 trials on the 1 free CPU
    (TrainConfig(workers=1, batch_size=32, cpus_per_worker=2), 2, 0, 0, "need"),
    (TrainConfig(workers=2, batch_size=32, cpus_per_worker=1), 8, 0, 4, "need"),
    (TrainConfig(workers=2, batch_size=32, use_gpu=True), 8, 1, 0, "GPUs"),
])
def test_trials_that_cannot_fit_are_refused_up_front(train: TrainConfig, cpus: float, gpus: float,
                                                      max_concurrent: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        tune.plan_resources(train, cpus, gpus, max_concurrent)


# --- scheduler, best trial --------------------------------------------------------------------------------


def test_asha_stops_a_weak_trial_at_a_rung_but_never_at_its_last_epoch() -> None:
    sched = tune.LastEpochASHA(max_t=4, grace_period=1, reduction_factor=2)
    sched.set_search_properties("loss", "min")
    controller: Any = None
    good, weak, late = (SimpleNamespace(trial_id=i) for i in ("a", "b", "c"))
    trial: Any
    for trial in (good, weak, late):
        sched.on_trial_add(controller, trial)
    assert sched.on_trial_result(None, good, {"epoch": 1, "loss": 1.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, weak, {"epoch": 1, "loss": 5.0}) == TrialScheduler.STOP
    # Ray's ASHA stops every trial at max_t, killing it while train() writes its final artifacts.
    assert sched.on_trial_result(None, late, {"epoch": 4, "loss": 9.0}) == TrialScheduler.CONTINUE


@pytest.mark.parametrize(("search", "share", "shares"), [
    ({"loss.temperature": "loguniform(0.05,1.0)", "aug.strength": "uniform(0.25,1.5)"}, True, True),
    ({"loss.temperature": "loguniform(0.05,1.0)"}, False, False),  # --prepare-per-trial
    ({"data.decode_size": "choice(32,64)"}, True, False),  # a data setting changes what is prepared
    ({"train.seed": "randint(0,9)"}, True, False),  # the seed draws the held-out split
])
def test_trials_share_the_sweeps_prepared_data_unless_a_searched_key_changes_it(
        search: dict[str, str], share: bool, shares: bool) -> None:
    spec = SweepSpec(name="s", storage="/tmp", base={}, user_base={}, search=search, search_alg="random",
                     scheduler="none", num_samples=1, metric="loss", mode="min", grace_period=1, reduction_factor=2,
                     resources={}, tracking_uri="", experiment_id="", share_data=share)
    assert shares_data(spec) is shares


def test_best_trial_prefers_completed_trials() -> None:
    def trial(i: str, status: str, loss: float) -> tune.TrialSummary:
        return tune.TrialSummary(i, f"s-{i}", status, {"loss.temperature": 0.1}, {"loss": loss})

    trials = [trial("a", "completed", 3.0), trial("b", "stopped_early", 1.0), trial("c", "failed", 0.5),
              trial("d", "completed", 2.0)]
    best = tune.best_trial(trials, "loss", "min")
    assert best is not None and best.trial_id == "d"
    best = tune.best_trial(trials[1:3], "loss", "min")
    assert best is not None and best.trial_id == "b"


def test_child_runs_are_ended_as_their_trials_ended_and_a_stopped_trial_is_never_failed(tmp_path: Path) -> None:
    """After the sweep: runs Tune's kill left RUNNING are ended by their trial's outcome; a run that ASHA
    stopped is FINISHED, and one the sweep's interruption stopped is KILLED, even when the training
    inside saw the trial's placement group go and ended its run FAILED first (seen in the suite, for
    both: "Destroying worker since its placement group was removed")."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tune.report import SweepOutcome, TrialSummary
    from orchestrator.tune.runs import fix_child_runs
    from orchestrator.tune.spec import SweepSpec

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("simclr")
    parent = client.create_run(exp, run_name="sw").info.run_id
    spec = SweepSpec(name="sw", storage=str(tmp_path), base={}, user_base={}, search={}, search_alg="random",
                     scheduler="asha", num_samples=1, metric="loss", mode="min", grace_period=1,
                     reduction_factor=2, resources={}, tracking_uri="", experiment_id=exp, parent_run_id=parent)
    ends = {"a": ("completed", "RUNNING"), "b": ("stopped_early", "RUNNING"), "c": ("stopped_early", "FAILED"),
            "d": ("failed", "RUNNING"), "e": ("interrupted", "RUNNING"), "f": ("interrupted", "FAILED")}
    run_ids = {}
    for name, (_status, mlflow_status) in ends.items():
        run_ids[name] = client.create_run(exp, run_name=f"sw-{name}",
                                          tags={"mlflow.parentRunId": parent}).info.run_id
        if mlflow_status == "FAILED":
            client.set_tag(run_ids[name], "error", "The actor is dead ... placement group was removed")
            client.set_terminated(run_ids[name], "FAILED")
    outcome = SweepOutcome("sw", parent, "", exp, "loss", "min", str(tmp_path), trials=[
        TrialSummary(name, f"sw-{name}", status, {}, {}, error="boom" if status == "failed" else "")
        for name, (status, _) in ends.items()])
    fix_child_runs(client, spec, outcome)
    runs = {name: client.get_run(run_id) for name, run_id in run_ids.items()}
    assert {name: r.info.status for name, r in runs.items()} == {
        "a": "FINISHED", "b": "FINISHED", "c": "FINISHED", "d": "FAILED", "e": "KILLED", "f": "KILLED"}
    assert "error" not in runs["c"].data.tags and runs["d"].data.tags["error"] == "boom"
    assert runs["e"].data.tags["error"] == runs["f"].data.tags["error"] == \
        "sweep interrupted; resume with simclr tune --resume sw"
    assert {name for name, r in runs.items() if r.data.tags.get("simclr.stopped_early") == "true"} == {"b", "c"}
    assert all(r.data.tags["simclr.trial_id"] == name for name, r in runs.items())


def test_trial_lines_say_start_epochs_and_how_each_trial_ended(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from orchestrator import console
    from orchestrator.tune.progress import TrialLines

    terminal = io.StringIO()
    monkeypatch.setattr(console, "_active", [console.Console(terminal, tty=False)])

    lines = TrialLines("sw", 4, ["loss.temperature"], "knn_top1")
    done, cut, bad = (SimpleNamespace(trial_id=i, config={"loss.temperature": t}, last_result={})
                      for i, t in (("a_0", 0.1), ("b_1", 3.0), ("c_2", 0.5)))
    bad.error_file = str(tmp_path / "error.txt")  # what Tune writes before calling on_trial_error
    Path(bad.error_file).write_text("Failure # 1\nTraceback ...\nNonFiniteLossError: non-finite loss at epoch 1\n")
    bad.pickled_error_file = str(tmp_path / "error.pkl")  # and the error itself, pickled
    Path(bad.pickled_error_file).write_bytes(pickle.dumps(NonFiniteLossError("non-finite loss at epoch 1")))
    for trial in (done, cut, bad):
        lines.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3, 4):
        done.last_result = {"epoch": epoch, "loss": 4.0 - epoch / 10, "knn_top1": 0.5, "done": epoch == 4}
        lines.on_trial_result(0, [], done, dict(done.last_result))
    cut.last_result = {"epoch": 1, "loss": 4.14, "knn_top1": 0.1, "done": True}  # Tune: the scheduler said STOP
    lines.on_trial_result(0, [], cut, dict(cut.last_result))
    lines.on_trial_complete(0, [], cut)
    lines.on_trial_complete(0, [], done)
    lines.on_trial_error(0, [], bad)
    assert terminal.getvalue().splitlines() == [
        "trial sw-a_0 started: loss.temperature=0.1",
        "trial sw-b_1 started: loss.temperature=3",
        "trial sw-c_2 started: loss.temperature=0.5",
        "trial sw-a_0 epoch 1/4: loss 3.9000 knn_top1 0.5000  (loss.temperature=0.1)",
        "trial sw-a_0 epoch 2/4: loss 3.8000 knn_top1 0.5000  (loss.temperature=0.1)",
        "trial sw-a_0 epoch 3/4: loss 3.7000 knn_top1 0.5000  (loss.temperature=0.1)",
        "trial sw-a_0 epoch 4/4: loss 3.6000 knn_top1 0.5000  (loss.temperature=0.1)",
        "trial sw-b_1 epoch 1/4: loss 4.1400 knn_top1 0.1000  (loss.temperature=3)",
        "trial sw-b_1 stopped by ASHA after epoch 1/4",
        "trial sw-a_0 finished epoch 4/4: loss 3.6000 knn_top1 0.5000",
        "trial sw-c_2 failed: non-finite loss at epoch 1",
    ]


def test_a_trial_error_that_was_not_pickled_is_shown_by_its_last_line(tmp_path: Path) -> None:
    """Tune pickles only the errors it can; the text it always writes stands in for the others."""
    from orchestrator.tune.progress import _error

    trial = SimpleNamespace(error_file=str(tmp_path / "error.txt"), pickled_error_file=str(tmp_path / "none.pkl"))
    Path(trial.error_file).write_text("Failure # 1\nTraceback ...\nSomeError: the reason\n\n")
    assert _error(trial) == "SomeError: the reason"
    assert _error(SimpleNamespace(error_file=None, pickled_error_file=None)) == "see the sweep's log file"


def test_a_failed_trials_summary_reads_its_pickled_error_by_class() -> None:
    from ray.exceptions import RayTaskError

    from orchestrator.tune.report import _trial_error

    loss = NonFiniteLossError("non-finite loss (nan) at epoch 1, step 2")
    pickled = RayTaskError("simclr_trial", "Traceback ...\nNonFiniteLossError: ...", loss).as_instanceof_cause()
    assert _trial_error(SimpleNamespace(get_pickled_error=lambda: pickled, get_error=lambda: "")) == str(loss)
    text_only = SimpleNamespace(get_pickled_error=lambda: None, get_error=lambda: "Failure # 1\nValueError: x\n")
    assert _trial_error(text_only) == "ValueError: x"
    assert _trial_error(SimpleNamespace(get_pickled_error=lambda: None, get_error=lambda: None)) == "trial failed"


# --- a real sweep -------------------------------------------------------------------------------------------

# 4 epochs of ~200 synthetic 16 px images, one worker per trial, two trials at a time on 2 CPUs.
SWEEP_SETS = {
    "data.source": "synthetic", "data.num_samples": 256, "data.image_size": 16, "data.augment_batch_size": 64,
    "model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": 16, "train.batch_size": 32,
    "train.workers": 1, "train.log_every_steps": 3, "eval.knn_k": 20, "eval.linear_probe_epochs": 0,
    "optim.warmup_epochs": 0,
}
# Four temperatures in grid order (the trials start in this order, two at a time). The loss is the metric
# here because it is nearly a function of the temperature: at tau=3 every logit is within +-1/3, so its
# loss stays near log(63) = 4.14 while the low temperatures' falls, and ASHA's rung-1 comparison of the
# tau=3 trial against the first two trials stops it whatever the noise (of those two, the second to
# reach a rung may be stopped too). tau=1e-300 passes validation (> 0) but is 0 in float32: that
# trial's first loss is NaN and it fails inside the trial.
TEMPERATURES = (0.1, 0.15, 1e-300, 3.0)
FAILING = 1e-300


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One 4-trial ASHA sweep: ``simclr tune ... --json`` in a subprocess, on its own local Ray of 2 CPUs
    (stdout: the JSON outcome; stderr: exactly what a person sees)."""
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = ["tune", "--name", "sw", "--epochs", "4", "--tracking-uri", uri,
            "--set", f"train.storage_path={tmp}/runs",
            "--search", f"loss.temperature=grid({','.join(repr(t) for t in TEMPERATURES)})", "--num-samples", "1",
            "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2", "--metric", "loss",
            "--max-concurrent", "2", "--num-cpus", "2", "--object-store-mb", "300", "--json"]
    for key, value in SWEEP_SETS.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.stdout.strip(), proc.stderr[-4000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("simclr")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    yield {"code": proc.returncode, "out": json.loads(proc.stdout), "runs": runs, "client": client,
           "stderr": proc.stderr, "logs": tmp / "runs" / "sw" / "logs"}


@pytest.mark.slow
def test_asha_sweep_has_one_parent_four_children_one_stopped_early_and_nothing_running(
        sweep: dict[str, Any]) -> None:
    out, runs = sweep["out"], sweep["runs"]
    assert sweep["code"] == 0
    parents = [r for r in runs if r.data.tags.get("simclr.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == out["parent_run_id"] and parent.info.run_name == "sw"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    temps = sorted(float(r.data.params["loss.temperature"]) for r in children)
    assert temps == sorted(TEMPERATURES)
    # Run names come from trial ids; every run has ended.
    assert {r.info.run_name for r in children} == {f"sw-{t['trial_id']}" for t in out["trials"]}
    assert all(r.info.status != "RUNNING" for r in runs)
    assert parent.info.status == "FINISHED"
    stopped = [r for r in children if r.data.tags.get("simclr.stopped_early") == "true"]
    assert len(stopped) >= 1
    assert all(r.info.status == "FINISHED" for r in stopped)
    assert 3.0 in {float(r.data.params["loss.temperature"]) for r in stopped}
    by_status = {t["trial_id"]: t["status"] for t in out["trials"]}
    assert sorted(by_status.values()).count("stopped_early") == len(stopped)
    # The best trial is named on the parent, with its value and metric.
    best = out["best"]
    assert parent.data.tags["simclr.best_trial"] == best["run_name"]
    assert parent.data.tags["best.loss.temperature"] == str(best["params"]["loss.temperature"])
    assert parent.data.metrics["best_loss"] == pytest.approx(best["metric"])
    assert best["params"]["loss.temperature"] in (0.1, 0.15)
    assert parent.data.params["search.loss.temperature"].startswith("grid(")
    assert parent.data.params["tune.scheduler"] == "asha"
    client = sweep["client"]
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "base_config.yaml"} <= top
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/loss_vs_loss.temperature.png"]
    # The data was prepared once, by the sweep's driver, for all four trials.
    assert "prepare_seconds" in parent.data.metrics
    assert all(r.data.tags.get("simclr.data_prepared_by") == "sweep" for r in children)
    assert out["train_command"].startswith("simclr train --config ")
    assert f"--set loss.temperature={best['params']['loss.temperature']}" in out["train_command"]


@pytest.mark.slow
def test_trial_that_raises_is_failed_with_its_error_and_the_others_finish(sweep: dict[str, Any]) -> None:
    out, runs = sweep["out"], sweep["runs"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    failed = [r for r in children if float(r.data.params["loss.temperature"]) == FAILING]
    assert len(failed) == 1
    assert failed[0].info.status == "FAILED"
    assert "non-finite loss" in failed[0].data.tags["error"]
    failing_trial = next(t for t in out["trials"] if t["params"]["loss.temperature"] == FAILING)
    assert failing_trial["status"] == "failed" and "non-finite loss" in failing_trial["error"]
    # The sweep went on: every other trial ended FINISHED, run to its last epoch or stopped by ASHA.
    others = [r for r in children if r is not failed[0]]
    assert len(others) == 3 and all(r.info.status == "FINISHED" for r in others)
    assert all(r.data.tags.get("simclr.complete") == "true" or r.data.tags.get("simclr.stopped_early") == "true"
               for r in others)
    assert any(r.data.tags.get("simclr.complete") == "true" for r in others)
    assert sorted(t["status"] for t in out["trials"] if t is not failing_trial) in (
        ["completed", "stopped_early", "stopped_early"], ["completed", "completed", "stopped_early"])


@pytest.mark.slow
def test_sweep_console_has_a_header_and_a_line_per_trial_event_and_ray_output_goes_to_the_log(
        sweep: dict[str, Any]) -> None:
    out, err = sweep["out"], sweep["stderr"]
    lines = err.splitlines()
    assert len(lines) < 40, err
    start = next((i for i, ln in enumerate(lines) if ln.startswith("sweep sw: ")), len(lines))
    assert all(" INFO mlflow." in ln for ln in lines[:start]), err  # MLflow may announce a new database
    lines = lines[start:]
    # the header: the sweep, its search space, the parent run, where Ray's output went
    assert lines[0].startswith("sweep sw: 4 trial(s) of 4 epochs, random search, ASHA on loss"), err
    assert lines[1] == "  search: loss.temperature=grid(0.1, 0.15, 1e-300, 3.0)"
    assert lines[2].startswith(f"  MLflow parent run {out['parent_run_id']} at sqlite:")
    (log,) = sweep["logs"].iterdir()
    assert lines[3] == f"  Ray's output: {log}"
    # then only trial lines: every event of every trial, and nothing of Ray's
    events = lines[4:]
    bad = [ln for ln in events if not re.match(r"trial sw-\S+ (started|epoch|finished|stopped by ASHA|failed)", ln)]
    assert not bad, err
    for trial in out["trials"]:
        mine = [ln.split(" ", 2)[2] for ln in events if ln.split(" ", 2)[1] == trial["run_name"]]
        assert mine[0].startswith("started: loss.temperature="), mine
        epochs = [ln for ln in mine if ln.startswith("epoch ")]
        end = {"completed": "finished epoch 4/4: loss ", "stopped_early": "stopped by ASHA after epoch ",
               "failed": "failed: non-finite loss"}[trial["status"]]
        assert mine[-1].startswith(end), mine
        assert len(epochs) == int(trial["metrics"].get("epoch", 0)), mine
        epoch_line = r"epoch \d/4: loss \d+\.\d{4}( knn_top1 \d\.\d{4})?  \(loss.temperature=\S+\)$"
        assert all(re.match(epoch_line, ln) for ln in epochs), mine
    # Ray's own output (Tune's status table, the trials' worker logs) is in the sweep's log file,
    # which is also an artifact of the parent run
    text = log.read_text()
    assert "Trial status" in text and "epoch 1/4 done" in text and "trial sw-" in text
    assert [a.path for a in sweep["client"].list_artifacts(out["parent_run_id"], "logs")] == [f"logs/{log.name}"]
