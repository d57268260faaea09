"""`simclr export`: a checkpoint's ResNet as a state dict torchvision loads with strict=True."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from orchestrator.cli import main
from orchestrator.train.checkpoint import STATE_FILE
from orchestrator.train.model import build_model
from workloads.config import Config


def write_checkpoint(folder: Path, cfg: Config) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(cfg)
    folder.mkdir()
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "global_step": 1,
                "config": cfg.to_dict(), "run_id": "r"}, folder / STATE_FILE)
    return model


def test_resnet18_exports_to_torchvision_strict_with_the_same_features(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Config().replace({"model.arch": "resnet18", "model.cifar_stem": False})
    model = write_checkpoint(tmp_path / "ckpt", cfg).eval()
    assert main(["export", str(tmp_path / "ckpt"), "--format", "torchvision", "-o", str(tmp_path / "r18.pt")]) == 0
    assert "strict=True" in capsys.readouterr().out
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(tmp_path / "r18.pt"), strict=True)
    net.fc = torch.nn.Identity()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.eval()(images), model.get_submodule("encoder")(images), atol=1e-5)


@pytest.mark.parametrize(("sets", "expected"), [
    ({"model.arch": "small_resnet"}, "model.arch=small_resnet"),
    ({"model.arch": "resnet18", "model.cifar_stem": True}, "model.cifar_stem=true"),
])
def test_backbones_torchvision_cannot_hold_are_one_line_exit_2(
        sets: dict[str, object], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_checkpoint(tmp_path / "ckpt", Config().replace(sets))
    assert main(["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "x.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("simclr: error: ") and expected in line
