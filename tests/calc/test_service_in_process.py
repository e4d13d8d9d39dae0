"""calc.service in the pytest process: the shutdown config and limits it derives, what a
forced exit reports, the server it builds (a real uvicorn on a loopback port, in a
thread) and `run(config)` itself, stopped by a real SIGTERM to this process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

from calc.app import create_app
from calc.config import CalcConfig
from calc.oplog import OperationLog, make_sink
from calc.service import (
    app_phase_limits,
    build_server,
    operation_log_of,
    report_unwritten,
    run,
    shutdown_config,
)
from graceful import GracefulMiddleware, GracefulServer, Lifecycle, ShutdownConfig
from lab.influx import free_port
from tests.calc.app_support import config_for
from tests.calc.logging_support import restored_logging, taken_port
from tests.support import http_ok, wait_until

SPOOL_NOTE = "operations (left in the spool, lost unless this pod's next container starts)"


def test_the_shutdown_config_carries_every_switch() -> None:
    """1. A config whose every shutdown switch has a value of its own. 2. The server's
    ShutdownConfig has each one, budget enforcement from --budget-check."""
    config = CalcConfig(
        pod="p",
        drain=False,
        drain_timeout=3.5,
        readiness_flip=True,
        connection_close=True,
        pre_close_delay=1.25,
        quiet_period=2.0,
        quiet_max=9.0,
        grace_period=44.0,
        budget_check=True,
    )
    assert shutdown_config(config) == ShutdownConfig(
        drain=False,
        drain_timeout=3.5,
        readiness_flip=True,
        connection_close=True,
        pre_close_delay=1.25,
        quiet_period=2.0,
        quiet_max=9.0,
        grace_period=44.0,
        enforce_budget=True,
    )
    assert shutdown_config(CalcConfig(pod="p")) == ShutdownConfig()


@pytest.mark.parametrize(
    ("oplog", "limits"),
    [
        ("off", {}),
        ("task", {}),
        ("task-graceful", {"tasks": 6.5}),
        ("batch", {}),
        ("batch-graceful", {"flush": 4.5}),
    ],
)
def test_the_app_phase_limits_follow_the_log_mode(oplog: str, limits: dict[str, float]) -> None:
    """Only the modes that wait at shutdown have an app phase in the budget: v7's task
    timeout, v9/v10's flush timeout."""
    config = CalcConfig(pod="p", oplog=oplog, task_timeout=6.5, flush_timeout=4.5)
    assert app_phase_limits(config) == limits


def test_the_operation_log_is_found_under_the_middlewares(tmp_path: Path) -> None:
    """1. The app as built, wrapped in graceful's middleware (and more layers, as a host
    might add: 40). 2. Its operation log is found through them. 3. Anything else, and
    a chain of layers that loops back without one: a TypeError naming it."""
    config = config_for("v9", tmp_path)
    lifecycle = Lifecycle(shutdown_config(config))
    app = create_app(config, lifecycle, make_sink(config))
    wrapped: object = GracefulMiddleware(app, lifecycle)
    found = operation_log_of(wrapped)
    assert isinstance(found, OperationLog) and found.mode == "batch-graceful"
    for _ in range(39):
        wrapped = GracefulMiddleware(wrapped, lifecycle)  # type: ignore[arg-type]
    assert operation_log_of(wrapped) is found
    with pytest.raises(TypeError) as error:
        operation_log_of("no app")
    assert str(error.value) == "no operation log in 'no app'"
    first, second = types.SimpleNamespace(), types.SimpleNamespace()
    first.app, second.app = second, first
    with pytest.raises(TypeError, match=r"^no operation log in namespace"):
        operation_log_of(first)


@pytest.mark.parametrize(
    ("profile", "unwritten"),
    [
        ("v3", {}),
        ("v7", {"operations": 2}),
        ("v8", {"operations": 2}),
        ("v9", {"operations": 2}),
        ("v10", {SPOOL_NOTE: 2}),
    ],
)
def test_a_forced_exit_reports_what_each_profile_leaves_unwritten(
    tmp_path: Path, profile: str, unwritten: dict[str, int]
) -> None:
    """1. The profile's operation log holds 2 unwritten operations. 2. What a forced exit
    would log: nothing with the log off; the count of operations; with the spool (v10)
    that they stay in the spool for the pod's next container."""
    config = config_for(profile, tmp_path)
    lifecycle = Lifecycle(shutdown_config(config))

    async def scenario() -> dict[str, int]:
        oplog = OperationLog(config, make_sink(config))
        report_unwritten(lifecycle, oplog, config.spool)
        oplog.record("a", 1, 1.0)
        oplog.record("b", 1, 1.0)
        counts = lifecycle.unwritten()
        await oplog.close(0)
        return counts

    assert asyncio.run(scenario()) == unwritten


