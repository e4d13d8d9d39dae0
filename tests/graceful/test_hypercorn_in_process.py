"""`graceful-hypercorn` inside the pytest process: its entry function on a real loopback
port, real httpx clients and real signals to this process. The forced exit is recorded
instead of ending pytest. The same cases run as child processes in test_hypercorn.py."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypercorn.config import Config

from graceful import Lifecycle, Phase, ShutdownConfig, current_lifecycle
from graceful import hypercorn as adapter
from graceful.hypercorn import HypercornRunner, build_parser, main
from tests.graceful.apps import echo
from tests.graceful.in_process import (
    Slow,
    listening_or_ended,
    process_state_restored,
    refused,
    run_with_signals_guarded,
    served,
)
from tests.support import wait_until

ECHO = "tests.graceful.apps.echo"


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The forced exits the runner asked for, instead of ending pytest; also puts back the
    process state graceful-hypercorn sets up (logging, module path, lifecycle)."""
    recorded: list[int] = []
    monkeypatch.setattr(HypercornRunner, "hard_exit", staticmethod(recorded.append))
    for name in list(os.environ):
        if name.startswith("GRACEFUL_"):
            monkeypatch.delenv(name)
    echo.release.set()
    with process_state_restored("hypercorn.error", "hypercorn.access"):
        yield recorded
    echo.release.set()


