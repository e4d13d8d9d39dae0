"""`lab cluster up | down | status | kubeconfig`: parse the options into a ClusterConfig
and run the control plane in the foreground, or act on the one a state directory holds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab.config import default_image_map
from lab.images import ImageMap
from lab.kube import node_bins, node_images
from lab.kube import state as st
from lab.kube.bins import BinariesError
from lab.kube.controlplane import (
    KUBELETS,
    RUNTIMES,
    ClusterConfig,
    ClusterConfigError,
    ClusterError,
    ControlPlane,
)
from lab.kube.leftovers import NODES_DIR
from lab.kube.real_nodes import RealNodes, RealNodesError, hold_machine
from lab.kube.status import cluster_status, render
from lab.kube.workers import Workers
from lab.lag import Lag, LagError, parse_lag
from lab.manifest import ManifestError
from lab.stopping import Signals
from lab.waits import stop_task

DEFAULT_STATE_DIR = Path("out/cluster")
DOWN_TIMEOUT = 60.0

UP_EPILOG = """\
The nodes run the pods the scheduler binds to them; each LoadBalancer Service gets a
balancer at a loopback address of its own (its EXTERNAL-IP) in front of every node's
proxy. `kubectl annotate node NAME lab.graceful-calc/fault=node-failure` fails a node.

Prints `cluster ready: KUBECONFIG=<path>` on stdout once every component is healthy,
then runs until SIGINT or SIGTERM, which stop the components gracefully (SIGTERM each,
in reverse order, then SIGKILL what is left); a second signal kills them at once.