def test_a_forced_exit_logs_the_losses_the_rate_limit_held_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v9 with a buffer of 1; three operations: the second and third are lost
    (buffer full). 2. The first loss is logged at once, the second held back by the
    once-a-second limit. 3. The forced exit's hook logs it before the process ends."""
    config = config_for("v9", tmp_path, batch_size=1, max_buffer=1)
    lifecycle = Lifecycle(shutdown_config(config))

    async def scenario() -> None:
        oplog = OperationLog(config, make_sink(config))
        report_unwritten(lifecycle, oplog, config.spool)
        with caplog.at_level(logging.INFO, logger="graceful"):
            for rid in ("a", "b", "c"):
                oplog.record(rid, 1, 1.0)
            assert caplog.text.count("buffer_full so far") == 1
            lifecycle.run_before_forced_exit()
            assert caplog.text.count("buffer_full so far") == 2
            assert (
                caplog.records[-1]
                .getMessage()
                .startswith(
                    "Lost 1 operations (buffer_full: buffer full (1)); 2 buffer_full so far"
                )
            )
        await oplog.close(0)

    asyncio.run(scenario())


class ServerThread:
    """A built server run in a thread of this process (no signal handlers there); its
    stop is what the SIGTERM handler records. The thread is a daemon and is always
    stopped, so a server that fails never holds the test run."""

    def __init__(self, config: CalcConfig) -> None:
        self.server = build_server(config)
        self.thread = threading.Thread(target=self.server.run, name="calc-server", daemon=True)
        self.url = f"http://{config.host}:{config.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            wait_until(
                lambda: not self.thread.is_alive() or http_ok(f"{self.url}/health"),
                5,
                what="the server to answer /health",
            )
            assert self.thread.is_alive(), "the server thread ended at start"
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the server did not stop within 10 s"

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_the_built_server_serves_the_app_with_its_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. build_server for v10 on 127.0.0.2 (head limit 2 KiB, head timeout 0.3 s).
    2. /health, a sum, and /ready answer over the socket, on uvloop; uvicorn logs at the
    configured level through calc's handlers, with no access log line. 3. A 4 KiB head
    gets 431; a head left unfinished gets 408 after about 0.3 s. 4. A forced exit would
    report the buffered point as left in the spool. 5. SIGTERM: the server stops, its
    point is in the file."""
    port = free_port("127.0.0.2")
    config = config_for(
        "v10",
        tmp_path,
        host="127.0.0.2",
        port=port,
        max_head_bytes=2048,
        head_timeout=0.3,
        quiet_period=0.0,
        log_level="info",
    )
    with restored_logging(), caplog.at_level(logging.INFO), ServerThread(config) as served:
        url = served.url
        assert logging.getLogger("uvicorn.error").level == logging.INFO
        assert logging.getLogger("uvicorn").handlers == []
        loop = served.server.servers[0].get_loop()
        assert type(loop).__module__.startswith("uvloop"), type(loop)
        answer = httpx.post(f"{url}/sum", json={"numbers": [1, 2]}, headers={"x-request-id": "t"})
        assert (answer.status_code, answer.json()) == (200, {"result": 3})
        assert httpx.get(f"{url}/ready").status_code == 200
        big = httpx.get(f"{url}/health", headers={"x-filler": "x" * 4096})
        assert big.status_code == 431
        with socket.create_connection(("127.0.0.2", port), timeout=3) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            first = sock.recv(100)
            took = time.monotonic() - started
        assert first.startswith(b"HTTP/1.1 408"), first
        assert 0.2 <= took < 3.0, took
        assert served.server.lifecycle.unwritten() == {SPOOL_NOTE: 1}  # the sum, buffered
        served.stop()
        assert served.server.started
        assert "Uvicorn running on http://127.0.0.2:" in caplog.text
        assert not [r for r in caplog.records if r.name == "uvicorn.access"]
    assert 'id="t"' in (tmp_path / "operations.lp").read_text()


def test_run_serves_until_sigterm_and_returns_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. run(config) for v9 in this process's main thread, logging to stderr. 2. Once
    it listens, a sum, then a real SIGTERM to this process. 3. run returns 0; the log
    has the start line and uvicorn's lines in calc's format, the request's id on its
    line, and the point was written."""
    port = free_port()
    config = config_for("v9", tmp_path, host="127.0.0.1", port=port)
    url = f"http://127.0.0.1:{port}"
    outcome: list[str] = []

    def client() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break  # it listens, so run() is serving and its signal handlers are set
            time.sleep(0.02)
        else:
            outcome.append("never listened")
            # The forced path: stop whatever server run() started, as its SIGTERM
            # handler would (a real signal is only safe once it listens).
            for server in [o for o in gc.get_objects() if isinstance(o, GracefulServer)]:
                server.handle_exit(signal.SIGTERM, None)
            return
        try:
            answer = httpx.post(
                f"{url}/sum", json={"numbers": [2, 2]}, headers={"x-request-id": "via-run"}
            )
            outcome.append(f"{answer.status_code} {answer.text}")
        except httpx.HTTPError as exc:
            outcome.append(repr(exc))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the server's handler records it

    helper = threading.Thread(target=client, name="run-client")
    helper.start()
    try:
        with restored_logging():
            code = run(config)
    finally:
        helper.join(15)
    err = capsys.readouterr().err
    assert outcome == ['200 {"result":4}']
    assert code == 0
    oplog_file = tmp_path / "operations.lp"
    assert (
        f"INFO request_id=- calc: calc v9 on 127.0.0.1:{port}, "
        f"operation log batch-graceful -> file {oplog_file}"
    ) in err
    assert "INFO request_id=via-run calc: Calculating sum" in err
    assert "INFO request_id=- uvicorn.error: Started server process" in err
    assert 'id="via-run"' in oplog_file.read_text()


