"""Tools for the tests of `lab cluster`: one `lab cluster up` subprocess, the built
kubectl, and checks that every component is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.kube import bins
from lab.kube.health import api_client
from lab.kube.state import ClusterState, ComponentRecord, kill_group, same_process
from tests.support import REPO, VENV_BIN, wait_until

READY_TIMEOUT = 90.0  # a cold start on a busy 2-core machine; about 7 s when idle
GONE_TIMEOUT = 15.0


class Up:
    """One `lab cluster up` subprocess, its output in files (no pipe to fill)."""

    def __init__(self, state_dir: Path, logs: Path, *options: str) -> None:
        self.state_dir = state_dir
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("up-*.out")))
        self.out, self.err = logs / f"up-{n}.out", logs / f"up-{n}.err"
        self.records: list[ComponentRecord] = []
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "lab"), "cluster", "up", "--state-dir", str(state_dir), *options],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                start_new_session=True,
            )

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_ready(self) -> ClusterState:
        wait_until(
            lambda: (
                "cluster ready: KUBECONFIG=" in self.stdout() or self.process.poll() is not None
            ),
            READY_TIMEOUT,
            what="`lab cluster up` to print `cluster ready`",
        )
        assert "cluster ready" in self.stdout(), (
            f"lab cluster up exited {self.process.returncode}:\n{self.stderr()[-4000:]}"
        )
        state = ClusterState.load(self.state_dir)
        assert state is not None and state.ready
        assert self.stdout().strip() == f"cluster ready: KUBECONFIG={state.kubeconfig}"
        self.records = state.components
        return state

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"lab cluster up still runs after {timeout} s:\n{self.stderr()[-3000:]}")

    def kill_everything(self) -> None:
        """The test's forced path: SIGKILL `up` and every component it recorded (each
        only while its PID still has the recorded start time)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        latest = ClusterState.load(self.state_dir)
        for record in self.records + (latest.components if latest else []):
            kill_group(record.pid, record.start_time)


@contextlib.contextmanager
def running(state_dir: Path, logs: Path, *options: str) -> Iterator[Up]:
    up = Up(state_dir, logs, *options)
    try:
        yield up
    finally:
        if up.process.poll() is None:  # a graceful stop first, then the forced path
            up.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.process.wait(30)
        up.kill_everything()


def lab_cluster(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "lab"), "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def kubectl(
    state: ClusterState, cache: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The built kubectl with the cluster's kubeconfig; `stdin` for `apply -f -`."""
    kubectl = bins.find().path("kubectl")
    return subprocess.run(
        [str(kubectl), "--kubeconfig", state.kubeconfig, "--cache-dir", str(cache), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def component_ports(state: ClusterState) -> list[int]:
    """The API server's port and etcd's client and peer ports."""
    by_name = {r.name: r for r in state.components}
    etcd = by_name["etcd"].ports
    return [by_name["kube-apiserver"].ports["secure"], etcd["client"], etcd["peer"]]


def assert_all_gone(state: ClusterState) -> None:
    assert len(state.components) == 4
    processes = [(r.pid, r.start_time) for r in state.components]
    wait_until(
        lambda: not any(same_process(*p) for p in processes),
        GONE_TIMEOUT,
        what=f"every component gone: {processes}",
    )
    ports = component_ports(state)
    wait_until(
        lambda: not any(accepts(p) for p in ports), GONE_TIMEOUT, what=f"ports {ports} closed"
    )


class Recorder:
    """Every watch event of a namespace's Pods and EndpointSlices, with the wall time it
    arrived: the history a test checks rules against. One thread per kind, through the
    official client's watch; `stop` ends them."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import client

        self.api = api_client(Path(kubeconfig))
        core, discovery = client.CoreV1Api(self.api), client.DiscoveryV1Api(self.api)
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []  # wall, kind, type, obj
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.watches: list[Any] = []
        self.threads = [
            threading.Thread(
                target=self._watch, args=("Pod", core.list_namespaced_pod, namespace), daemon=True
            ),
            threading.Thread(
                target=self._watch,
                args=("EndpointSlice", discovery.list_namespaced_endpoint_slice, namespace),
                daemon=True,
            ),
        ]
        for thread in self.threads:
            thread.start()

    def _watch(self, kind: str, fn: Any, namespace: str) -> None:
        from kubernetes import watch

        version: dict[str, str] = {}  # a new watch goes on from the last event's version
        while not self.stopping.is_set():
            w = watch.Watch()
            self.watches.append(w)
            with contextlib.suppress(Exception):
                stream = w.stream(fn, namespace, deserialize=False, timeout_seconds=30, **version)
                for event in stream:
                    obj = event["object"]
                    version = {"resource_version": obj["metadata"]["resourceVersion"]}
                    if event["type"] == "BOOKMARK":
                        continue
                    with self.lock:
                        self.events.append((time.time(), kind, event["type"], obj))
                    if self.stopping.is_set():
                        return

    def of(self, kind: str) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return [(t, typ, obj) for t, k, typ, obj in self.events if k == kind]

    def stop(self) -> None:
        self.stopping.set()
        for w in self.watches:
            w.stop()
        for thread in self.threads:
            thread.join(10)
        self.api.close()


def node_events(state_dir: Path) -> list[dict[str, Any]]:
    """The lab's nodes' event log (`<state>/nodes/events.jsonl`)."""
    path = state_dir / "nodes" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
