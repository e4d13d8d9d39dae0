"""Make a Docker Engine answer on this machine: `make system-deps` runs this file.

Standard library only, so it runs before the project's venv exists (`python3
src/lab/engine_setup.py`). An engine that already answers on DOCKER_HOST (or the default
socket) is used as it is. Otherwise: install Debian's `docker.io` (and `debootstrap`, for
the stand-in base image) with apt-get where `dockerd` is missing, then start `dockerd`,
through systemd where it runs, else as a daemon of its own, and wait for it to answer.
Installing and starting need root (or sudo, which is used when not root).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SOCKET = "/var/run/docker.sock"
PACKAGES = ("docker.io", "debootstrap")
DOCKERD_LOG = Path("/var/log/dockerd.log")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path() -> str | None:
    """The engine's unix socket from DOCKER_HOST, or the default; None for a tcp:// host
    (an engine the user set up elsewhere: pinged over tcp)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host.removeprefix("unix://")
    return None


def ping(timeout: float = 3.0) -> bool:
    """True when an engine answers GET /_ping with OK."""
    path = socket_path()
    conn: http.client.HTTPConnection
    if path is None:
        host = os.environ["DOCKER_HOST"].split("://", 1)[-1]
        conn = http.client.HTTPConnection(host, timeout=timeout)
    else:
        if not Path(path).exists():
            return False
        conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/_ping")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"OK"
    except OSError:
        return False
    finally:
        conn.close()


def _as_root(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", *argv]
    raise SystemExit(f"error: need root or sudo to run: {' '.join(argv)}")


def missing_packages() -> list[str]:
    """What apt must install: docker.io without dockerd, debootstrap without debootstrap."""
    missing = []
    if not shutil.which("dockerd"):
        missing.append("docker.io")
    if not shutil.which("debootstrap"):
        missing.append("debootstrap")
    return missing


def install(packages: list[str]) -> None:
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(_as_root(["apt-get", "update", "-qq"]), check=True, env=env)
    subprocess.run(
        _as_root(["apt-get", "install", "-y", "-qq", *packages]),
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _systemd_runs() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def start_dockerd() -> subprocess.Popen[bytes] | None:
    """Start the engine once: systemd's unit where systemd runs, else dockerd detached
    (its own session, so it outlives make) with its log in DOCKERD_LOG. Returns the
    detached process, so a dockerd that dies at once can be reported."""
    if _systemd_runs():
        print("starting docker with systemctl", flush=True)
        subprocess.run(_as_root(["systemctl", "start", "docker"]), check=True)
        return None
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    print(f"starting {dockerd} (log: {DOCKERD_LOG})", flush=True)
    argv = _as_root([dockerd])
    if argv[0] == "sudo":
        # sudo cannot open a root-owned log for us: let a root shell redirect it.
        argv = ["sudo", "sh", "-c", f"exec {dockerd} >>{DOCKERD_LOG} 2>&1"]
        return subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    with DOCKERD_LOG.open("ab") as log:
        return subprocess.Popen(
            argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


def wait_for_engine(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(timeout=2):
            return True
        time.sleep(0.5)
    return ping(timeout=2)


def ensure(timeout: float) -> int:
    if ping():
        print("docker engine answers: used as it is", flush=True)
        return 0
    if socket_path() != DEFAULT_SOCKET:
        # A dockerd started here would listen on the default socket, not there.
        print(f"error: no docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}")
        return 1
    missing = missing_packages()
    if missing:
        install(missing)
    started = None if ping() else start_dockerd()
    if not wait_for_engine(timeout):
        exited = started.poll() if started is not None else None
        why = f"dockerd exited with code {exited}" if exited is not None else "dockerd started"
        print(
            f"error: {why} but no engine answers on {socket_path()} after {timeout:g} s "
            f"(see {DOCKERD_LOG})",
            file=sys.stderr,
        )
        return 1
    print("docker engine answers", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="engine_setup",
        description="Make a Docker Engine answer here: use a running one, else install "
        "docker.io and debootstrap with apt-get and start dockerd (root or sudo).",
    )
    parser.add_argument(
        "--check", action="store_true", help="only say whether an engine answers (exit 0/1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for a started dockerd"
    )
    args = parser.parse_args(argv)
    if args.check:
        answers = ping()
        print("docker engine answers" if answers else "no docker engine answers")
        return 0 if answers else 1
    return ensure(args.timeout)


if __name__ == "__main__":
    sys.exit(main())
