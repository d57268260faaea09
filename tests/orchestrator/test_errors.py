"""Failures told apart by their class inside Ray's wrappers (orchestrator/errors.py), the one line a
failed run records (orchestrator/train/run.py: failure_message), and the CLI's exit-1 case. Ray's
exception objects are built here as Ray builds them; no Ray runs."""

from __future__ import annotations

import pytest
from ray import cloudpickle
from ray.exceptions import RayTaskError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from orchestrator.cli.main import training_failed
from orchestrator.errors import BadImageError, NonFiniteLossError, UserError, our_error
from orchestrator.train.run import failure_message

TRACEBACK = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"


def task_error(cause: Exception) -> RayTaskError:
    """What ``ray.get`` raises for a task that raised ``cause``: an instance of RayTaskError and of the
    cause's class, whose text is the whole remote traceback."""
    text = TRACEBACK + f"{type(cause).__module__}.{type(cause).__name__}: {cause}"
    return RayTaskError("chunk_views", text, cause).as_instanceof_cause()


def test_a_worker_groups_non_finite_loss_is_found_by_class() -> None:
    loss = NonFiniteLossError("non-finite loss (nan) at epoch 2, step 1; lower optim.lr")
    err = WorkerGroupError("[Rank 0]\n" + TRACEBACK + f"NonFiniteLossError: {loss}", {0: loss})
    assert our_error(err) is loss
    assert failure_message(err) == str(loss)


def test_the_original_is_preferred_to_rays_copy_that_prints_the_traceback() -> None:
    bad = BadImageError("unreadable image /d/cat/x.png: broken; remove it, or set data.bad_images=skip")
    wrapped = task_error(bad)
    assert isinstance(wrapped, BadImageError)  # Ray's copy is one of ours too...
    assert "\n" in str(wrapped)  # ...but its text is the remote traceback
    err = WorkerGroupError("worker failed", {1: wrapped})
    assert our_error(err) is bad
    assert failure_message(err) == str(bad)


def test_a_controllers_failure_and_a_cause_chain_are_followed() -> None:
    user = UserError("train.workers=4 is more than the cluster's 2 CPUs; lower train.workers")
    assert our_error(ControllerError(user)) is user
    try:
        try:
            raise user
        except UserError as inner:
            raise RuntimeError("while starting") from inner
    except RuntimeError as outer:
        assert our_error(outer) is user


def test_the_message_of_an_error_that_is_none_of_ours_is_its_last_line() -> None:
    err = WorkerGroupError("[Rank 0]\n" + TRACEBACK + "ValueError: shapes differ", {0: ValueError("shapes differ")})
    assert our_error(err) is None
    assert failure_message(err) == "ValueError: shapes differ"
    assert failure_message(RuntimeError("")) == "RuntimeError"


def test_a_pickled_error_keeps_its_class() -> None:
    """Tune pickles a failed trial's error (cloudpickle: Ray's copy is a class made at run time); the
    trial's summary reads it back."""
    loss = NonFiniteLossError("non-finite loss (inf) at epoch 1, step 3")
    err = cloudpickle.loads(cloudpickle.dumps(task_error(WorkerGroupError("worker failed", {0: loss}))))
    assert failure_message(err) == str(loss)


@pytest.mark.parametrize(("err", "failed"), [
    (WorkerGroupError("worker failed", {0: ValueError("x")}), True),
    (ControllerError(RuntimeError("placement group removed")), True),
    (NonFiniteLossError("non-finite loss"), True),
    (RuntimeError("a bug"), False),
    (KeyError("a bug"), False),
])
def test_the_cli_reports_training_failures_and_keeps_tracebacks_for_bugs(err: Exception, failed: bool) -> None:
    assert training_failed(err) is failed
