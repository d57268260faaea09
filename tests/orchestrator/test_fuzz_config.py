"""Config fuzzing: whatever the user types, the CLI answers with a config or one line and exit 2."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from workloads.config import SHARED_SECTIONS, Config
from workloads.methods import METHODS

FIELDS = [f"{section}.{f.name}" for section, value in Config().to_dict().items() if isinstance(value, dict)
          for f in dataclasses.fields(Config().section(section))]

yaml_scalars = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-1", "-0.5", "1e-9", "1e30", ".nan", ".inf", "-.inf", "true", "false", "null", "~", "",
                     "[]", "{}", "[1, 2", "{a: 1", "'unclosed", "[8, 16]", "[0, -1]", "{x: [1, {y: 2}]}", "'   '",
                     "!!python/object:os.system ls", "&a [*a]", "\t", ": :"]),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["loss", "data", "train.epochs.x", "a.b", "loss.", ".x",
                                                           "loss..temperature", "x"]),
                 st.text(min_size=1, max_size=15))
assignments = st.builds(lambda k, v: f"{k}={v}", keys, yaml_scalars) | st.text(max_size=20)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(["train", "--dry-run", *args])
    except SystemExit as exit_:  # argparse usage errors exit through SystemExit
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.err


def check(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("simclr: error: "), err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sets=st.lists(assignments, min_size=1, max_size=4))
def test_random_set_overrides_give_a_config_or_one_line_exit_2(sets: list[str],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    check(*run(args, capsys))


yaml_docs = st.one_of(
    st.text(max_size=80),
    st.recursive(yaml_scalars, lambda children: st.dictionaries(
        st.one_of(st.sampled_from([*FIELDS, "loss", "data", "model", "recipe", "train"]), st.text(max_size=8)),
        children, max_size=4).map(lambda d: "\n".join(f"{k}: {v}" for k, v in d.items())), max_leaves=8),
    st.dictionaries(st.sampled_from(["loss", "data", "model", "optim", "train", "aug", "eval", "recipe"]),
                    st.dictionaries(st.sampled_from([f.split(".")[1] for f in FIELDS] + ["bogus"]), yaml_scalars,
                                    max_size=3), max_size=3).map(
        lambda d: "\n".join(f"{s}:\n" + "\n".join(f"  {k}: {v}" for k, v in fields.items())
                            for s, fields in d.items())),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yaml_docs)
def test_random_yaml_files_give_a_config_or_one_line_exit_2(doc: str, capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(doc)
        check(*run(["--config", str(path)], capsys))


@pytest.mark.parametrize("args", [["--workers", "-3"], ["--epochs", "0"], ["--epochs", "many"], ["--set"],
                                  ["--config", "/no/such/file.yaml"], ["--recipe", "imagenet22k"], ["--bogus"]])
def test_bad_flags_give_one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(args, capsys)
    assert code == 2
    check(code, err)


def test_dry_run_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dry-run", "--set", "loss.temperature=0.3"]) == 0
    out = capsys.readouterr().out
    assert "temperature: 0.3" in out and "source: digits" in out


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_dry_run_shows_the_shared_sections_and_the_methods_own_only(method: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dry-run", "--method", method]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert list(shown) == ["method", *SHARED_SECTIONS, *METHODS[method].sections]
    assert shown["method"] == method