def test_run_warns_when_the_phases_cannot_fit_the_grace_period(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. run(config) for v10 with a 10 s grace period (its phases need 23 s) and a
    spool that cannot be made, and for v3 with the log off. 2. The budget warning names
    each phase; the start line names the log; run returns 1 without listening."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with taken_port() as port:  # were the spool skipped, serving would fail at once too
        config = config_for(
            "v10",
            tmp_path,
            grace_period=10.0,
            spool_dir=str(blocker / "spool"),
            host="127.0.0.1",
            port=port,
        )
        with restored_logging():
            assert run(config) == 1
        err = capsys.readouterr().err
        assert (
            "WARNING request_id=- calc: Shutdown budget: shutdown phases need up to 23 s "
            "(delay 10 + drain 8 + flush 5) but only 9 s remain before SIGKILL "
            "(grace period 10 s - safety margin 1 s)"
        ) in err
        assert f"calc v10 on 127.0.0.1:{port}, operation log batch-graceful -> file " in err
        assert "ERROR request_id=- calc: Cannot start: cannot use spool directory" in err

        unchecked = dataclasses.replace(config, budget_check=False)
        with restored_logging():
            assert run(unchecked) == 1
        assert "Shutdown budget" not in capsys.readouterr().err

        influx = dataclasses.replace(
            config, influxdb_base_url="http://127.0.0.1:9", budget_check=False
        )
        with restored_logging():
            assert run(influx) == 1
        assert "operation log batch-graceful -> http://127.0.0.1:9\n" in capsys.readouterr().err


def test_run_with_the_log_off_names_no_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. run(config) for v3 on a port already taken. 2. The start line says the log is
    off ("-"); uvicorn cannot bind and the process exits non-zero."""
    with taken_port() as port:
        config = config_for("v3", tmp_path, host="127.0.0.1", port=port)
        with restored_logging(), pytest.raises(SystemExit) as exited:
            run(config)
    assert exited.value.code not in (0, None)
    err = capsys.readouterr().err
    assert f"calc v3 on 127.0.0.1:{port}, operation log off -> -\n" in err
    assert "address already in use" in err.lower()
