"""cluster.jobs and the submit command without a cluster: what is sent, which token, which errors."""

from __future__ import annotations

import argparse
import io
import shlex
import zipfile
from pathlib import Path

import pytest
from local_ray import free_port
from ray._private.runtime_env.packaging import create_package

from cluster import jobs
from cluster.jobs import Token, entrypoint, load_token, resolve_address, runtime_env
from cluster.resources import missing
from orchestrator import cli
from orchestrator.cli.jobs import _rebase_config, check_train_args, split_args
from orchestrator.errors import UserError
from workloads.config import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Ray/MLflow settings and a HOME of our own: never the real ~/.ray/auth_token."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                 "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_address_defaults_to_the_dashboard_tunnel_and_env_and_flag_override_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address for ray.init: not the dashboard
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert resolve_address() == "http://head:8265"
    assert resolve_address("other:8265/") == "http://other:8265"
    with pytest.raises(UserError, match="dashboard's HTTP address"):
        resolve_address("ray://head:10001")


def test_token_precedence_is_flag_then_env_then_env_path_then_rays_default_file(
        monkeypatch: pytest.MonkeyPatch, clean_env: Path, tmp_path: Path) -> None:
    assert load_token() is None
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-default\n")
    assert load_token() == Token("from-default", str(clean_env / ".ray" / "auth_token"))
    path_file = tmp_path / "path_token"
    path_file.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_file))
    assert load_token().value == "from-path"  # type: ignore[union-attr]
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert load_token().value == "from-env"  # type: ignore[union-attr]
    flag_file = tmp_path / "flag_token"
    flag_file.write_text("  from-flag \n")
    token = load_token(str(flag_file))
    assert token is not None and token.value == "from-flag"
    assert "from-flag" not in repr(token)  # never in tracebacks or debug output


def test_an_unreadable_or_empty_token_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--token-file: cannot read"):
        load_token(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        load_token(str(tmp_path / "empty"))


def test_working_dir_package_leaves_out_data_envs_stores_and_caches(tmp_path: Path) -> None:
    project = tmp_path / "project"
    keep = ["orchestrator/cli.py", "workloads/data/readers.py", "cluster/jobs.py", "pyproject.toml",
            "configs/cifar.yaml"]
    drop = ["data/cifar/batch_1.bin", ".venv/bin/python", "mlruns/0/meta.yaml", "mlartifacts/1/a.png",
            "simclr_runs/run/checkpoint_1/state.pt", ".git/HEAD", "mlflow.db", "orchestrator/__pycache__/cli.pyc",
            ".mypy_cache/x.json", ".pytest_cache/v", ".ruff_cache/x", "simclr_orchestrator.egg-info/PKG-INFO"]
    for rel in keep + drop:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x")
    env = runtime_env("http://mlflow:5000", root=project)
    assert env["working_dir"] == str(project)
    # the tracking URI, the stop's grace and no MLflow telemetry travel; nothing else (no credentials)
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "RAY_JOB_STOP_WAIT_TIME_S": "120",
                               "MLFLOW_DISABLE_TELEMETRY": "true"}
    package = tmp_path / "pkg.zip"
    create_package(str(project), package, include_gitignore=True, excludes=env["excludes"])
    names = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    assert set(keep) <= names
    assert not names & set(drop), names & set(drop)


