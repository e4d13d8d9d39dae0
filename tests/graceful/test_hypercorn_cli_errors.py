"""`graceful-hypercorn` that cannot start: one `graceful-hypercorn: error:` line naming
the file or the failure, no traceback, and graceful-serve's exit codes (2 for bad input,
3 for a failed lifespan startup, 1 for an address it cannot listen on). Real processes."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, VENV_BIN

APP = "tests.graceful.apps.echo:app"


def run(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [str(VENV_BIN / "graceful-hypercorn"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        (b"bind = [\n", "Invalid value (at end of document)"),
        (b'bind = "\xff"\n', "'utf-8' codec can't decode byte 0xff"),
        ("directory", "Is a directory"),
    ],
    ids=["missing", "malformed", "not-utf-8", "directory"],
)
def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | str | None, reason: str
) -> None:
    """1. --config names a file that is missing, not TOML, not UTF-8 or a directory.
    2. graceful-hypercorn exits 2 before loading the app, with one error line naming
    the file and what is wrong with it."""
    path = tmp_path / "hypercorn.toml"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    code, out, err = run(APP, "--config", str(path))
    assert code == 2
    assert err.startswith(f"graceful-hypercorn: error: --config {path}: {reason}"), err
    assert err.count("\n") == 1 and out == "", (out, err)


def test_a_failed_lifespan_startup_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """1. An app whose lifespan startup fails ("database unreachable"). 2.
    graceful-hypercorn exits 3, as graceful-serve does, with one error line naming the
    app and the failure, and no traceback."""
    app = "tests.graceful.apps.echo:failing_startup"
    code, out, err = run(app, "--bind", "127.0.0.1:0")
    assert code == 3, (out, err)
    assert (
        f"graceful-hypercorn: error: {app}: the app's lifespan startup failed: "
        "Lifespan failure in startup. 'database unreachable'\n"
    ) in err, err
    assert "Traceback" not in out + err, (out, err)


def test_an_address_in_use_is_one_line_and_exit_1() -> None:
    """1. The port is held by another socket. 2. graceful-hypercorn exits 1, as
    graceful-serve does, with one error line naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        code, out, err = run(APP, "--bind", address)
    assert code == 1, (out, err)
    assert f"graceful-hypercorn: error: cannot listen on {address}: Address already in use\n" in err
    assert "Traceback" not in out + err, (out, err)
