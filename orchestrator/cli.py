"""``simclr``: the command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from orchestrator.errors import UserError
from orchestrator.secrets import redact, redact_values
from workloads.config import ConfigError
from workloads.methods import METHODS

EXIT_USER_ERROR = 2
COMMAND_MODULES: tuple[str, ...] = ("orchestrator.jobs_cli", "orchestrator.tune_cli", "orchestrator.runs_cli",
                                     "orchestrator.export")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USER_ERROR, f"simclr: error: {message} (see {self.prog} --help)\n")


def config_flags(p: argparse.ArgumentParser) -> None:
    recipes = {name: None for m in METHODS.values() for name in m.recipes}  # ordered union
    p.add_argument("--method", default="", choices=[*METHODS, ""], metavar="NAME",
                   help=f"self-supervised method: {', '.join(METHODS)} (default: simclr, or the YAML's method:)")
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


def ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--object-store-mb", type=int, default=0,
                   help="object store of the local Ray in MiB (default: 30%% of RAM, at most 4096)")
    p.add_argument("--json", action="store_true", help="print only one JSON object on stdout at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simclr", description="SimCLR pretraining on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="pretrain one model (Ray Data -> Ray Train DDP -> MLflow)")
    config_flags(p)
    ray_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Ray Data's own output on the terminal (default: in the run's log file)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="kNN and linear probe of a checkpoint, logged to its MLflow run")
    p.add_argument("checkpoint", help="a checkpoint folder (holding state.pt)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override data.* / eval.* fields of the checkpoint's config, e.g. the dataset")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the run's)")
    ray_flags(p)
    p.set_defaults(func=cmd_eval)

    # Each further command group lives in its own module with a `register(sub)` function.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"train.workers": args.workers, "train.use_gpu": args.use_gpu, "train.epochs": args.epochs,
             "train.name": args.name, "tracking.uri": args.tracking_uri}
    return {k: v for k, v in flags.items() if v is not None}


def ray_options(args: argparse.Namespace) -> Any:
    from orchestrator.train import RayOptions

    return RayOptions(address=args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb)


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator.config_io import resolve

    # fail fast, before heavy imports
    cfg = resolve(args.recipe, args.config, args.set, config_overrides(args), args.method)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(redact_values(cfg.to_dict()), sort_keys=False), end="", file=out)
        return 0
    from orchestrator.train import train

    outcome = train(cfg, ray_options(args), quiet=not args.verbose)
    if args.json:
        print(outcome.to_json(), file=out)
    else:
        print(f"MLflow run:  {outcome.run_id} ({outcome.run_name}) at {redact(outcome.tracking_uri)}", file=out)
        print(f"checkpoint:  {outcome.checkpoint}", file=out)
        for key, value in sorted(outcome.metrics.items()):
            print(f"{key:>18}: {value:.4f}", file=out)
        if not outcome.complete:
            print(f"stopped before the last epoch; run again with --name {outcome.run_name} to go on", file=out)
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from orchestrator.evaluate_checkpoint import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.set, args.tracking_uri, ray_options(args))
    if args.json:
        print(json.dumps(result, sort_keys=True), file=out)
    else:
        for key, value in sorted(result["metrics"].items()):
            print(f"{key:>18}: {value:.4f}", file=out)
        print(f"logged to MLflow run {result['run_id']}", file=out)
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[TextIO]:
    """Send everything (Ray, MLflow, our progress) to stderr at the fd level; yield the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(saved, "w", closefd=True)
    try:
        yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        real.flush()
        real.close()


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.interrupt import exit_code, sigterm_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    sigterm_as_interrupt()  # SIGTERM (ray job stop, Kubernetes, Slurm) is a clean stop, like Ctrl-C
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        if getattr(args, "json", False):
            with _stdout_to_stderr() as real:
                return func(args, real)
        return func(args, sys.stdout)
    except (ConfigError, UserError) as err:
        print(f"simclr: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:
        if type(err).__name__ not in ("TrainingFailedError", "WorkerGroupError", "ControllerError"):
            raise  # a bug: keep the traceback
        from orchestrator.train import failure_message

        print(f"simclr: training failed: {redact(failure_message(err))} (worker logs above)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"simclr: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return exit_code()


if __name__ == "__main__":
    sys.exit(main())
