"""``simclr tune``: search-space parsing, resource planning, trial lines, child runs and the sweep's outcome.
The real sweep (ASHA, a failing trial, the console) runs on the session's cluster, in
tests/cluster/test_submit_sweep.py."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler

from orchestrator import cli, tune
from orchestrator.cli.tune import resolve_with_search
from orchestrator.errors import NonFiniteLossError, UserError
from orchestrator.tune.resources import TRIAL_CPU
from orchestrator.tune.spec import SweepSpec
from orchestrator.tune.trial import shares_data
from workloads.config import Config, ConfigError, TrainConfig
from workloads.contrastive import LossConfig
from workloads.sections import AugConfig

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


def test_a_derived_share_leaves_a_cpu_for_ray_data_on_the_node_of_each_worker() -> None:
    """Two trials on two 3-CPU nodes: half of the 4.5 CPUs not kept for data would be 2.15 per worker, which
    leaves 0.75 on each node, less than the one CPU a Ray Data task asks for."""
    plan = tune.plan_resources(TrainConfig(workers=1, batch_size=32), cpus=6, gpus=0, max_concurrent=2,
                               largest_node_cpus=3)
    assert plan.max_concurrent == 2 and plan.cpus_per_worker == 1.9
    assert 3 - TRIAL_CPU - plan.cpus_per_worker >= 1 - 1e-9
    plan = tune.plan_resources(TrainConfig(workers=1, batch_size=32), cpus=64, gpus=0, max_concurrent=2,
                               largest_node_cpus=32)
    assert plan.cpus_per_worker == 23.9  # large nodes: the share as before
    plan = tune.plan_resources(TrainConfig(workers=1, batch_size=32), cpus=1, gpus=0, largest_node_cpus=1)
    assert plan.cpus_per_worker == 0.4  # one 1-CPU node cannot keep a CPU: the plan without the cap


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
