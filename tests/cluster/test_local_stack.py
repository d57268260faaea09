"""``python -m cluster.local``: the file a shell sources, what ``down`` deletes, and ``status`` on the
session's stack (tests/services.py starts it with the same ``up`` and stops it with ``down``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.local import Stack, env_script, remove_files


def test_the_env_file_exports_each_value_quoted_for_the_shell(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "simclr-local", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "a b" / "auth_token")}
    script = env_script(env)
    (tmp_path / "env.sh").write_text(script)
    assert script.count("\nexport ") == len(env)
    # the shell reads back exactly these values
    shown = subprocess.run(["bash", "-c", f"source {tmp_path / 'env.sh'} && env"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert {f"{k}={v}" for k, v in env.items()} <= set(shown)


def test_down_deletes_what_up_wrote_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    (folder / "pg" / "base").mkdir(parents=True)
    for name in ("state.json", "env.sh", "s3.log", "mlflow.log", "my-notes.txt"):
        (folder / name).write_text("x")
    remove_files(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["my-notes.txt"]
    (folder / "my-notes.txt").unlink()
    remove_files(folder)
    assert not folder.exists()


@pytest.mark.slow
def test_status_shows_every_part_up_and_env_prints_the_variables(stack: Stack) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.local", "status", "--dir", str(stack.folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()}
    assert parts == {"s3": "up", "postgres": "up", "mlflow": "up", "ray": "up"}, proc.stdout
    assert re.search(r"\((\d+) of \1 nodes alive\)", proc.stdout), proc.stdout
    # `env` prints again what `up` printed for the shell to eval
    env = subprocess.run([sys.executable, "-m", "cluster.local", "env", "--dir", str(stack.folder)],
                         capture_output=True, text=True, timeout=120)
    assert env.returncode == 0 and env.stdout == env_script(stack.env()), env.stdout + env.stderr
