"""For tests that run `calc.logs.setup_logging` (directly, or through `calc.service.run`)
in the pytest process: it replaces the root logger's handlers and levels, which pytest
and the next tests rely on, so they are put back afterwards. And a loopback port that is
taken, where a server that should not start fails at once instead of serving."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

_TOUCHED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx")


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in (logging.getLogger(name or None) for name in _TOUCHED)
    ]
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A 127.0.0.1 port something listens on for the duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]