def test_no_tracking_uri_means_none_in_the_env_vars() -> None:
    assert runtime_env("")["env_vars"] == {"RAY_JOB_STOP_WAIT_TIME_S": "120", "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_entrypoint_quotes_arguments_and_waits_for_resources_first() -> None:
    args = ["--set", "model.widths=[8,16]", "--name", "a b"]
    plain = entrypoint("train", args)
    assert shlex.split(plain) == ["python", "-m", "orchestrator.cli", "train", *args]
    waiting = entrypoint("train", args, {"GPU": 4.0, "CPU": 0.0}, 600)
    first, second = waiting.split(" && ")
    assert shlex.split(first) == ["python", "-m", "cluster.resources", "--timeout-s", "600", "--gpus", "4"]
    assert second == plain


def test_missing_resources_names_only_what_is_short() -> None:
    assert missing({"GPU": 4.0, "CPU": 2.0}, {"GPU": 2.0, "CPU": 96.0}) == {"GPU": 2.0}
    assert missing({"GPU": 0.0, "CPU": 2.0}, {"CPU": 2.0}) == {}


def test_submit_flags_are_taken_out_of_the_train_arguments_wherever_they_stand() -> None:
    ns = cli.build_parser().parse_args(["submit", "--no-wait", "train", "--epochs", "3", "--address", "http://h:1",
                                        "--set", "loss.temperature=0.2", "--token-file", "t", "--tracking-uri", "u"])
    ns = split_args(ns)
    assert (ns.address, ns.token_file, ns.tracking_uri, ns.no_wait) == ("http://h:1", "t", "u", True)
    assert ns.args == ["--epochs", "3", "--set", "loss.temperature=0.2"]


def test_train_arguments_are_validated_before_submitting(tmp_path: Path) -> None:
    rest, need, notes = check_train_args(["--epochs", "3", "--workers", "4", "--use-gpu"])
    assert rest == ["--epochs", "3", "--workers", "4", "--use-gpu"] and need == {"GPU": 4.0}
    assert "storage_path is unset" in notes[0]
    with pytest.raises(ConfigError, match="train.epochs"):
        check_train_args(["--set", "train.epochs=0"])
    outside = tmp_path / "c.yaml"
    outside.write_text("train: {epochs: 2}\n")
    with pytest.raises(UserError, match="put the file inside it"):
        check_train_args(["--config", str(outside)])


def test_a_config_path_is_rewritten_relative_to_the_project_root() -> None:
    inside = jobs.project_root() / "pyproject.toml"
    assert _rebase_config(["--config", str(inside), "--epochs", "2"], str(inside)) == [
        "--config", "pyproject.toml", "--epochs", "2"]
    assert _rebase_config([f"--config={inside}"], str(inside)) == ["--config=pyproject.toml"]


def test_submit_to_an_address_where_no_cluster_answers_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["submit", "train", "--epochs", "1", "--address", address])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("simclr: error: --address: no Ray cluster answers at " + address)


@pytest.mark.parametrize("command", [["jobs", "list"], ["jobs", "logs", "raysubmit_x"], ["jobs", "stop", "x"]])
def test_jobs_commands_without_a_cluster_exit_2(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_submit_with_bad_train_flags_fails_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["submit", "train", "--bogus", "3", "--address", f"http://127.0.0.1:{free_port()}"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_submit_registers_with_the_cli() -> None:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"submit", "jobs"} <= set(sub.choices)


JOB_LOG = [  # the head of a real job's log (Ray 2.60), cut into chunks that end mid-line
    "2026-11-29 07:18:22,178\tINFO job_manager.py:581 -- Runtime env is setting up.\nRunning entry",
    "point for job raysubmit_AbC: python -m orchestrator.cli train --epochs 2\ncluster.resources: the cluster ",
    "has 6 CPU\nrun e2e, simclr (MLflow run 123) on a local Ray\n",
    "2026-11-29 07:18:23,000\tWARNING job_manager.py:618 -- Failed to start supervisor\n",
    "Running entrypoint for job raysubmit_Other: python x\n",  # not this job's: not Ray's header
    "epoch 1/2 done: loss 3.9",
]


def test_run_stream_shows_the_runs_lines_and_leaves_out_rays_job_lines() -> None:
    out = io.StringIO()
    stream = jobs.RunStream(out, "raysubmit_AbC")
    for chunk in JOB_LOG:
        stream.write(chunk)
    assert out.getvalue().endswith("Failed to start supervisor\nRunning entrypoint for job raysubmit_Other: python x\n")
    stream.close()  # the last line had no newline yet
    assert out.getvalue().splitlines() == [
        "cluster.resources: the cluster has 6 CPU",
        "run e2e, simclr (MLflow run 123) on a local Ray",
        "2026-11-29 07:18:23,000\tWARNING job_manager.py:618 -- Failed to start supervisor",  # a reason: kept
        "Running entrypoint for job raysubmit_Other: python x",
        "epoch 1/2 done: loss 3.9",
    ]
    # the whole log, as `simclr jobs logs --follow` prints it, keeps Ray's lines
    whole = io.StringIO()
    for chunk in JOB_LOG:
        jobs.print_stream(whole)(chunk)
    assert whole.getvalue() == "".join(JOB_LOG)