class Run:
    """graceful-hypercorn APP --bind 127.0.0.1:PORT in this thread; the scenario in a
    thread once the port answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.signalled_at = 0.0

    def signal(self, sig: int) -> None:
        if not self.signalled_at:
            self.signalled_at = time.monotonic()
        os.kill(os.getpid(), sig)

    def __call__(self, argv: list[str], scenario: Callable[[Run], None]) -> tuple[int, float]:
        failures: list[BaseException] = []

        def drive() -> None:
            try:
                listening_or_ended("127.0.0.1", self.port)
                scenario(self)
            except BaseException as exc:
                failures.append(exc)
                echo.release.set()
                if not self.signalled_at and not served.is_set():  # a server to stop
                    self.signal(signal.SIGTERM)

        code = run_with_signals_guarded(lambda: main(argv), drive)
        took = time.monotonic() - self.signalled_at
        if failures:
            raise failures[0]
        return code, took

    def bind(self, app: str = "app") -> list[str]:
        return [f"{ECHO}:{app}", "--bind", f"127.0.0.1:{self.port}"]


def test_sigterm_flips_readiness_keeps_serving_then_drains(
    port: int,
    exits: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. graceful-hypercorn with a 0.3 s quiet period and access log. 2. /ready is
    graceful's 200; the app sees the phase as serving; a 1 s request starts. 3. SIGTERM:
    /ready 503 at once, other requests still served in the delay phase with Connection:
    close. 4. The listener closes after the quiet period; the slow request ends 200.
    5. main returns 0, each phase logged, nothing forced."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0.3")
    seen: dict[str, object] = {}

    def scenario(run: Run) -> None:
        with httpx.Client(base_url=run.url, timeout=5) as client:
            ready = client.get("/ready")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            assert client.get("/echo").text.endswith("phase=serving")
            # the request's body reaches the app through graceful's wrapping
            assert client.post("/body", content=b"x" * 70_000).text == "x" * 70_000
            slow = Slow(f"{run.url}/work?seconds=1")
            wait_until(lambda: current_lifecycle().in_flight == 1, 5, what="it to run")
            run.signal(signal.SIGTERM)
            wait_until(lambda: client.get("/ready").status_code == 503, 2, what="readiness")
            during = client.get("/echo")
            assert during.text.endswith("phase=delay"), during.text
            assert during.headers["connection"] == "close"
        wait_until(lambda: refused("127.0.0.1", run.port), 3, what="listener to close")
        seen["closed"] = time.monotonic() - run.signalled_at
        seen["slow"] = slow.result()

    code, took = Run(port)([*Run(port).bind(), "--access-log"], scenario)
    assert code == 0
    assert exits == []
    slow = seen["slow"]
    assert isinstance(slow, httpx.Response) and (slow.status_code, slow.text) == (200, "done")
    assert 0.3 <= float(seen["closed"]) < 1.0  # type: ignore[arg-type]
    assert took < 2.0
    captured = capsys.readouterr()
    err = captured.err
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO graceful.hypercorn: Shutdown started "
        r"\(signal SIGTERM\)$",
        err,
        re.MULTILINE,
    ), err
    assert "INFO graceful.hypercorn: Shutdown phase delay took 0." in err
    assert "Closing the listener; running requests get 10.00 s" in err
    finished = re.search(r"INFO graceful.hypercorn: Shutdown finished in (\d+\.\d\d) s$", err, re.M)
    assert finished and 0.3 <= float(finished.group(1)) <= took + 0.05, err
    assert current_lifecycle().phase is Phase.STOPPED
    assert "cancelled by hypercorn" not in err  # no request was cut
    assert '"GET /echo 1.1" 200' in captured.out  # the access log, on stdout
    assert "Shutdown budget" not in err and "Exiting at once" not in err
    assert "Still receiving requests" not in err  # the quiet period was met
    # graceful's lines go to graceful-hypercorn's own handler only, not twice via root
    assert not [r for r in caplog.records if r.name.startswith("graceful")]


def test_the_drain_timeout_becomes_hypercorns_graceful_timeout(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. No quiet period, drain timeout 0.3 s; a 10 s request runs. 2. SIGTERM. 3. The
    listener closes at once; hypercorn waits 0.3 s, then cancels the request (answered
    500), counted and logged. 4. main returns 0 well within a second."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "0.3")
    seen: dict[str, httpx.Response | Exception] = {}

    def scenario(run: Run) -> None:
        slow = Slow(f"{run.url}/work?seconds=10")
        wait_until(lambda: current_lifecycle().in_flight == 1, 5, what="it to run")
        run.signal(signal.SIGTERM)
        seen["slow"] = slow.result()

    code, took = Run(port)(Run(port).bind(), scenario)
    assert code == 0
    assert 0.3 <= took < 1.2
    slow = seen["slow"]
    assert isinstance(slow, httpx.Response) and slow.status_code == 500, slow
    err = capsys.readouterr().err
    assert "Closing the listener; running requests get 0.30 s" in err
    assert (
        "WARNING graceful.hypercorn: 1 request(s) cancelled by hypercorn at its graceful_timeout"
        in err
    )


def test_drain_off_gives_running_requests_no_time(
    port: int, exits: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """1. A runner whose shutdown config has drain off and no budget (embedded use).
    2. SIGTERM with a request running. 3. hypercorn gets 0 s for running requests."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    lifecycle = Lifecycle(ShutdownConfig(drain=False, drain_timeout=5))
    runner = HypercornRunner(lifecycle, config)
    seen: dict[str, httpx.Response | Exception] = {}
    caplog.set_level(logging.INFO, logger="graceful")

    def drive() -> None:
        wait_until(lambda: not refused("127.0.0.1", port), 10, what="listening")
        slow = Slow(f"http://127.0.0.1:{port}/work?seconds=10")
        wait_until(lambda: lifecycle.in_flight == 1, 5, what="it to run")
        os.kill(os.getpid(), signal.SIGTERM)
        seen["slow"] = slow.result()

    run_with_signals_guarded(lambda: asyncio.run(runner.serve(echo.app)), drive)
    assert runner.config.graceful_timeout == 0.0
    assert isinstance(seen["slow"], httpx.Response) and seen["slow"].status_code == 500
    assert runner.phase_durations["delay"] < 0.1
    assert runner.lifecycle.requests_cancelled == 1
    assert "Closing the listener; running requests get 0.00 s" in caplog.messages