Exit codes: 0 after a graceful stop on SIGINT/SIGTERM, since a signal is how a cluster
in the foreground is meant to end; 128 + the signal's number (130 for SIGINT) when a
signal came before the cluster was ready or a second signal forced the stop; 1 when a
component failed to start or died; 2 for bad options and for what is refused before
anything starts (missing binaries, --api-port in use, a state directory another live
`lab cluster up` holds).
"""


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the cluster's state directory (default {DEFAULT_STATE_DIR})",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="a real Kubernetes control plane on this machine (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler)",
        description="A real Kubernetes control plane as the lab's own processes, on loopback.",
    )
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    up = actions.add_parser(
        "up",
        help="start a control plane and keep it in the foreground",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_dir_option(up)
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes the lab's kubelet registers, lab-node-0 .. lab-node-N-1 (default 1)",
    )
    up.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="the nodes' pods as process groups on loopback (default) or Docker containers "
        "of the image `make image` built",
    )
    up.add_argument(
        "--kubelet",
        choices=KUBELETS,
        default="lab",
        help="the nodes' kubelet: the lab's own (default), or the real kubelet with its "
        "containerd (lab-real-0 ..; `make cluster-bins` builds them)",
    )
    up.add_argument(
        "--node-monitor-grace-period",
        type=float,
        metavar="S",
        help="seconds without a node heartbeat before the node is not ready "
        "(default: Kubernetes', 50 since 1.32)",
    )
    up.add_argument(
        "--unreachable-toleration",
        type=int,
        metavar="S",
        help="seconds a pod stays bound to an unreachable node (default: Kubernetes', 300)",
    )
    up.add_argument(
        "--not-ready-toleration",
        type=int,
        metavar="S",
        help="seconds a pod stays bound to a not-ready node (default: Kubernetes', 300)",
    )
    up.add_argument(
        "--endpointslice-batch",
        type=float,
        metavar="S",
        help="the EndpointSlice controller's batch period (default: Kubernetes', 0)",
    )
    up.add_argument(
        "--api-port", type=int, metavar="P", help="the API server's port (default: free)"
    )
    up.add_argument(
        "--endpoint-lag",
        default="1",
        help="each node proxy's propagation lag, drawn per change: SECONDS, MIN-MAX or "
        "lognormal:MEDIAN,P99 (default 1)",
    )
    up.add_argument("--seed", type=int, help="seed of the lag draws")
    up.add_argument(
        "--image-map",
        type=Path,
        help="how the pods' images run here (default deploy/lab-images.yml)",
    )
    up.add_argument(
        "--bins",
        type=Path,
        metavar="DIR",
        help="the binaries' directory (default: the build cache)",
    )
    for name, text in (
        ("down", "stop the cluster of a state directory, or clean up after a dead one"),
        ("status", "whether it runs, each component's health, the nodes; exit 0 if healthy"),
        ("kubeconfig", "print the path of the running cluster's kubeconfig"),
    ):
        _state_dir_option(actions.add_parser(name, help=text, description=text))


def _progress(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop it
        print(f"lab cluster: {line}", file=sys.stderr, flush=True)


def config_from(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        state_dir=args.state_dir,
        bins_dir=args.bins,
        nodes=args.nodes,
        runtime=args.runtime,
        kubelet=args.kubelet,
        node_monitor_grace=args.node_monitor_grace_period,
        not_ready_toleration=args.not_ready_toleration,
        unreachable_toleration=args.unreachable_toleration,
        endpointslice_batch=args.endpointslice_batch,
        api_port=args.api_port,
        image_map=args.image_map,
        endpoint_lag=_lag(args.endpoint_lag),
        seed=args.seed,
    )


def _lag(text: str) -> Lag:
    try:
        return parse_lag(text)
    except LagError as exc:
        raise ClusterConfigError(f"--endpoint-lag: {exc}") from None


def _workers(plane: ControlPlane, images: ImageMap) -> Workers:
    config = plane.config
    return Workers(
        plane.client(),
        plane.state_dir / NODES_DIR,
        config.nodes,
        images,
        config.endpoint_lag,
        config.runtime,
        config.seed,
    )


async def _first(*aws: asyncio.Future[Any]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


async def serve(config: ClusterConfig, signals: Signals) -> int:
    """`up` without the CLI: start, announce, wait for a signal or a failure, stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # the first SIGINT/SIGTERM
    forced = asyncio.Event()  # the second

    def on_signal(signum: int) -> None:  # records only; the code below acts
        signals.record(signum)
        stop.set()
        if len(signals.received) > 1:
            forced.set()

    for sig in Signals.STOPPING:
        loop.add_signal_handler(sig, on_signal, sig)
    if signals.received:  # came before the loop's handlers were in place
        stop.set()
        if len(signals.received) > 1:
            forced.set()

    plane = ControlPlane(config, progress=_progress)
    image_map = config.image_map or default_image_map()
    try:
        images = ImageMap.load(image_map)
    except (ManifestError, OSError) as exc:
        print(f"lab: error: --image-map {image_map}: {exc}", file=sys.stderr)
        return 2
    try:
        plane.preflight()
        # Real nodes: their binaries, and the machine to themselves, before anything starts.
        machine = hold_machine() if config.kubelet == "real" and node_bins.find() else None
    except (BinariesError, ClusterConfigError, RealNodesError) as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    try:
        return await _serve(config, signals, plane, images, stop, forced)
    finally:
        if machine is not None:
            os.close(machine)


