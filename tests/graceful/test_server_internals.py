"""What graceful relies on inside uvicorn, gunicorn and hypercorn (graceful/*_compat.py),
checked against the installed releases: `make test-server-versions` runs this file on the
oldest and on the newest supported release of each. A release that changes one of them
fails here by name; one that lacks it is refused at start in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import uvicorn

from graceful import gunicorn_compat, hypercorn_compat, server_compat, uvicorn_compat
from tests.support import REPO


@pytest.mark.parametrize(
    "compat", [uvicorn_compat, gunicorn_compat, hypercorn_compat], ids=lambda m: m.__name__
)
def test_the_installed_release_has_all_graceful_relies_on(compat: Any) -> None:
    """1. Every method (with its parameters), attribute (and the method that sets it),
    name and call order the module lists. 2. None is missing or changed, and the release
    is not older than the oldest supported."""
    assert compat.missing() == []
    assert compat.unsupported() is None


# -- the check itself: it sees what a release could change --------------------------------


class Release:
    """A stand-in for a class of a server's, as a later release could change it."""

    LIMIT = 1

    def __init__(self, config: object) -> None:
        self.config = config
        self.state: dict[str, int] = {}

    def on_tick(self, tick: int) -> bool:  # renamed parameter
        return False

    def stop(self) -> None:
        self.kill()
        self.close()

    def kill(self) -> None: ...

    def close(self) -> None: ...


def test_the_check_names_each_missing_or_changed_internal() -> None:
    """1. Ask for a method that is gone, one whose parameter was renamed, an attribute
    `__init__` no longer sets, a name that is gone, and calls in an order the release
    reversed. 2. Each is named; what is still there is not."""
    here = f"{__name__}:Release"
    gaps = server_compat.gaps(
        methods={here: {"on_tick": ("counter",), "shutdown": (), "stop": ()}},
        set_by={f"{here}.__init__": ("config", "server_state")},
        names={here: ("LIMIT", "SIGNALS"), "asyncio": ("Event",)},
        call_order={f"{here}.stop": ("close", "kill"), f"{__name__}:Release.kill": ()},
    )
    assert gaps == [
        "Release.on_tick(counter), found (tick)",
        "Release.shutdown()",
        "Release.server_state (set by Release.__init__)",
        "Release.SIGNALS",
        "Release.stop calling close then kill",
    ]


@pytest.mark.parametrize(
    ("text", "release"),
    [("0.38.0", (0, 38, 0)), ("23.0.0", (23, 0, 0)), ("0.55.0rc1", (0, 55, 0)), ("1.2b3", (1, 2))],
)
def test_release_numbers(text: str, release: tuple[int, ...]) -> None:
    assert server_compat.release(text) == release


# -- the differences between supported uvicorn releases, as the installed one behaves ------


async def _failing_lifespan(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})


def test_a_failed_app_startup_exits_as_the_release_says() -> None:
    """1. Plain uvicorn.Server, an app whose lifespan startup fails. 2. From 0.50 its
    startup exits with 3 (EXITS_ON_FAILED_STARTUP); before, it returns with should_exit
    set and nothing started, which GracefulServer turns into the same exit."""
    server = uvicorn.Server(
        uvicorn.Config(_failing_lifespan, lifespan="on", log_config=None, port=0)
    )

    async def start() -> int | None:
        server.lifespan = server.config.lifespan_class(server.config)
        try:
            await server.startup()
        except SystemExit as exc:
            return exc.code  # type: ignore[return-value]
        return None

    server.config.load()
    code = asyncio.run(start())
    if uvicorn_compat.EXITS_ON_FAILED_STARTUP:
        assert code == uvicorn_compat.STARTUP_FAILURE
    else:
        assert code is None
        assert uvicorn_compat.startup_failed(server)


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class _ExitDuringStartup(uvicorn.Server):
    """A signal's effect as the server starts listening: should_exit set in startup."""

    shut_down = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.should_exit = True

    async def shutdown(self, sockets: Any = None) -> None:
        self.shut_down = True
        await super().shutdown(sockets)


