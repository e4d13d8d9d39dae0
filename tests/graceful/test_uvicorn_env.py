"""uvicorn's UVICORN_* variables under `graceful-serve`: each one uvicorn would act on is
either supported or refused at start with the reason, never silently ignored. Real
processes for the refusals; the list is checked against the installed uvicorn's own
command (click's auto_envvar_prefix="UVICORN")."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess

import click
import pytest

from graceful.cli import UNSUPPORTED, UVICORN_OPTIONS, refuse_unsupported_variables
from graceful.options import OptionError
from graceful.uvicorn_compat import VERSION
from tests.support import REPO, VENV_BIN, Processes, wait_until

COMMAND = str(VENV_BIN / "graceful-serve")
APP = "tests.graceful.apps.served:app"
REFUSED_ENV = {refused.env: refused for refused in UNSUPPORTED}


def uvicorn_variables() -> set[str]:
    """Every UVICORN_<NAME> the installed uvicorn's command reads."""
    main = importlib.import_module("uvicorn.main").main
    command = getattr(main, "__self__", main)  # the click Command behind `main`
    assert isinstance(command, click.Command), command
    names = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.allow_from_autoenv and param.name:
            names.add("UVICORN_" + param.name.upper())
        elif isinstance(param, click.Argument) and isinstance(param.envvar, str):
            names.add(param.envvar)
    return names


def test_every_variable_uvicorn_reads_is_supported_or_refused() -> None:
    """1. The UVICORN_* variables the installed uvicorn reads. 2. Each is one
    graceful-serve supports or one it refuses (UVICORN_VERSION, which only prints
    uvicorn's version, aside), and each refused one this release has (by the release
    that added it) is read. Fails the day a uvicorn release adds an option."""
    supported = {"UVICORN_APP"} | {"UVICORN_" + o.name.upper() for o in UVICORN_OPTIONS}
    known = supported | set(REFUSED_ENV) | {"UVICORN_VERSION"}
    read = uvicorn_variables()
    assert read - known == set(), "uvicorn reads variables graceful-serve does not know"
    assert not supported & set(REFUSED_ENV)
    # Each refused option from the release that added it on (`since`), none before.
    here = {r.env for r in UNSUPPORTED if r.since <= VERSION}
    later = {r.env for r in UNSUPPORTED if r.since > VERSION}
    assert here <= read, f"uvicorn {VERSION} lacks {here - read}"
    assert not later & read, f"uvicorn {VERSION} has {later & read} already"


@pytest.mark.parametrize("env", sorted(REFUSED_ENV))
def test_each_unsupported_variable_is_refused_with_its_reason(env: str) -> None:
    """1. One unsupported UVICORN_* variable set (to "1", which is not uvicorn's default
    for any of them). 2. The settings are refused, naming the variable and the reason."""
    value = "0" if REFUSED_ENV[env].flag_default else "1"
    with pytest.raises(OptionError) as refused:
        refuse_unsupported_variables({env: value})
    assert str(refused.value) == f"{env}={value} is not supported: {REFUSED_ENV[env].why}"


@pytest.mark.parametrize(
    "environ",
    [
        {"UVICORN_WORKERS": ""},  # empty is unset, as click reads it
        {"UVICORN_RELOAD": "false", "UVICORN_HTTP2": "0"},  # a flag off by default, off
        {"UVICORN_DATE_HEADER": "true", "UVICORN_USE_COLORS": "yes"},  # on by default, on
        {"WEB_CONCURRENCY": "1"},
    ],
)
def test_a_variable_that_changes_nothing_passes(environ: dict[str, str]) -> None:
    refuse_unsupported_variables(environ)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("env", "value", "reason"),
    [
        ("UVICORN_WORKERS", "4", "run one process per container"),
        ("UVICORN_UDS", "/tmp/graceful-test.sock", "listens on --host/--port only"),
        ("UVICORN_RELOAD", "true", "restarts the server without the shutdown phases"),
        ("UVICORN_SSL_CERTFILE", "cert.pem", "serves plain HTTP: terminate TLS"),
        ("UVICORN_SSL_KEYFILE", "key.pem", "serves plain HTTP: terminate TLS"),
        ("WEB_CONCURRENCY", "4", "run one process per container"),
    ],
)
def test_graceful_serve_refuses_the_variable_at_start_and_serves_nothing(
    port: int, env: str, value: str, reason: str
) -> None:
    """1. graceful-serve APP --port P with one unsupported variable set. 2. It exits 2
    at once with one error line naming the variable, its value and the reason. 3.
    Nothing was served: the app never started, nothing listens on P."""
    result = subprocess.run(
        [COMMAND, APP, "--port", str(port)],
        env={**os.environ, env: value},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"graceful-serve: error: {env}={value} is not supported: ")
    assert reason in errors[0]
    assert "Started server process" not in result.stderr and "Uvicorn running" not in result.stderr
    assert not listening(port)


def test_a_variable_at_uvicorns_default_still_serves(processes: Processes, port: int) -> None:
    """1. graceful-serve with UVICORN_RELOAD=false and UVICORN_WORKERS empty, as a
    compose file may set them. 2. It serves; SIGTERM; exit 0."""
    env = {"UVICORN_RELOAD": "false", "UVICORN_WORKERS": "", "UVICORN_PORT": str(port)}
    process = processes.start([COMMAND, APP, "--quiet-period", "0"], env=env, cwd=REPO)
    wait_until(lambda: listening(port) or process.poll() is not None, 15, what="serving")
    assert process.poll() is None, processes.output(process)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(10) == 0