def test_an_unlimited_drain_is_a_long_graceful_timeout(
    port: int, exits: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """1. A runner with no drain timeout and no budget. 2. SIGTERM with nothing running.
    3. hypercorn's graceful_timeout becomes a year (it takes no "unlimited"), and the log
    says "unlimited"."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    runner = HypercornRunner(Lifecycle(ShutdownConfig(drain_timeout=None)), config)

    def drive() -> None:
        wait_until(lambda: not refused("127.0.0.1", port), 10, what="listening")
        os.kill(os.getpid(), signal.SIGTERM)

    caplog.set_level(logging.INFO, logger="graceful")
    run_with_signals_guarded(lambda: asyncio.run(runner.serve(echo.app)), drive)
    assert runner.config.graceful_timeout == 365 * 24 * 3600.0
    assert "Closing the listener; running requests get unlimited s" in caplog.messages
    assert list(runner.phase_durations) == ["delay"]
    assert runner.signals == [(signal.SIGTERM, "start")]


def test_later_signals_sigterm_ignored_sigint_hurries_a_third_exits(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. An app whose lifespan shutdown waits to be released; a 5 s quiet period, drain
    timeout 10 s; a 10 s request runs. 2. SIGTERM, then SIGTERM again: logged and
    ignored. 3. SIGINT: the delay ends at once and the drain is cut (the request answered
    500). 4. A third signal while the app's shutdown hangs: the forced exit with 130.
    5. (The recorded exit lets the run go on: the app is released.)"""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "5")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "5")
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "10")
    echo.release.clear()
    answers: list[httpx.Response | Exception] = []

    def scenario(run: Run) -> None:
        assert httpx.get(f"{run.url}/echo", timeout=5).status_code == 200  # done: not cut
        slow = Slow(f"{run.url}/work?seconds=10")
        time.sleep(0.1)  # the scenario: the signals come while it runs
        run.signal(signal.SIGTERM)
        lifecycle = current_lifecycle()
        wait_until(lambda: lifecycle.phase is Phase.DELAY, 2, what="delay phase")
        run.signal(signal.SIGTERM)
        time.sleep(0.2)  # the scenario: the second SIGTERM is seen, then SIGINT
        assert lifecycle.phase is Phase.DELAY
        hurried = time.monotonic()
        run.signal(signal.SIGINT)
        answers.append(slow.result())
        assert time.monotonic() - hurried < 1.0
        wait_until(lambda: lifecycle.phase is Phase.APP_SHUTDOWN, 2, what="app shutdown")
        run.signal(signal.SIGINT)
        wait_until(lambda: exits, 2, what="forced exit")
        echo.release.set()

    code, _ = Run(port)(Run(port).bind("stuck_app"), scenario)
    assert code == 0
    assert exits == [130]
    assert isinstance(answers[0], httpx.Response) and answers[0].status_code == 500, answers
    err = capsys.readouterr().err
    assert "WARNING graceful.hypercorn: SIGTERM again during shutdown: ignored" in err
    assert "WARNING graceful.hypercorn: Second SIGINT: stopped waiting for quiet period" in err
    assert "WARNING graceful.hypercorn: SIGINT again: no more waiting for requests" in err
    assert "WARNING graceful.hypercorn: Second SIGINT: cancelled 1 running request(s)" in err
    assert "at its graceful_timeout" not in err, err  # the one cut is the signal's, not hypercorn's
    assert "Exiting at once (third signal, SIGINT) in phase app-shutdown" in err, err
    assert "Still receiving requests" not in err


