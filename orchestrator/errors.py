"""Our exceptions, and how one is found inside the wrappers Ray puts around it.

A user error reaches the CLI as one line and exit code 2. A failure found while training (a non-finite
loss) fails the run at once: a restart would only repeat it. Ray carries an error raised on a worker
inside its own: ``RayTaskError`` (``cause``), Ray Train's ``WorkerGroupError`` (``worker_failures``, per
rank) and ``ControllerError`` (``controller_failure``); ``our_error`` walks them and tells ours apart by
class, never by the text of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator


class UserError(Exception):
    """Bad input the user can fix: a missing path, an unknown dataset, an impossible resource ask."""


class BadImageError(UserError):
    """An image that cannot be decoded, under ``data.bad_images=fail``."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


OURS = (UserError, NonFiniteLossError)


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every error it wraps, outermost first (each once)."""
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    pending: list[BaseException] = [err]
    seen: set[int] = set()
    while pending:
        e = pending.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner: list[BaseException | None] = [e.__cause__]
        if isinstance(e, WorkerGroupError):
            inner = [*e.worker_failures.values(), *inner]
        if isinstance(e, ControllerError):
            inner = [e.controller_failure, *inner]
        if isinstance(e, RayTaskError):
            inner = [e.cause, *inner]
        pending.extend(i for i in inner if i is not None)


def our_error(err: BaseException) -> Exception | None:
    """The first of our exceptions in ``err`` or what it wraps, as raised: not Ray's copy of it, which is
    an instance of our class too (``RayTaskError.as_instanceof_cause``) but prints the whole traceback."""
    from ray.exceptions import RayError

    for e in causes(err):
        if isinstance(e, OURS) and not isinstance(e, RayError):
            return e
    return None