async def _serve(
    config: ClusterConfig,
    signals: Signals,
    plane: ControlPlane,
    images: ImageMap,
    stop: asyncio.Event,
    forced: asyncio.Event,
) -> int:
    code = 0
    stopped = asyncio.create_task(stop.wait())
    workers: list[Workers] = []
    real: list[RealNodes] = []

    async def bring_up() -> None:
        await plane.start()
        if config.kubelet == "real":
            nodes_dir = plane.state_dir / NODES_DIR
            pki_dir = plane.state_dir / "pki"
            nodes = RealNodes(
                plane.client(), plane.api_url, pki_dir, nodes_dir, config.nodes, _progress,
                images=tuple(node_images.references(images.images)),
            )  # fmt: skip
            real.append(nodes)
            await nodes.start()
            names = ", ".join(nodes.names)
            _progress(f"{config.nodes} real node(s) Ready in {nodes.ready_after:.1f} s: {names}")
            return
        # The nodes, on the healthy control plane and before "cluster ready".
        workers.append(_workers(plane, images))
        await workers[0].start()
        _progress(
            f"{config.nodes} node(s) ready: {', '.join(n.name for n in workers[0].node_states)}"
        )

    try:
        starting = asyncio.create_task(bring_up())
        await _first(starting, stopped)
        if not starting.done():
            first = signal.Signals(signals.received[0]).name if signals.received else "signal"
            _progress(f"{first}: start abandoned")
            await stop_task(starting, timeout=10)
        else:
            starting.result()
            plane.mark_ready()
            print(f"cluster ready: KUBECONFIG={plane.kubeconfig}", flush=True)
            exited = asyncio.create_task(plane.first_exit())
            await _first(exited, stopped)
            if exited.done():
                print(f"lab: failed: {exited.result()}", file=sys.stderr)
                code = 1
            await stop_task(exited)
    except ClusterError as exc:
        print(f"lab: failed: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # the nodes could not start: say why, then stop everything
        print(f"lab: failed: starting the nodes: {exc}", file=sys.stderr)
        code = 1
    finally:
        await stop_task(stopped)
        for nodes in real:  # before the control plane, as the lab's nodes
            try:
                for line in await nodes.stop():
                    _progress(line)
            finally:
                nodes.api.close()
        for worker in workers:  # before the control plane: the pods' last reports
            try:
                await worker.stop()
            finally:
                worker.api.close()
        code = await _stop(plane, signals, forced, code)
    return code


async def _stop(plane: ControlPlane, signals: Signals, forced: asyncio.Event, code: int) -> int:
    """The graceful stop; a second signal, before or during it, takes the forced path."""
    if forced.is_set():
        plane.kill()
    stopping = asyncio.create_task(plane.stop())
    second = asyncio.create_task(forced.wait())
    await _first(stopping, second)
    if not stopping.done():
        _progress("second signal: SIGKILL to every component")
        plane.kill()
        await stopping  # only reaping is left, each with a deadline
    await stop_task(second)
    stopping.result()
    _progress("every component is stopped")
    if signals.received and (forced.is_set() or plane.state is None or not plane.state.ready):
        return 128 + signals.received[0]
    return code


def up(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ClusterConfigError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    # Until the loop's handlers are in place, signals are recorded, not fatal.
    with Signals().installed() as signals:
        return asyncio.run(serve(config, signals))


def down(state_dir: Path) -> int:
    state_dir = state_dir.resolve()
    lock = st.StateLock(state_dir)
    if not state_dir.is_dir():
        print(f"no cluster running in {state_dir}")
        return 0
    recorded = st.ClusterState.load(state_dir)
    if lock.try_acquire():
        try:
            done = st.sweep(state_dir)
        finally:
            lock.release()
        for line in done:
            print(line)
        print(
            f"no cluster running in {state_dir}" + ("; cleaned up after a dead one" if done else "")
        )
        return 0
    owner = lock.holder()
    if owner is None:
        print(f"lab: error: cannot tell which process holds {lock.path}", file=sys.stderr)
        return 1
    print(f"stopping lab cluster up (pid {owner}) in {state_dir}", flush=True)
    began = time.monotonic()
    os.kill(owner, signal.SIGTERM)
    deadline = began + DOWN_TIMEOUT
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    # The records from before the owner stopped (a clean stop removes the file), and any
    # newer ones (it was still starting then).
    records = {(r.pid, r.start_time): r for r in (recorded.components if recorded else [])}
    latest = st.ClusterState.load(state_dir)
    records.update({(r.pid, r.start_time): r for r in (latest.components if latest else [])})
    try:
        leftovers = [r for r in records.values() if st.kill_group(r.pid, r.start_time)]
        for record in leftovers:
            print(f"killed {record.name} (pid {record.pid}): still alive after its owner stopped")
        st.wait_gone([(r.pid, r.start_time) for r in leftovers], 10.0)
        if not lock.held:
            print(f"lab: failed: pid {owner} still runs {DOWN_TIMEOUT:g} s after SIGTERM", file=sys.stderr)  # fmt: skip
            return 1
        for line in st.sweep(state_dir):
            print(line)
    finally:
        lock.release()
    print(f"stopped in {time.monotonic() - began:.1f} s; every component is gone")
    return 0


def run(args: argparse.Namespace) -> int:
    command: str = args.cluster_command
    if command == "up":
        return up(args)
    if command == "down":
        return down(args.state_dir)
    if command == "status":
        status = cluster_status(args.state_dir)
        print(render(status))
        return 0 if status.healthy else 1
    state = st.ClusterState.load(args.state_dir.resolve())
    if state is None or not state.owner_alive() or not state.ready:
        print(f"lab: error: no cluster running in {args.state_dir.resolve()}", file=sys.stderr)
        return 1
    print(state.kubeconfig)
    return 0
