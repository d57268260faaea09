"""A token-protected head (RAY_AUTH_MODE=token): without the right token the CLI says how to pass it."""

from __future__ import annotations

from pathlib import Path

import pytest
from local_ray import LocalCluster

from orchestrator import cli


@pytest.fixture(autouse=True)
def client_without_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process as a client with no token anywhere: its own HOME, no RAY_AUTH_* variables."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_submit_without_a_token_is_one_line_exit_2_saying_how_to_pass_it(
        ray_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["submit", "--no-wait", "train", "--epochs", "1", "--address", ray_cluster.dashboard_url], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("simclr: error:")]
    assert len(lines) == 1, err
    assert "requires a token (401)" in lines[0] and "--token-file" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]


@pytest.mark.slow
def test_submit_with_a_wrong_token_is_one_line_exit_2_and_never_shows_a_token(
        ray_cluster: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-cluster-token-0123456789")
    code, err = run(["submit", "--no-wait", "train", "--epochs", "1", "--address", ray_cluster.dashboard_url,
                     "--token-file", str(wrong)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("simclr: error:")]
    assert len(lines) == 1, err
    assert "rejected the token from --token-file" in lines[0] and "(403)" in lines[0]
    assert "not-the-cluster-token" not in err and ray_cluster.token not in err


@pytest.mark.slow
def test_the_token_in_the_environment_is_used_like_ray_does(
        ray_cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)
    code = cli.main(["jobs", "list", "--address", ray_cluster.dashboard_url])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ray_cluster.token not in out + err


@pytest.mark.slow
@pytest.mark.parametrize("command", [["logs"], ["logs", "--follow"], ["stop"]])
def test_an_unknown_job_is_a_user_error(
        command: list[str], ray_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["jobs", *command, "raysubmit_doesnotexist", "--address", ray_cluster.dashboard_url,
                     "--token-file", str(ray_cluster.token_file)], capsys)
    assert code == 2
    assert err.strip().startswith("simclr: error: no job 'raysubmit_doesnotexist'")