def test_a_second_sigint_during_the_drain_cuts_what_runs(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. Drain timeout 10 s; a 10 s request runs. 2. SIGTERM: the delay passes, the
    drain starts (the request still runs). 3. SIGINT: the running request is cut at once
    (answered 500), said once, and hypercorn's own timeout did not cut it. 4. main
    returns 0 well before the drain timeout."""
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "10")
    seen: dict[str, object] = {}

    def scenario(run: Run) -> None:
        slow = Slow(f"{run.url}/work?seconds=10")
        wait_until(lambda: current_lifecycle().in_flight == 1, 5, what="it to run")
        run.signal(signal.SIGTERM)
        lifecycle = current_lifecycle()
        wait_until(lambda: lifecycle.phase is Phase.DRAINING, 5, what="the drain")
        hurried = time.monotonic()
        run.signal(signal.SIGINT)
        seen["slow"] = slow.result()
        seen["cut after"] = time.monotonic() - hurried

    code, took = Run(port)(Run(port).bind(), scenario)
    assert code == 0 and exits == []
    slow = seen["slow"]
    assert isinstance(slow, httpx.Response) and slow.status_code == 500, slow
    assert float(seen["cut after"]) < 1.0, seen  # type: ignore[arg-type]
    assert took < 3.0
    err = capsys.readouterr().err
    assert (
        err.count("WARNING graceful.hypercorn: Second SIGINT: cancelled 1 running request(s)") == 1
    )
    assert "at its graceful_timeout" not in err, err


def test_an_app_shutdown_past_the_budget_takes_the_forced_exit(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. An app whose lifespan shutdown does not end by itself, 7 items unwritten; grace
    period 2 s (1 s of budget), no quiet period. 2. SIGTERM. 3. At the budget's end plus
    half the margin (1.5 s) the forced exit with 1, logging the 7 items."""
    monkeypatch.setenv("GRACEFUL_GRACE_PERIOD", "2")
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "0.5")
    echo.release.clear()
    seen: dict[str, float] = {}

    def scenario(run: Run) -> None:
        run.signal(signal.SIGTERM)
        wait_until(lambda: exits, 3, what="forced exit")
        seen["exit"] = time.monotonic() - run.signalled_at
        echo.release.set()

    code, _ = Run(port)(Run(port).bind("stuck_app"), scenario)
    assert code == 0
    assert exits == [1]
    assert 1.4 <= seen["exit"] < 1.9, seen
    err = capsys.readouterr().err
    assert (
        "Exiting at once (the app's shutdown overran the budget) in phase app-shutdown: "
        "left unwritten: 7 items; 0 request(s) still running"
    ) in err


