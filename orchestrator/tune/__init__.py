"""``simclr tune``: a Ray Tune sweep whose every trial is a full training."""

from orchestrator.tune.report import TrialSummary, best_trial, markdown_table, results_rows
from orchestrator.tune.resources import plan_resources
from orchestrator.tune.space import param_space, parse_dimension, parse_search, validate_space
from orchestrator.tune.spec import SweepSpec
from orchestrator.tune.sweep import (
    TuneOptions,
    metric_and_mode,
    prepare_sweep,
    resume_sweep,
    run_sweep,
)
from orchestrator.tune.trial import LastEpochASHA, build_search_alg

__all__ = [
    "LastEpochASHA",
    "SweepSpec",
    "TrialSummary",
    "TuneOptions",
    "best_trial",
    "build_search_alg",
    "markdown_table",
    "metric_and_mode",
    "param_space",
    "parse_dimension",
    "parse_search",
    "plan_resources",
    "prepare_sweep",
    "results_rows",
    "resume_sweep",
    "run_sweep",
    "validate_space",
]
