"""The engine set-up and the image build fail clearly where no engine answers, and find a
running engine without installing anything."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab import engine_setup, image_build
from tests.support import REPO

SETUP = REPO / "src" / "lab" / "engine_setup.py"


def test_check_says_no_engine_on_a_dead_socket(tmp_path: Path) -> None:
    """Scenario: 1. DOCKER_HOST names a unix socket file nobody listens on; 2. `--check`
    exits 1 and says no engine answers (it installs and starts nothing)."""
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))  # bound, never listening: connect is refused
    result = subprocess.run(
        [sys.executable, str(SETUP), "--check"],
        env={"DOCKER_HOST": f"unix://{dead}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no docker engine answers" in result.stdout


def test_tcp_docker_host_that_does_not_answer_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: 1. DOCKER_HOST=tcp://127.0.0.1:<closed port> (an engine set up elsewhere);
    2. ensure() neither installs nor starts a local dockerd: it fails naming DOCKER_HOST."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    assert engine_setup.ensure(timeout=1) == 1
    assert f"DOCKER_HOST=tcp://127.0.0.1:{port}" in capsys.readouterr().out


def test_running_engine_is_used_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: 1. the engine `make system-deps` set up answers; 2. ensure() returns 0 at
    once and says the engine is used as it is (no apt-get, no dockerd)."""
    if not engine_setup.ping():
        pytest.skip("no Docker engine answers here: make system-deps starts one")
    assert engine_setup.ensure(timeout=1) == 0
    assert "used as it is" in capsys.readouterr().out


def test_image_build_without_engine_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: 1. DOCKER_HOST names a socket where no engine runs; 2. `python -m
    lab.image_build` exits 1 and tells to run `make system-deps`."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert image_build.main([]) == 1
    assert "make system-deps" in capsys.readouterr().err


def test_default_base_is_the_dockerfiles_arg() -> None:
    """Scenario: 1. read the default base from deploy/Dockerfile; 2. it is the slim
    Python 3.11 image the Dockerfile names, written down once."""
    assert image_build.default_base() == "python:3.11-slim-bookworm"


def test_dockerd_that_dies_at_once_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: 1. no engine answers on the default socket; `dockerd` on PATH is a
    script that fails at once (as a dockerd with a broken config does); debootstrap is
    there, so nothing is installed; 2. ensure() starts it, waits 1 s for the engine and
    fails, saying dockerd exited with its code and where its log is."""
    if engine_setup._systemd_runs() or shutil.which("debootstrap") is None:
        pytest.skip("needs a machine without systemd and with debootstrap installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    dockerd = fake / "dockerd"
    dockerd.write_text("#!/bin/sh\necho 'failed to start daemon: bad config' >&2\nexit 3\n")
    dockerd.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin")
    # The default socket moved into tmp_path: nothing answers there.
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(engine_setup, "DEFAULT_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.setattr(engine_setup, "DOCKERD_LOG", tmp_path / "dockerd.log")
    assert engine_setup.ensure(timeout=1) == 1
    err = capsys.readouterr().err
    assert "dockerd exited with code 3" in err
    assert str(tmp_path / "dockerd.log") in err
    assert "bad config" in (tmp_path / "dockerd.log").read_text()


def test_unix_docker_host_elsewhere_starts_no_dockerd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: 1. DOCKER_HOST names a unix socket other than the default, where nothing
    answers; 2. ensure() fails naming DOCKER_HOST, without starting a dockerd (which would
    listen on the default socket, not there)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/elsewhere.sock")
    monkeypatch.setattr(engine_setup, "start_dockerd", lambda: pytest.fail("started dockerd"))
    assert engine_setup.ensure(timeout=1) == 1
    assert f"DOCKER_HOST=unix://{tmp_path}/elsewhere.sock" in capsys.readouterr().out
