"""Odd or hostile `/v1/stats` answers and agent restarts through `outpost usage`: refused whole or kept printable, never a traceback, no run lost."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import select

from desktop_app.cli import main as outpost
from desktop_app.core import devices
from desktop_app.core.device_answers import UnreadableAnswerError
from desktop_app.core.models import UsageSample
from desktop_app.core.workspace import Workspace
from device_agent.stats import UsageStats
from tests.device_agent.conftest import AgentThread
from tests.device_agent.desktop_helpers import paired_device


def _serve_stats(agent: AgentThread, models: Any) -> None:
    real = agent.service.stats.report

    def report(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = real(*args, **kwargs)
        out["models"] = models
        return out

    agent.service.stats.report = report  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "models",
    [
        ["m"],  # models as a list
        {"m": "not a dict"},  # a model entry as a string
        {"m": {"requests": "lots"}},  # a count as text
        {"m": {"requests": math.nan}},  # NaN (the agent's JSON allows it)
        {"m": {"requests": 2**70}},  # a count beyond 64 bits
        {"m": {"requests": 1, "latency_ms": {"p50": "fast"}}},
        {"m": {"requests": 1, "latency_ms": [1, 2]}},
        {"m": {"requests": 1, "versions": ["1"]}},
    ],
    ids=[
        "list",
        "entry-str",
        "count-text",
        "count-nan",
        "count-huge",
        "p50-text",
        "lat-list",
        "versions-list",
    ],
)
def test_hostile_stats_give_a_typed_error_not_a_traceback(
    agent: AgentThread, ws: Workspace, models: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = paired_device(ws, agent)
    _serve_stats(agent, models)
    code = outpost(["usage", "--device", device_id, "--workspace", str(ws.root)])
    assert code == 1
    assert "Traceback" not in capfd.readouterr().err


def test_a_latency_that_is_no_number_refuses_the_whole_answer(
    agent: AgentThread, ws: Workspace
) -> None:
    """NaN (which the agent's JSON may carry) would be stored as NULL in a NOT NULL column:
    the answer is refused with a typed error, and nothing of it is stored."""
    device_id = paired_device(ws, agent)
    _serve_stats(
        agent,
        {
            "a": {"requests": 2, "latency_ms": {"p50": 1.0}},
            "m": {"requests": 3, "latency_ms": {"p50": math.nan, "p99": math.inf}},
        },
    )
    with pytest.raises(UnreadableAnswerError, match="sent usage of m this desktop cannot read"):
        devices.pull_usage(ws, device_id)
    with ws.session() as s:
        assert s.scalars(select(UsageSample)).all() == []  # not even model a's


def test_negative_counts_are_not_stored(agent: AgentThread, ws: Workspace) -> None:
    device_id = paired_device(ws, agent)
    _serve_stats(agent, {"m": {"requests": -1000, "errors": -5}})
    try:
        devices.pull_usage(ws, device_id)
    except Exception:
        return
    with ws.session() as s:
        sample = s.scalars(select(UsageSample)).one()
    assert sample.requests >= 0 and sample.errors >= 0


def test_device_text_in_usage_is_sanitised_before_stored_and_printed(
    agent: AgentThread, ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    device_id = paired_device(ws, agent)
    evil = "\x1b]0;owned\x07\x1b[2J"
    _serve_stats(
        agent,
        {evil + "m" * 5000: {"requests": 1, "version": evil + "v", "runtime": evil + "r" * 500}},
    )
    code = outpost(["usage", "--device", device_id, "--workspace", str(ws.root)])
    out = capfd.readouterr().out
    assert code in (0, 1)
    assert "\x1b" not in out and "\x07" not in out
    with ws.session() as s:
        for u in s.scalars(select(UsageSample)):
            assert len(u.model_name) <= 128 and (u.runtime is None or len(u.runtime) <= 64)


def test_a_restart_with_an_earlier_clock_is_not_lost(agent: AgentThread, ws: Workspace) -> None:
    """A device without an RTC restarts with its clock behind the last run's start: the new
    run's usage must still be pulled (and the first run's kept)."""
    device_id = paired_device(ws, agent)
    first = UsageStats(clock=lambda: 2_000_000_000.0)
    first.record("m", 5.0, "1")
    first.record("m", 5.0, "1")
    agent.service.stats = first
    assert devices.pull_usage(ws, device_id)[0]["requests"] == 2
    # restart: a new run whose clock starts earlier (no RTC; NTP not reached yet)
    second = UsageStats(clock=lambda: 1_000_000_000.0)
    for _ in range(3):
        second.record("m", 5.0, "1")
    agent.service.stats = second
    rows = devices.pull_usage(ws, device_id)
    assert rows and rows[0]["requests"] == 5