def test_options_and_errors_of_the_command(
    port: int,
    exits: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1. A bad GRACEFUL_* variable: exit 2 naming it. 2. A module that does not exist,
    with limits that cannot fit the grace period: the budget warning, the reason, 1.
    3. A hypercorn TOML config naming the bind address, and no --bind: it serves there.
    4. --help names the options and where the shutdown options come from."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "soon")
    with pytest.raises(SystemExit) as exited:
        main([f"{ECHO}:app"])
    assert exited.value.code == 2
    assert (
        "graceful-hypercorn: error: GRACEFUL_QUIET_PERIOD: expected seconds (a number), got 'soon'"
    ) in capsys.readouterr().err
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    monkeypatch.setenv("GRACEFUL_GRACE_PERIOD", "5")
    assert main(["no_such_module_here:app"]) == 1
    err = capsys.readouterr().err
    assert (
        "WARNING graceful.hypercorn: Shutdown budget: shutdown phases need up to 10 s "
        "(delay 0 + drain 10) but only 4 s remain before SIGKILL (grace period 5 s - safety "
        "margin 1 s)"
    ) in err
    assert "ERROR graceful.hypercorn: cannot load APP: " in err
    monkeypatch.delenv("GRACEFUL_GRACE_PERIOD")
    toml = tmp_path / "hypercorn.toml"
    toml.write_text(f'bind = ["127.0.0.1:{port}"]\ngraceful_timeout = 99\n')

    def scenario(run: Run) -> None:
        with httpx.Client(base_url=run.url, timeout=5) as client:
            assert client.get("/echo").status_code == 200
        run.signal(signal.SIGTERM)

    code, took = Run(port)([f"{ECHO}:app", "--config", str(toml)], scenario)
    assert code == 0 and took < 1.5
    captured = capsys.readouterr()
    assert '"GET /echo 1.1"' not in captured.out + captured.err  # no --access-log
    help_text = " ".join(build_parser().format_help().split())
    assert "--bind ADDRESS HOST:PORT to listen on, repeatable (default 127.0.0.1:8000)" in help_text
    assert (
        "--config FILE a hypercorn TOML config file (its graceful_timeout is replaced by the "
        "drain timeout)"
    ) in help_text
    assert "--access-log log each request to stdout (hypercorn's access log)" in help_text
    assert "Shutdown options come from GRACEFUL_* variables, as for graceful-serve" in help_text
    assert adapter._name(None) == "none" and adapter._name(99) == "99"


def test_the_budget_cuts_a_long_pre_close_delay(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A 5 s pre-close delay but a grace period of 1.6 s (0.6 s of budget).
    2. SIGTERM. 3. The delay ends with the budget: main returns about 0.6 s later."""
    monkeypatch.setenv("GRACEFUL_GRACE_PERIOD", "1.6")
    monkeypatch.setenv("GRACEFUL_PRE_CLOSE_DELAY", "5")
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "0")

    def scenario(run: Run) -> None:
        run.signal(signal.SIGTERM)

    code, took = Run(port)(Run(port).bind(), scenario)
    assert code == 0 and exits == []
    assert 0.5 <= took < 1.3, took


def test_quiet_max_ends_the_delay_under_traffic_and_says_so(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A 0.4 s quiet period, at most 0.6 s. 2. SIGTERM, then a request 0.3 s later:
    the quiet period would end at 0.7 s. 3. The delay ends at 0.6 s anyway, with a
    warning naming the limit."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0.4")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "0.6")

    def scenario(run: Run) -> None:
        run.signal(signal.SIGTERM)
        time.sleep(0.3)  # the scenario: one more request comes 0.3 s later
        with httpx.Client(base_url=run.url, timeout=5) as client:
            assert client.get("/echo").status_code == 200

    code, took = Run(port)(Run(port).bind(), scenario)
    assert code == 0 and took < 1.5
    err = capsys.readouterr().err
    assert "WARNING graceful.server: Still receiving requests after 0.60 s; closing anyway" in err


def test_the_runner_gives_back_the_signal_handlers_it_found(port: int, exits: list[int]) -> None:
    """1. graceful-hypercorn in this thread, with handlers for SIGINT and SIGTERM already
    installed (as an embedding program has them). 2. SIGTERM ends the run. 3. Right after
    it, both handlers are the ones it found, not asyncio's defaults, under which a late
    SIGINT would raise KeyboardInterrupt and a late SIGTERM kill the program."""
    found: dict[int, object] = {}
    left: dict[int, object] = {}

    def serve() -> int:
        found.update({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)})
        code = main(Run(port).bind())
        left.update({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)})
        return code

    def drive() -> None:
        listening_or_ended("127.0.0.1", port)
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_with_signals_guarded(serve, drive) == 0
    assert exits == []
    assert left == found and signal.default_int_handler not in left.values(), left


def test_the_help_and_a_repeated_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """`graceful-hypercorn --help` says what it serves and where the shutdown options come
    from; --bind may be given more than once."""
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(build_parser().format_help().split())
    assert text.startswith(
        "usage: graceful-hypercorn [-h] [--bind ADDRESS] [--config FILE] [--access-log] APP"
    )
    assert (
        "Serve an ASGI 3 app with hypercorn and graceful's shutdown phases (readiness 503 "
        "from SIGTERM on, quiet period, drain within the grace period). Shutdown options "
        "come from GRACEFUL_* variables, as for graceful-serve (graceful-serve --help lists "
        "them)."
    ) in text
    assert "positional arguments: APP module:attribute" in text
    args = build_parser().parse_args(["m:app", "--bind", "127.0.0.1:1", "--bind", "127.0.0.1:2"])
    assert args.bind == ["127.0.0.1:1", "127.0.0.1:2"]
