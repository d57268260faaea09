"""``simclr``: the command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from orchestrator.cli.flags import EXIT_USER_ERROR, Parser, config_flags, config_overrides, ray_flags, ray_options
from orchestrator.errors import NonFiniteLossError, UserError
from orchestrator.secrets import redact, redact_values
from workloads.config import ConfigError

COMMAND_MODULES: tuple[str, ...] = ("orchestrator.cli.jobs", "orchestrator.cli.tune", "orchestrator.cli.runs",
                                     "orchestrator.cli.export")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="simclr", description="SimCLR pretraining on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="pretrain one model (Ray Data -> Ray Train DDP -> MLflow)")
    config_flags(p)
    ray_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Ray Data's own output on the terminal (default: in the run's log file)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="kNN and linear probe of a checkpoint, logged to its MLflow run")
    p.add_argument("checkpoint", help="a checkpoint folder (holding state.pt), local or in a bucket (s3://...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override data.* / eval.* fields of the checkpoint's config, e.g. the dataset")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the run's)")
    ray_flags(p)
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Ray Data's own output on the terminal (default: in a log file of the run)")
    p.set_defaults(func=cmd_eval)

    # Each further command group lives in its own module with a `register(sub)` function.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator.config_io import resolve

    # fail fast, before heavy imports
    cfg = resolve(args.recipe, args.config, args.set, config_overrides(args), args.method)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(redact_values(cfg.to_dict()), sort_keys=False), end="", file=out)
        return 0
    from orchestrator.train.driver import train

    outcome = train(cfg, ray_options(args), quiet=not args.verbose)
    if args.json:
        print(outcome.to_json(), file=out)
    else:
        print(f"MLflow run:  {outcome.run_id} ({outcome.run_name}) at {redact(outcome.tracking_uri)}", file=out)
        print(f"checkpoint:  {outcome.checkpoint}", file=out)
        if outcome.registered:
            print(f"registered:  {outcome.registered} (alias {cfg.tracking.register_alias})", file=out)
        for key, value in sorted(outcome.metrics.items()):
            print(f"{key:>18}: {value:.4f}", file=out)
        if not outcome.complete:
            print(f"stopped before the last epoch; run again with --name {outcome.run_name} to go on", file=out)
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from orchestrator.evaluation.driver import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.set, args.tracking_uri, ray_options(args),
                                 quiet=not args.verbose)
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


def training_failed(err: Exception) -> bool:
    """Ray Train's report that the workers or its controller failed (a worker error, a lost node past
    ``train.max_failures``), or a failure a restart would only repeat: exit 1, not a traceback."""
    if isinstance(err, NonFiniteLossError):
        return True
    if "ray.train" not in sys.modules:  # nothing trained in this process
        return False
    from ray.train.v2.api.exceptions import TrainingFailedError

    return isinstance(err, TrainingFailedError)


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.interrupt import exit_code, sigterm_as_interrupt

    # MLflow's usage telemetry sets and removes a variable of os.environ from a background thread; an
    # HTTP request to a tracking server that reads the environment at that moment fails ("API request to
    # .../runs/log-batch failed with exception '_MLFLOW_TELEMETRY_SESSION_ID'"). Off unless the user set
    # it; the local Ray's workers inherit this environment.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow announces at INFO that it creates a new SQLite store's tables: two lines of its own before
    # the run's header, which already says where the run logs
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
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
        if not training_failed(err):
            raise  # a bug: keep the traceback
        from orchestrator.train.run import failure_message

        print(f"simclr: training failed: {redact(failure_message(err))} (worker logs above)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"simclr: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return exit_code()

