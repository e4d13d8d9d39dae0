"""`lab cluster up | down | status | kubeconfig` end to end: the real etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, `lab` as a subprocess, the built kubectl.

Missing binaries fail these tests (BinariesError names `make cluster-bins`); they never
skip. Several tests share one running cluster; the others each start their own, since
they stop it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.kube import bins
from lab.kube.state import ClusterState, ComponentRecord, same_process, start_time
from tests.lab.kube.kubekit import Up, assert_all_gone, kubectl, lab_cluster, running
from tests.support import wait_until


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
    readyz = kubectl(state, tmp_path, "get", "--raw", "/readyz")
    assert readyz.returncode == 0 and readyz.stdout.strip() == "ok", readyz.stderr
    version = kubectl(state, tmp_path, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == "v1.37.2"
    namespaces = kubectl(state, tmp_path, "get", "namespaces", "-o", "name")
    assert {"namespace/default", "namespace/kube-system"} <= set(namespaces.stdout.split())
    can_i = kubectl(state, tmp_path, "auth", "can-i", "*", "*")
    assert can_i.stdout.strip() == "yes", can_i.stderr


def test_status_and_kubeconfig_describe_the_running_cluster(
    shared: tuple[Up, ClusterState],
) -> None:
    """1. On the shared cluster, `lab cluster status` exits 0, names the API URL, and
       says each of the four components is healthy and the lab's one node is Ready.
    2. `lab cluster kubeconfig` prints the kubeconfig's path."""
    up, state = shared
    status = lab_cluster("status", "--state-dir", str(up.state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert state.api_url in status.stdout
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        line = next(line for line in status.stdout.splitlines() if f" {name} " in line)
        assert line.rstrip().endswith("healthy") and "UNHEALTHY" not in line, status.stdout
    assert status.stdout.endswith("nodes:\n  lab-node-0               Ready=True (KubeletReady)\n")
    kubeconfig = lab_cluster("kubeconfig", "--state-dir", str(up.state_dir))
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
    second = lab_cluster("up", "--state-dir", str(up.state_dir))
    assert second.returncode == 2, second.stderr
    assert f"lab: error: {up.state_dir} is in use" in second.stderr
    assert f"(pid {up.process.pid})" in second.stderr
    assert (up.state_dir / "cluster.json").read_bytes() == before
    assert up.process.poll() is None
    assert all(same_process(r.pid, r.start_time) for r in state.components)
    assert kubectl(state, tmp_path, "get", "--raw", "/readyz").stdout.strip() == "ok"


def test_an_api_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """1. Listen on a loopback port.
    2. `lab cluster up --api-port` that port exits 2 naming it, and has not even made
       its state directory."""
    bins.find()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lab_cluster("up", "--state-dir", str(tmp_path / "state"), "--api-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"lab: error: --api-port {port}: 127.0.0.1:{port} is already in use" in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_binaries_are_refused_with_the_build_hint(tmp_path: Path) -> None:
    """1. `lab cluster up --bins` a directory without the binaries.
    2. It exits 2 with BinariesError's message: what is missing and `make cluster-bins`."""
    result = lab_cluster("up", "--state-dir", str(tmp_path / "state"), "--bins", str(tmp_path))
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
        assert_all_gone(state)
        stopping = [line for line in up.stderr().splitlines() if "stopping " in line]
        assert [line.rsplit(" ", 1)[1] for line in stopping] == [
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ]
        assert not (up.state_dir / "cluster.json").exists()
        status = lab_cluster("status", "--state-dir", str(up.state_dir))
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
        assert_all_gone(state)


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
        assert_all_gone(old)

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

            down = lab_cluster("down", "--state-dir", str(state_dir))
            assert down.returncode == 0, down.stdout + down.stderr
            assert f"stopping lab cluster up (pid {second.process.pid})" in down.stdout
            assert "every component is gone" in down.stdout
            assert second.wait_exit() == 0
            assert_all_gone(state)
            again = lab_cluster("down", "--state-dir", str(state_dir))
            assert again.returncode == 0 and "no cluster running in" in again.stdout
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait(5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--endpoint-lag", "soon"], "lab: error: --endpoint-lag: "),
        (
            ["--image-map", "/nonexistent/images.yml"],
            "lab: error: --image-map /nonexistent/images.yml: ",
        ),
        (["--nodes", "0"], "lab: error: --nodes must be at least 1"),
    ],
)
def test_bad_node_options_are_refused_before_anything_starts(
    tmp_path: Path, options: list[str], message: str
) -> None:
    """1. `lab cluster up` with a bad node option (lag, image map, node count).
    2. It exits 2 with `lab: error:` naming the option, and makes no state directory."""
    result = lab_cluster("up", "--state-dir", str(tmp_path / "state"), *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "state").exists()
