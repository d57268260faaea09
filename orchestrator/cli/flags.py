"""The flags every ``simclr`` command shares, and the parser that turns argparse's errors into one line."""

from __future__ import annotations

import argparse
from typing import Any

from workloads.methods import DEFAULT_METHOD, METHODS

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USER_ERROR, f"simclr: error: {message} (see {self.prog} --help)\n")


def config_flags(p: argparse.ArgumentParser) -> None:
    recipes = {name: None for m in METHODS.values() for name in m.recipes}  # ordered union
    p.add_argument("--method", default="", choices=[*METHODS, ""], metavar="NAME",
                   help=f"self-supervised method: {', '.join(METHODS)} "
                        f"(default: {DEFAULT_METHOD}, or the YAML's method:)")
    p.add_argument("--recipe", default="", choices=[*recipes, ""], metavar="NAME",
                   help=f"the method's named recipe to start from: {', '.join(recipes)} "
                        f"(default: digits, or the YAML's recipe:)")
    p.add_argument("--config", default="", metavar="FILE", help="YAML file of config sections (see README)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set loss.temperature=0.2 (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="train workers (train.workers)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker (train.use_gpu)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs")
    p.add_argument("--name", default=None, help="run name (train.name); the same name resumes the run")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="register the final encoder (a sweep's: its best trial's) as a new version of this model "
                        "in MLflow's Model Registry, alias tracking.register_alias (default candidate)")


def ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--object-store-mb", type=int, default=0,
                   help="object store of the local Ray in MiB (default: 30%% of RAM, at most 4096)")
    p.add_argument("--json", action="store_true", help="print only one JSON object on stdout at the end")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"train.workers": args.workers, "train.use_gpu": args.use_gpu, "train.epochs": args.epochs,
             "train.name": args.name, "tracking.uri": args.tracking_uri, "tracking.register": args.register}
    return {k: v for k, v in flags.items() if v is not None}


def ray_options(args: argparse.Namespace) -> Any:
    from orchestrator.train.session import RayOptions

    return RayOptions(address=args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb)
