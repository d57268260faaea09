"""``simclr export CHECKPOINT --format torchvision -o resnet50.pt``: a trained backbone as the state dict
that downstream code loads into ``torchvision.models.resnet50()`` (or timm's ``resnet50``) with
``strict=True``.

The backbone has no classifier; the file carries the untrained ``fc`` of a fresh torchvision model of
the same arch (1000 classes, torchvision's own initialisation) so that a strict load passes. Replace
``model.fc`` for the downstream task, or read the features with ``model.fc = torch.nn.Identity()``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from orchestrator import storage
from orchestrator.errors import UserError

FORMATS = ("torchvision", "timm")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write a checkpoint's backbone as weights torchvision (or timm) loads",
                       description="Write the backbone of a checkpoint as a state dict that "
                                   "torchvision.models.<arch>() (same keys: timm's <arch>) loads with strict=True.")
    p.add_argument("checkpoint", help="a checkpoint folder (holding state.pt), local or in a bucket (s3://...)")
    p.add_argument("--format", choices=FORMATS, default="torchvision",
                   help="torchvision (default) or timm: the same ResNet keys")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .pt file to write")
    p.set_defaults(func=cmd_export)


def torchvision_state_dict(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(arch, state dict for ``torchvision.models.<arch>()``) from a checkpoint's payload."""
    import torchvision

    from workloads.config import Config

    cfg = Config.from_saved(payload["config"])
    arch = cfg.model.arch
    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"model.arch={arch}: only the torchvision ResNets ({', '.join(TORCHVISION_ARCHS)}) export "
                        f"to torchvision; use the MLflow model of the run instead")
    if cfg.model.cifar_stem:
        raise UserError(f"model.cifar_stem=true: this {arch} has a 3x3 stem and no max-pool, which "
                        f"torchvision.models.{arch}() cannot hold; use the MLflow model of the run instead")
    prefix = "encoder."
    backbone = {k[len(prefix):]: v for k, v in payload["model"].items() if k.startswith(prefix)}
    reference = getattr(torchvision.models, arch)().state_dict()
    state = {**{k: v for k, v in reference.items() if k.startswith("fc.")}, **backbone}
    if set(state) != set(reference):
        extra, missing = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
        raise UserError(f"checkpoint: its {arch} does not match torchvision's (extra {extra[:3]}, missing "
                        f"{missing[:3]})")
    return arch, state


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    import torch

    from orchestrator.train.checkpoint import CheckpointError, read_checkpoint

    if storage.missing_locally(args.checkpoint, folder=True):
        raise UserError(f"checkpoint: no such folder {args.checkpoint}")
    try:
        payload = read_checkpoint(args.checkpoint)  # a local folder or a bucket URI
    except CheckpointError as err:
        raise UserError(f"checkpoint: {err}") from err
    arch, state = torchvision_state_dict(payload)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UserError(f"--output: no such folder {folder}")
    torch.save(state, args.output)
    load = (f"timm.create_model('{arch}')" if args.format == "timm" else f"torchvision.models.{arch}()")
    print(f"wrote {args.output}: {load}.load_state_dict(torch.load('{args.output}'), strict=True); "
          f"fc is untrained: replace it for your task", file=out)
    return 0
