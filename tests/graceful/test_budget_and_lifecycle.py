"""The shutdown budget check and what readiness answers in each phase."""

from __future__ import annotations

import logging
import signal

import pytest

from graceful import Lifecycle, Phase, ShutdownConfig, budget_problems
from graceful.phases import report_exit_at_once


def test_budget_fits() -> None:
    config = ShutdownConfig(quiet_period=1, quiet_max=10, drain_timeout=8, grace_period=30)
    assert budget_problems(config, {"flush": 5}) == []


def test_budget_that_does_not_fit_names_every_phase() -> None:
    config = ShutdownConfig(quiet_period=1, quiet_max=20, drain_timeout=8, grace_period=30)
    (problem,) = budget_problems(config, {"flush": 5})
    assert "33 s (delay 20 + drain 8 + flush 5)" in problem
    assert "only 29 s remain before SIGKILL" in problem


def test_unbounded_drain_is_a_budget_problem() -> None:
    problems = budget_problems(ShutdownConfig(drain_timeout=None), {})
    assert any("drain has no timeout" in p for p in problems)


def test_readiness_flips_at_sigterm_only_with_the_switch() -> None:
    """1. Serving: ready. 2. SIGTERM recorded: ready only without the flip. 3. Once the
    listener closes: never ready."""
    for flip, ready_after_sigterm in ((True, False), (False, True)):
        lifecycle = Lifecycle(ShutdownConfig(readiness_flip=flip))
        assert not lifecycle.ready  # starting
        lifecycle.phase = Phase.SERVING
        assert lifecycle.ready
        lifecycle.record_shutdown_request(signal.SIGTERM)
        assert lifecycle.ready is ready_after_sigterm
        lifecycle.phase = Phase.DRAINING
        assert not lifecycle.ready


def test_deadline_and_remaining_follow_the_budget() -> None:
    lifecycle = Lifecycle(ShutdownConfig(grace_period=10, safety_margin=1, enforce_budget=True))
    assert lifecycle.deadline() is None
    assert lifecycle.remaining(5) == 5
    lifecycle.record_shutdown_request(signal.SIGTERM)
    first = lifecycle.shutdown_requested_at
    lifecycle.record_shutdown_request(signal.SIGINT)  # a second signal does not move it
    assert lifecycle.shutdown_requested_at == first
    remaining = lifecycle.remaining(None)
    assert remaining is not None and 8.5 < remaining <= 9
    assert lifecycle.remaining(3) == 3


def test_every_adapters_forced_exit_says_the_apps_last_words_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A Lifecycle with a before-exit action (it logs, as the writer's held-back
    losses do) and an unwritten count of 7. 2. The forced exit's report, shared by the
    uvicorn and hypercorn adapters, runs the action, then logs the count, in that order."""
    lifecycle = Lifecycle(ShutdownConfig())
    log = logging.getLogger("graceful.test")
    lifecycle.before_forced_exit(lambda: log.error("Lost 9 operations (held back)"))
    lifecycle.report_unwritten("operations", lambda: 7)
    with caplog.at_level(logging.ERROR):
        report_exit_at_once(lifecycle, "third signal, SIGINT", log)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "Lost 9 operations (held back)"
    assert messages[1].startswith("Exiting at once (third signal, SIGINT)")
    assert "left unwritten: 7 operations" in messages[1]
