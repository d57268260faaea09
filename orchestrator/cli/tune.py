"""``simclr tune``: a Ray Tune sweep whose trials are ``simclr train`` runs (see orchestrator.tune)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, TextIO

from orchestrator.cli.flags import config_flags, config_overrides, ray_flags, ray_options
from orchestrator.config_io import load_yaml, resolve
from workloads.config import Config

EXIT_NO_RESULT = 1
EXIT_INTERRUPTED = 130


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tune", help="hyperparameter sweep: Ray Tune trials that are simclr train runs, tracked as MLflow children",
        description="Search hyperparameters with Ray Tune. Every trial is one `simclr train` run (a child of the "
                    "sweep's MLflow run). --name names the sweep; --set and --config give the trials' base config.")
    config_flags(p)
    ray_flags(p)
    p.add_argument("--search", action="append", default=[], metavar="KEY=EXPR",
                   help="a searched field: uniform(a,b), loguniform(a,b), randint(a,b), choice(v1,v2,...) (sampled) "
                        "or grid(v1,v2,...) (every value), e.g. --search loss.temperature=loguniform(0.05,1.0) "
                        "(repeatable; also a search: section in --config; default: loss.temperature and aug.strength)")
    p.add_argument("--num-samples", type=int, default=4,
                   help="trials to sample (with grid(...) values: samples per grid point; default 4)")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                   help="asha: stop weak trials early at epoch rungs (default); none: run every trial to the end")
    p.add_argument("--search-alg", choices=["random", "grid", "optuna"], default="random",
                   help="random sampling (default), grid (every choice/grid value), or optuna (TPE; needs optuna)")
    p.add_argument("--metric", default="", help="metric to optimise (default: knn_top1 with labels, else loss)")
    p.add_argument("--mode", choices=["min", "max"], default=None, help="default: max for *top1, else min")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped (1)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/N of trials at each rung (2)")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (default: derived from the cluster's CPUs/GPUs, keeping CPUs for Ray Data)")
    p.add_argument("--prepare-per-trial", action="store_true",
                   help="each trial reads and decodes the data itself (default: once for the sweep, shared by "
                        "every trial, unless a data.* key or train.seed is searched)")
    p.add_argument("--resume", default="", metavar="NAME",
                   help="go on with an interrupted sweep (its storage: train.storage_path, default ./simclr_runs)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Ray Tune's own output on the terminal (default: in the sweep's log file)")
    p.set_defaults(func=cmd_tune)


def resolve_with_search(recipe_name: str, config_path: str, sets: Sequence[str],
                        extra: dict[str, Any], method_name: str = "") -> tuple[Config, list[str]]:
    """``config_io.resolve`` for a file that may also hold a ``search:`` section (not part of Config)."""
    from orchestrator.tune.space import search_from_yaml

    file_data = load_yaml(config_path) if config_path else {}
    search = search_from_yaml(file_data.pop("search", None))
    return resolve(recipe_name, config_path, sets, extra, method_name, file_data), search


def cmd_tune(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator import tune
    from orchestrator.train.run import storage_path

    cfg, file_search = resolve_with_search(args.recipe, args.config, args.set, config_overrides(args),
                                            args.method)
    if args.resume:
        outcome = tune.resume_sweep(args.resume, storage_path(cfg), ray_options(args), quiet=not args.verbose)
    else:
        opts = tune.TuneOptions(
            search=args.search, num_samples=args.num_samples, scheduler=args.scheduler, search_alg=args.search_alg,
            metric=args.metric, mode=args.mode or "", grace_period=args.grace_period,
            reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent,
            share_data=not args.prepare_per_trial)
        outcome = tune.run_sweep(cfg, opts, ray_options(args), file_search, quiet=not args.verbose)
    if args.json:
        print(json.dumps(outcome.to_dict(), sort_keys=True, default=str), file=out)
    else:
        _print_outcome(outcome, out)
    if outcome.interrupted:
        from orchestrator.interrupt import exit_code

        return exit_code()  # 130 after Ctrl-C, 143 after SIGTERM
    return 0 if outcome.best is not None else EXIT_NO_RESULT


def _print_outcome(outcome: Any, out: TextIO) -> None:
    from orchestrator import tune

    keys = list(outcome.trials[0].params) if outcome.trials else []
    counts: dict[str, int] = {}
    for t in outcome.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    print(f"sweep:       {outcome.name} (MLflow parent run {outcome.parent_run_id} at {outcome.tracking_uri})",
          file=out)
    print(f"trials:      {len(outcome.trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
          file=out)
    rows = [{k: v for k, v in r.items() if k not in ("run_id", "trial_id")}
            for r in tune.results_rows(outcome, keys)]
    print(tune.markdown_table(rows), file=out, end="")
    if outcome.interrupted:
        print(f"interrupted: resume with  simclr tune --resume {outcome.name}", file=out)
    best = outcome.best
    if best is None:
        print(f"no trial reported {outcome.metric}; see the errors above", file=out)
        return
    shown = " ".join(f"{k}={v}" for k, v in best.params.items())
    print(f"best trial:  {best.run_name}  {outcome.metric}={best.metrics[outcome.metric]:.4f}  {shown}", file=out)
    print(f"train it:    {outcome.train_command}", file=out)
    if outcome.registered:
        print(f"registered:  {outcome.registered} (the best trial's encoder)", file=out)
    for note in outcome.notes:
        print(f"note:        {note}", file=out)
