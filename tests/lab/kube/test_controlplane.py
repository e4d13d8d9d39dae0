"""`lab cluster up | down | status | kubeconfig` end to end: the real etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, `lab` as a subprocess, the built kubectl.

Missing binaries fail these tests (BinariesError names `make cluster-bins`); they never
skip. Several tests share one running cluster; the others each start their own, since
they stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.kube import bins
from lab.kube.state import ClusterState, ComponentRecord, kill_group, same_process, start_time
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


def _lab(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "lab"), "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def _kubectl(state: ClusterState, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    kubectl = bins.find().path("kubectl")
    return subprocess.run(
        [str(kubectl), "--kubeconfig", state.kubeconfig, "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ports(state: ClusterState) -> list[int]:
    """The API server's port and etcd's client and peer ports."""
    by_name = {r.name: r for r in state.components}
    etcd = by_name["etcd"].ports
    return [by_name["kube-apiserver"].ports["secure"], etcd["client"], etcd["peer"]]


def _assert_all_gone(state: ClusterState) -> None:
    assert len(state.components) == 4
    processes = [(r.pid, r.start_time) for r in state.components]
    wait_until(
        lambda: not any(same_process(*p) for p in processes),
        GONE_TIMEOUT,
        what=f"every component gone: {processes}",
    )
    ports = _ports(state)
    wait_until(
        lambda: not any(_accepts(p) for p in ports), GONE_TIMEOUT, what=f"ports {ports} closed"
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, ClusterState]]:
    """One cluster for the tests that do not stop it."""
    bins.find()  # missing binaries: BinariesError, naming `make cluster-bins`
    base = tmp_path_factory.mktemp("shared-cluster")
    with running(base / "state", base / "logs") as up:
        yield up, up.wait_ready()


def test_kubectl_works_against_the_cluster(shared: tuple[Up, ClusterState], tmp_path: Path) -> None:
    """1. `lab cluster up` is ready (the shared cluster).
    2. The built kubectl, with the printed kubeconfig: /readyz is ok, the server is
       v1.37.2, `get namespaces` lists default and kube-system, and the admin may do
       anything (`auth can-i '*' '*'`)."""
    _, state = shared
    readyz = _kubectl(state, tmp_path, "get", "--raw", "/readyz")
    assert readyz.returncode == 0 and readyz.stdout.strip() == "ok", readyz.stderr
    version = _kubectl(state, tmp_path, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == "v1.37.2"
    namespaces = _kubectl(state, tmp_path, "get", "namespaces", "-o", "name")
    assert {"namespace/default", "namespace/kube-system"} <= set(namespaces.stdout.split())
    can_i = _kubectl(state, tmp_path, "auth", "can-i", "*", "*")
    assert can_i.stdout.strip() == "yes", can_i.stderr


def test_status_and_kubeconfig_describe_the_running_cluster(
    shared: tuple[Up, ClusterState],
) -> None:
    """1. On the shared cluster, `lab cluster status` exits 0, names the API URL, and
       says each of the four components is healthy and the lab's one node is Ready.
    2. `lab cluster kubeconfig` prints the kubeconfig's path."""
    up, state = shared
    status = _lab("status", "--state-dir", str(up.state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert state.api_url in status.stdout
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        line = next(line for line in status.stdout.splitlines() if f" {name} " in line)
        assert line.rstrip().endswith("healthy") and "UNHEALTHY" not in line, status.stdout
    assert status.stdout.endswith("nodes:\n  lab-node-0               Ready=True (KubeletReady)\n")
    kubeconfig = _lab("kubeconfig", "--state-dir", str(up.state_dir))
    assert kubeconfig.returncode == 0 and kubeconfig.stdout.strip() == state.kubeconfig


def test_a_second_up_on_a_held_state_dir_is_refused(
    shared: tuple[Up, ClusterState], tmp_path: Path
) -> None:
    """1. While the shared cluster runs, a second `lab cluster up` on its state directory.
    2. It exits 2 naming the first one's PID.
    3. Nothing changed: cluster.json is the same, the first `up` and its components
       still run and the API server still answers."""
    up, state = shared
    before = (up.state_dir / "cluster.json").read_bytes()
    second = _lab("up", "--state-dir", str(up.state_dir))
    assert second.returncode == 2, second.stderr
    assert f"lab: error: {up.state_dir} is in use" in second.stderr
    assert f"(pid {up.process.pid})" in second.stderr
    assert (up.state_dir / "cluster.json").read_bytes() == before
    assert up.process.poll() is None
    assert all(same_process(r.pid, r.start_time) for r in state.components)
    assert _kubectl(state, tmp_path, "get", "--raw", "/readyz").stdout.strip() == "ok"


def test_an_api_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """1. Listen on a loopback port.
    2. `lab cluster up --api-port` that port exits 2 naming it, and has not even made
       its state directory."""
    bins.find()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _lab("up", "--state-dir", str(tmp_path / "state"), "--api-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"lab: error: --api-port {port}: 127.0.0.1:{port} is already in use" in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_binaries_are_refused_with_the_build_hint(tmp_path: Path) -> None:
    """1. `lab cluster up --bins` a directory without the binaries.
    2. It exits 2 with BinariesError's message: what is missing and `make cluster-bins`."""
    result = _lab("up", "--state-dir", str(tmp_path / "state"), "--bins", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"lab: error: control plane binaries not found in {tmp_path}")
    assert "make cluster-bins" in result.stderr
    assert not (tmp_path / "state").exists()


def test_sigint_stops_every_component(tmp_path: Path) -> None:
    """1. `lab cluster up`, wait for `cluster ready`.
    2. SIGINT to `up`: it stops the components in reverse order (scheduler first, etcd
       last) and exits 0.
    3. No recorded PID is alive; the API and etcd ports refuse connections; cluster.json
       is gone and `lab cluster status` says no cluster runs (exit 1)."""
    bins.find()
    with running(tmp_path / "state", tmp_path / "logs") as up:
        state = up.wait_ready()
        up.process.send_signal(signal.SIGINT)
        assert up.wait_exit() == 0, up.stderr()[-3000:]
        _assert_all_gone(state)
        stopping = [line for line in up.stderr().splitlines() if "stopping " in line]
        assert [line.rsplit(" ", 1)[1] for line in stopping] == [
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ]
        assert not (up.state_dir / "cluster.json").exists()
        status = _lab("status", "--state-dir", str(up.state_dir))
        assert status.returncode == 1 and "no cluster running" in status.stdout


def test_a_second_sigint_kills_every_component_at_once(tmp_path: Path) -> None:
    """1. `lab cluster up`, wait for `cluster ready`.
    2. SIGINT; as soon as it says it is stopping kube-apiserver (whose graceful stop
       takes about a second), SIGINT again.
    3. It takes the forced path (SIGKILL to every component) and exits 130; no recorded
       PID is alive and the ports refuse connections."""
    bins.find()
    with running(tmp_path / "state", tmp_path / "logs") as up:
        state = up.wait_ready()
        up.process.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping kube-apiserver" in up.stderr(), 30, what="the graceful stop")
        up.process.send_signal(signal.SIGINT)
        assert up.wait_exit() == 130, up.stderr()[-3000:]
        assert "second signal: SIGKILL to every component" in up.stderr()
        _assert_all_gone(state)


def test_sigkill_of_up_takes_the_components_down_and_the_next_up_sweeps(tmp_path: Path) -> None:
    """1. `lab cluster up`, wait for `cluster ready`; SIGKILL it.
    2. The components die with it (parent-death signal): their PIDs and ports are gone.
    3. Plant a live leftover: a `sleep 600` in its own session, recorded in the dead
       owner's cluster.json as a component with its real start time.
    4. The next `up` on the same state directory kills the leftover, says so and what
       stale files it removed, and becomes ready.
    5. `lab cluster down` exits 0; afterwards no recorded PID is alive and the ports
       refuse connections."""
    bins.find()
    state_dir, logs = tmp_path / "state", tmp_path / "logs"
    with running(state_dir, logs) as first:
        old = first.wait_ready()
        first.process.kill()
        first.wait_exit()
        _assert_all_gone(old)

    leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = start_time(leftover.pid)
        assert started is not None
        stale = ClusterState.load(state_dir)
        assert stale is not None and not stale.owner_alive()
        stale.components.append(ComponentRecord("sleep", leftover.pid, started, {}, ""))
        stale.save(state_dir)

        with running(state_dir, logs) as second:
            state = second.wait_ready()
            assert leftover.wait(5) == -signal.SIGKILL
            swept = second.stderr()
            assert f"killed leftover sleep (pid {leftover.pid})" in swept
            assert f"removed stale {state_dir.resolve() / 'cluster.json'}" in swept

            down = _lab("down", "--state-dir", str(state_dir))
            assert down.returncode == 0, down.stdout + down.stderr
            assert f"stopping lab cluster up (pid {second.process.pid})" in down.stdout
            assert "every component is gone" in down.stdout
            assert second.wait_exit() == 0
            _assert_all_gone(state)
            again = _lab("down", "--state-dir", str(state_dir))
            assert again.returncode == 0 and "no cluster running in" in again.stdout
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait(5)
