"""The trial: a Tune function trainable that trains the sweep's base config with the trial's values, and the
scheduler (ASHA on epochs) and search algorithm that drive the trials."""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from orchestrator.data.prepare import PreparedData, node_object_store, prepare
from orchestrator.train.driver import train
from orchestrator.train.session import quiet_ray_data
from orchestrator.tune.resources import TRIAL_CPU
from orchestrator.tune.spec import SweepSpec
from workloads.config import Config


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers -> Python (Config takes int, float, str, bool, lists)."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        return value.item()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# The function's name is the trainable's registered name in Tune's saved experiment state: renaming it breaks
# `simclr tune --resume` of every existing sweep (Tuner.restore needs a trainable of the same name).
def simclr_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One Tune trial: the sweep's base config with this trial's values, trained by ``train()``.

    Runs in the trial's actor: Ray is already up, so ``train()`` uses it; the TorchTrainer's per-epoch
    reports reach Tune through ``TuneReportCallback``.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    values = {k: plain(v) for k, v in config.items()}
    cfg = Config.from_saved(spec["base"]).replace(
        {**values, "train.name": trial_run_name(spec["name"], trial_id), "train.storage_path": spec["trials_storage"],
         "tracking.register": ""})  # the sweep registers its best trial's encoder, not every trial's
    if spec.get("quiet"):  # no Ray Data progress bars: their last lines would reach the terminal at exit
        quiet_ray_data()
    train(cfg, parent_run_id=spec["parent_run_id"], callbacks=[TuneReportCallback()], prepared=spec.get("data"),
          listings=spec.get("listings", ""))


def make_trainable(spec: SweepSpec, quiet: bool = False, data: PreparedData | None = None) -> Any:
    """The same trainable for a new sweep and for ``Tuner.restore`` (its name must match). ``data``: the
    sweep's prepared dataset, which every trial then trains on instead of reading the source again."""
    payload = {"name": spec.name, "base": spec.base, "parent_run_id": spec.parent_run_id,
               "trials_storage": spec.trials_storage, "quiet": quiet, "data": data, "listings": spec.path}
    return tune.with_resources(tune.with_parameters(simclr_trial, spec=payload), {"cpu": TRIAL_CPU})


def shares_data(spec: SweepSpec) -> bool:
    """Whether every trial trains on the same prepared data: no searched key is a data setting or the
    seed (which draws the held-out split)."""
    return spec.share_data and not any(key.startswith("data.") or key == "train.seed" for key in spec.search)


def shared_data(spec: SweepSpec, client: Any, quiet: bool = False) -> PreparedData | None:
    """The sweep's data, read and decoded once in the sweep's driver for all its trials: the
    decoded rows stay in the object store, owned by this driver, and each trial streams its own views
    from them. None (each trial prepares its own) when ``shares_data`` is false. The time it took is
    logged on the parent run (``prepare_seconds``), as each trial logs its own. ``quiet``: the datasets
    carry this process's Ray Data context into the trials, so no progress bars there either."""
    if not shares_data(spec):
        return None
    if quiet:
        quiet_ray_data()
    base = Config.from_saved(spec.base)
    start = time.perf_counter()
    data = prepare(base.data, base.train.seed, node_object_store(),
                   listings=spec.path)  # the sweep's folder keeps the listings: a resumed sweep lists nothing
    client.log_metric(spec.parent_run_id, "prepare_seconds", time.perf_counter() - start)
    return data


class LastEpochASHA(ASHAScheduler):
    """ASHA on epochs that never stops a trial at its last epoch.

    Ray's ASHA stops every trial that reaches ``max_t``; here that would kill the trial while
    ``train()`` writes its final artifacts and ends its run, so a trial at its last epoch goes on and
    ends by itself.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__(time_attr="epoch", max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self.last_epoch = max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("epoch", 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        action: str = super().on_trial_result(tune_controller, trial, result)
        return action


def trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def build_scheduler(spec: SweepSpec) -> TrialScheduler:
    if spec.scheduler == "asha":
        return LastEpochASHA(spec.epochs, spec.grace_period, spec.reduction_factor)
    return FIFOScheduler()


def build_search_alg(spec: SweepSpec) -> Any:
    """Seeded by ``train.seed`` (the same sweep samples the same values) and limited to the planned
    number of concurrent trials: Tune sees only each trainable's 0.1 CPU and would start them all."""
    seed = int(spec.base["train"]["seed"])
    limit = int(spec.resources.get("max_concurrent", 0))
    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=limit) if limit else OptunaSearch(seed=seed)
    return BasicVariantGenerator(max_concurrent=limit, random_state=seed)  # random samples, grid values crossed

