"""The local Ray a command starts: what its jobs' processes find in their environment."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from orchestrator.train import session


def _started(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``start_local_ray(**kwargs)`` passes to ``ray.init``."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    session.start_local_ray(num_cpus=2, object_store_mb=100, **kwargs)
    return seen


def test_a_local_ray_runs_trainings_without_the_preemption_watcher_unless_the_environment_asks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(session.PREEMPTION_WATCHER, raising=False)
    for dashboard in (False, True):
        env_vars = _started(monkeypatch, dashboard=dashboard)["runtime_env"]["env_vars"]
        assert env_vars[session.PREEMPTION_WATCHER] == "0"
        assert ("RAY_API_SERVER_ADDRESS" in env_vars) is dashboard
    monkeypatch.setenv(session.PREEMPTION_WATCHER, "1")
    assert _started(monkeypatch)["runtime_env"]["env_vars"][session.PREEMPTION_WATCHER] == "1"


def test_the_dashboards_address_is_its_own_port_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _started(monkeypatch, dashboard=True)
    assert seen["include_dashboard"] is True and seen["dashboard_host"] == "127.0.0.1"
    assert seen["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{seen['dashboard_port']}"
    assert seen["num_cpus"] == 2 and seen["object_store_memory"] == 100 * 2**20
