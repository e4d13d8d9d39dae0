"""The targets (four peer servers, three of them also with graceful, and calc v10), how to start one on loopback, and the
accounting of its whole process tree.

A target's command comes from the same two files the lab runs it from: the Deployment
manifest `k8s/<manifest>-prestop.yml` (its container and env) and the image map
`images.yml` (the image's CMD and env), resolved by the lab's own `lab.images.resolve`
with POD_IP=127.0.0.1 and a free PORT. So the one-replica parts measure exactly what a
lab pod runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procstat import cpu_seconds
from lab import manifest
from lab.images import ImageMap, Launch, resolve

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGES = HERE / "images.yml"
K8S = HERE / "k8s"


@dataclass(frozen=True)
class Peer:
    name: str  # as printed in the tables
    manifest: str  # k8s/<manifest>-prestop.yml, k8s/<manifest>-nostop.yml
    server: str  # what runs, as a user would say it


PEERS: tuple[Peer, ...] = (
    Peer("calc-v10", "calc", "calc serve --profile v10 (uvicorn + graceful core)"),
    Peer("uvicorn", "uvicorn", "uvicorn app:app"),
    Peer("hypercorn", "hypercorn", "hypercorn app:app"),
    Peer("granian", "granian", "granian --interface asgi app:app"),
    Peer("gunicorn", "gunicorn", "gunicorn -k uvicorn.workers.UvicornWorker app:app"),
    # The same app on the same servers with graceful's phased shutdown.
    Peer("uvicorn+graceful", "uvicorn-graceful", "graceful-serve app:app"),
    Peer("hypercorn+graceful", "hypercorn-graceful", "graceful-hypercorn app:app"),
    Peer("gunicorn+graceful", "gunicorn-graceful", "gunicorn -k graceful.gunicorn.Worker app:app"),
)
PEER_BY_NAME = {p.name: p for p in PEERS}
BASELINE = "calc-v10"


def manifest_path(peer: Peer, prestop: bool) -> Path:
    return K8S / f"{peer.manifest}-{'prestop' if prestop else 'nostop'}.yml"


def launch(peer: Peer, host: str, port: int, pod_dir: Path | None = None) -> Launch:
    """The command, env and working dir of one pod of `peer`, bound to host:port;
    `pod_dir` stands in for the pod's scratch dir (calc's spool goes there)."""
    deployment = manifest.load(manifest_path(peer, prestop=True)).deployment
    container = deployment.template.container
    image = ImageMap.load(IMAGES).image(container.image)
    image = dataclasses.replace(image, env={**image.env, "PORT": str(port)})
    return resolve(container, image, f"{peer.manifest}-bench", host, os.environ, pod_dir=pod_dir)


class Server:
    """One target on loopback, in its own session; `stop()` always leaves nothing behind."""

    def __init__(self, peer: Peer, host: str, port: int, log: Path) -> None:
        self.peer = peer
        self.url = f"http://{host}:{port}"
        spec = launch(peer, host, port, pod_dir=log.parent)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(spec.argv),
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.peer.name} exited with {self.process.returncode} before answering; "
                    f"log: {self.log}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.peer.name} did not answer /health within {timeout} s")

    def terminate(self) -> None:
        """SIGTERM to the main process only, as the kubelet does."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the whole group (workers too)."""
        if self.process.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (gunicorn's or granian's master and workers)."""
    children = _children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu(pid: int) -> dict[int, float]:
    """Own user + system CPU seconds of every live process in the tree, by pid."""
    result = {}
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            result[member] = cpu_seconds(member)
    return result


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def tree_peak_rss_mib(pid: int) -> float:
    """Sum of every tree member's peak RSS (VmHWM): an upper bound for a multi-process
    server, since pages shared after fork count once per process."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total