def test_an_exit_during_startup_shuts_down_as_the_release_says() -> None:
    """1. Plain uvicorn.Server serving on a free port; should_exit set once it listens.
    2. From 0.41 `serve` runs `shutdown()` (SHUTS_DOWN_AFTER_EARLY_EXIT); before, it returns
    without, and GracefulServer.startup runs the shutdown phases itself."""
    server = _ExitDuringStartup(
        uvicorn.Config(_hello, host="127.0.0.1", port=0, lifespan="on", log_config=None)
    )

    async def serve() -> None:
        await server.serve()
        for listener in uvicorn_compat.listening(server):  # left open before 0.41
            listener.close()
            await listener.wait_closed()

    asyncio.run(serve())
    assert server.started
    assert server.shut_down is uvicorn_compat.SHUTS_DOWN_AFTER_EARLY_EXIT


def test_a_response_on_a_closing_connection_says_close_as_the_release_says() -> None:
    """1. Plain uvicorn.Server with its httptools protocol on a free port. 2. An HTTP/1.0
    request (the connection is not kept alive). 3. From 0.53 the response says
    `connection: close` (RESPONSE_SAYS_CLOSE); before, it does not, and graceful's
    protocol adds it (say_close_when_not_kept_alive)."""
    server = uvicorn.Server(
        uvicorn.Config(
            _hello, host="127.0.0.1", port=0, lifespan="off", http="httptools", log_config=None
        )
    )

    async def exchange() -> bytes:
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup()
        try:
            (listener,) = uvicorn_compat.listening(server)
            port = listener.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            return answer
        finally:
            await server.shutdown()

    head = asyncio.run(exchange()).split(b"\r\n\r\n")[0].lower()
    assert (b"\r\nconnection: close" in head) is uvicorn_compat.RESPONSE_SAYS_CLOSE


# -- a release lacking what graceful needs is refused at start, in one line ---------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_graceful_serve_refuses_a_uvicorn_without_what_it_relies_on() -> None:
    """1. graceful-serve in a uvicorn whose Server has no on_tick (as a release that
    dropped it). 2. Exit 2, one error line naming the release and what it lacks; nothing
    served."""
    result = _run(
        "import uvicorn.server; del uvicorn.server.Server.on_tick\n"
        "from graceful.cli import main; raise SystemExit(main(['app:app']))"
    )
    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error == (
        f"graceful-serve: error: uvicorn {uvicorn.__version__} lacks what graceful relies "
        "on: Server.on_tick(counter)"
    )
    assert "Uvicorn running" not in result.stderr


def test_graceful_serve_refuses_a_uvicorn_older_than_supported() -> None:
    result = _run(
        "import uvicorn; uvicorn.__version__ = '0.37.0'\n"
        "from graceful.cli import main; raise SystemExit(main(['app:app']))"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "graceful-serve: error: uvicorn 0.37.0 is older than 0.38.0, the oldest graceful supports"
    )


def test_the_gunicorn_master_refuses_an_unsupported_gunicorn_before_any_worker() -> None:
    """1. gunicorn -k graceful.gunicorn.Worker where gunicorn calls itself 22.0.0. 2. The
    master exits 1 at start with one error line naming the release; no worker booted."""
    result = _run(
        "import sys, gunicorn; gunicorn.__version__ = '22.0.0'\n"
        "from gunicorn.app.wsgiapp import run\n"
        "sys.argv = ['gunicorn', '-k', 'graceful.gunicorn.Worker', '--bind', '127.0.0.1:0',"
        " 'tests.graceful.apps.served:app']\n"
        "run()"
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        "graceful: gunicorn 22.0.0 is older than 23.0.0, the oldest graceful supports"
    )
    assert "Booting worker" not in result.stderr


def test_graceful_hypercorn_refuses_an_unsupported_hypercorn() -> None:
    result = _run(
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '0.17.2' if name == 'hypercorn' else real(name)\n"
        "from graceful.hypercorn_cli import main; raise SystemExit(main(['app:app']))"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "graceful-hypercorn: error: hypercorn 0.17.2 is older than 0.17.3, the oldest "
        "graceful supports"
    ]
