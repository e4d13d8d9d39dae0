"""Helpers for running a graceful server command inside the pytest process: the server in
the main thread (where signal handlers can be installed), the scenario in a thread."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx

import graceful.current

T = TypeVar("T")
GUARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


#: Set while no server runs: a scenario waiting for one to listen stops waiting.
served = threading.Event()


def listening_or_ended(host: str, port: int, timeout: float = 10) -> None:
    """Wait until the port answers; fail at once if the server has already ended."""
    deadline = time.monotonic() + timeout
    while refused(host, port):
        if served.is_set():
            raise AssertionError("the server ended before it listened")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.02)


def run_with_signals_guarded(serve: Callable[[], T], drive: Callable[[], None]) -> T:
    """`serve()` in this thread while `drive` runs in another. A signal that comes when
    no server has its handler installed (before it starts, after it ends) is recorded
    here instead of ending pytest, and every handler is put back afterwards."""
    stray: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, frame: stray.append(n)) for sig in GUARDED}
    served.clear()
    thread = threading.Thread(target=drive, name="scenario", daemon=True)
    thread.start()
    try:
        return serve()
    finally:
        served.set()
        thread.join(15)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        assert not thread.is_alive(), "the scenario did not end"


@contextmanager
def process_state_restored(*loggers: str) -> Iterator[None]:
    """A server command configures logging, the module path and the current lifecycle for
    the whole process, as it should: put them back after the test."""
    names = ("graceful", "uvicorn", "uvicorn.error", "uvicorn.access", *loggers)
    saved = {}
    for name in names:
        log = logging.getLogger(name)
        saved[name] = (list(log.handlers), log.level, log.propagate, log.disabled)
    path = list(sys.path)
    current = graceful.current._current
    try:
        yield
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            log = logging.getLogger(name)
            log.handlers[:] = handlers
            log.setLevel(level)
            log.propagate, log.disabled = propagate, disabled
        sys.path[:] = path
        graceful.current._current = current


class Slow:
    """A request in a thread: its response or its error."""

    def __init__(self, url: str) -> None:
        self.outcome: httpx.Response | Exception | None = None
        self.thread = threading.Thread(target=self._get, args=(url,))
        self.thread.start()

    def _get(self, url: str) -> None:
        try:
            self.outcome = httpx.get(url, timeout=15)
        except httpx.HTTPError as exc:
            self.outcome = exc

    def result(self) -> httpx.Response | Exception:
        self.thread.join(15)
        assert self.outcome is not None
        return self.outcome
