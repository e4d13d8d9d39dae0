"""One experiment: parts up, pods deployed, load, the action, teardown, accounting.

`run_experiment(config)` is the whole program without the CLI. Every check that can
fail on bad input runs before any process starts. Every process goes through one
registry and is gone when this returns, also after Ctrl-C (SIGINT/SIGTERM only record;
the main coroutine acts) or an error: a run is a list of steps, each with its own undo
(lab.steps), and every way out undoes them in reverse, each under a deadline.

The first SIGINT or SIGTERM stops the experiment and tears it down gracefully (the load
stops, every pod is deleted with its preStop and grace period); a second one skips that
and kills every process the lab started. Either way `Interrupted` carries the first signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lab import accounting, blackhole, capacity, html_report, leftovers, plot, quick, report
from lab.blackhole import Blackhole
from lab.config import ConfigError, LabConfig
from lab.controller import DeploymentController
from lab.endpoints import EndpointsController
from lab.events import EventLog
from lab.faults import Faults
from lab.haproxy import HAProxy, HAProxyError, HealthChecks
from lab.images import ImageMap, image_paths, resolve, unresolved
from lab.influx import INFLUX_SERVICE, InfluxServer, free_port, uses_influx
from lab.k6 import (
    K6,
    describe_exit,
    describe_request,
    describe_script,
    find_k6,
    load_env,
    operations_unmeasured,
)
from lab.manifest import Container, ManifestError, Manifests, Service, Supporting, load
from lab.pods import AddressPool, Kubelet, Pod
from lab.probes import describe
from lab.procs import Registry
from lab.runtime import ProcessRuntime, Runtime
from lab.steps import Steps
from lab.stopping import Interrupted as Interrupted  # re-exported for the CLIs
from lab.stopping import Signals
from lab.waits import stop_task

if TYPE_CHECKING:
    from lab.kube.experiment import KubeLab

K6_STOP_WHEN_INTERRUPTED = 3.0  # seconds for k6 to stop after a signal, then SIGKILL
FORCED_TEARDOWN = 15.0  # seconds for the forced walk after a second signal, then cut
CLOSE = 60.0  # seconds to remove what the run made (a runtime, InfluxDB), on every way out
FRONT_CHECKS = HealthChecks()  # the --nodes balancer's checks of each node (cloud defaults)

INFLUX_DB = "calc"


class LabError(RuntimeError):
    pass


class OperationLog(Protocol):
    """Where the report reads the pods' operations: the lab's InfluxDB, or a cluster's."""

    def field_values(self, db: str, measurement: str, field: str) -> list[object]: ...


@dataclass
class Prepared:
    """Everything checked before a process starts."""

    config: LabConfig
    manifests: Manifests
    images: ImageMap
    uses_influx: bool
    k6_binary: str
    notes: list[str] = field(default_factory=list)
    update: Manifests | None = None  # the update scenario's new manifests
    # Deployments that run beside the one under test, one pod each, without load.
    supporting: list[Supporting] = field(default_factory=list)
    # Services the lab's InfluxDB stands in for (beyond `influxdb:8086`).
    influx_services: list[Service] = field(default_factory=list)
    influx_db: str = INFLUX_DB  # the database the pods write to


def _check_runnable(
    images: ImageMap, containers: list[tuple[Container, str]], commands: bool = True
) -> list[str]:
    """Every container's image is in the image map, and (with `commands`: the process
    runtime, which runs them on this machine) every command it would run (its own, exec
    probes and hooks) is on this machine: else one error listing them all. Returns notes
    on values that look like unmapped files inside the image."""
    problems: list[str] = []
    notes: list[str] = []
    for container, what in containers:
        try:
            image = images.image(container.image)
        except ManifestError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        # Resolve the command and env once with stand-in pod values (and volumes in a
        # scratch dir), so that a container the image map cannot run fails here, before
        # anything starts.
        with tempfile.TemporaryDirectory(prefix="lab-check-") as scratch:
            launch = resolve(
                container, image, "check", "127.0.0.2", dict(os.environ), pod_dir=Path(scratch)
            )
            # In a container the image's own files run: a command missing there fails
            # as it would in a cluster, and the probe or start failure explains it.
            found = unresolved(container, image, launch, images.source) if commands else []
            notes += [f"{what}: {n}" for n in image_paths(container, image, launch)]
        problems += [f"{what}: {p}" for p in found]
    if problems:
        raise ManifestError("\n  ".join(["commands the image map cannot resolve:", *problems]))
    return notes


def _influx_db(config: LabConfig, replaced: list[Supporting]) -> str:
    """The database the pods write to: the one a replaced InfluxDB Deployment names in
    INFLUXDB_DB (the official image creates it at first start), else `calc`."""
    names = {
        v.value
        for s in replaced
        for v in s.deployment.template.container.env
        if v.name == "INFLUXDB_DB" and v.value
    }
    if len(names) > 1:
        raise ManifestError(
            f"{config.manifests}: the InfluxDB Deployments name different databases "
            f"(INFLUXDB_DB {', '.join(sorted(names))}); the lab runs one"
        )
    return names.pop() if names else INFLUX_DB


def prepare(config: LabConfig) -> Prepared:
    config.validate()
    manifests = load(config.manifests, config.deployment)
    update = load(config.update_to, config.deployment) if config.update_to is not None else None
    images = ImageMap.load(config.image_map_path)
    containers = [manifests.deployment.template.container]
    if update is not None:
        containers.append(update.deployment.template.container)
        if update.target_port != manifests.target_port:
            raise ConfigError(
                f"--update-to: the new pods listen on {update.target_port}, the Service sends "
                f"to {manifests.target_port}"
            )
    supporting = [s for s in manifests.supporting if s.replaced_by is None]
    replaced = [s for s in manifests.supporting if s.replaced_by is not None]
    path_notes = _check_runnable(
        images,
        [
            *((c, f"{config.manifests}") for c in containers),
            *(
                (s.deployment.template.container, f"{s.source} (Deployment {s.deployment.name})")
                for s in supporting
            ),
        ],
        commands=config.runtime != "docker",
    )
    notes = [*manifests.notes, *path_notes]
    if config.runtime == "process" and (why := blackhole.available()) is not None:
        notes.append(f"a gone pod's address answers with an instant RST, not silence: {why}")
    for s in supporting:
        notes.append(
            f"Deployment {s.deployment.name} ({s.source}) runs beside "
            f"{manifests.deployment.name} as one pod, without load through it"
        )
    for s in replaced:
        notes.append(
            f"Deployment {s.deployment.name} ({s.source}, image "
            f"{s.deployment.template.container.image}) replaced by the lab's own InfluxDB"
        )
    influx_services = [svc for s in replaced for svc in s.services]
    influx_db = _influx_db(config, replaced)
    writers = [*containers, *(s.deployment.template.container for s in supporting)]
    writes_influx = bool(replaced) or any(uses_influx(c) for c in writers)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        raise ConfigError("haproxy is not installed (apt-get install haproxy, or make setup)")
    if writes_influx and shutil.which("influxd") is None:
        raise ConfigError("the manifests use InfluxDB but influxd is not installed")
    replicas = config.replicas if config.replicas is not None else manifests.deployment.replicas
    if replicas < 1:
        raise ConfigError("--replicas: the experiment needs at least one replica to send load to")
    # The most pods at once must fit the run's addresses and this machine's memory.
    notes.append(capacity.check(config, manifests, update))
    for fault in config.faults:
        if fault.kind.startswith("influx-") and not writes_influx:
            raise ConfigError(f"--fault {fault}: these manifests do not use InfluxDB")
        if fault.kind == "node-failure" and (why := blackhole.available()) is not None:
            raise ConfigError(f"--fault {fault}: a dead node's address needs nftables: {why}")
    if config.runtime == "docker":
        from lab.docker_runtime import check_docker

        check_docker(manifests, update)
    return Prepared(
        config,
        manifests,
        images,
        writes_influx,
        find_k6(),
        notes,
        update,
        supporting,
        influx_services,
        influx_db,
    )


def run_experiment(config: LabConfig, signals: Signals | None = None) -> report.Report:
    """Run one experiment to the end and return its report (also written to `out`).

    `signals` is shared with a caller that runs several (`lab matrix`): a signal it
    recorded before this experiment starts stops it before anything starts."""
    prepared = prepare(config)
    signals = signals if signals is not None else Signals()
    if signals.first is not None:
        raise Interrupted(signals.first)
    # --out is this run's alone while it runs; what a killed run left there goes first.
    claim = leftovers.Claim(config.out)
    try:
        swept = claim.take()
    except leftovers.Held as exc:
        raise ConfigError(f"--out: {exc}") from None
    except OSError as exc:  # a full or read-only disk: nothing has started yet
        raise ConfigError(
            f"--out {config.out}: cannot write there: {exc.strerror or exc}"
        ) from None
    for line in swept:
        print(f"lab: {line}", file=sys.stderr, flush=True)
    cleaned: list[bool] = []
    try:
        if config.quick:  # the shortened copy goes in --out, now that the run holds it
            copied = quick.copy_manifests(config)
            prepared = prepare(copied.runs)
            prepared.config = copied.reported
        return asyncio.run(_main(prepared, signals, cleaned))
    finally:
        claim.release(clean=bool(cleaned))


async def _stop_and_report(lab: Lab | KubeLab, signal_name: str) -> report.Report | None:
    """The graceful teardown, then the report of the run so far: every pod was deleted
    gracefully, so what its operation log held is stored and the accounting is exact
    up to the interruption. None when a second signal forced the teardown."""
    await lab.teardown()
    if lab.steps.forced:
        return None
    return await lab.partial_report(f"{signal_name} at {lab.events.now():.1f} s")


async def _main(
    prepared: Prepared, signals: Signals, cleaned: list[bool] | None = None
) -> report.Report:
    """The experiment, and always its clean-up; `cleaned` gets True once that is done."""
    loop = asyncio.get_running_loop()
    first, second = asyncio.Event(), asyncio.Event()

    def record(signum: int) -> None:
        signals.record(signum)
        first.set()
        if len(signals.received) > 1:
            second.set()

    handled = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in Signals.STOPPING} if handled else {}
    if handled:
        for sig in Signals.STOPPING:
            loop.add_signal_handler(sig, record, sig)
    # A signal recorded by the caller's handlers since `run_experiment` looked: stop now.
    if signals.received:
        first.set()
    lab: Lab | KubeLab
    if prepared.config.cluster.startswith("kubeconfig"):
        from lab.kube.remote import RemoteLab

        lab = RemoteLab(prepared)
    elif prepared.config.cluster == "local" and prepared.config.kubelet == "real":
        from lab.kube.real_run import RealKubeLab

        lab = RealKubeLab(prepared)
    elif prepared.config.cluster == "local":
        from lab.kube.experiment import KubeLab

        lab = KubeLab(prepared)
    else:
        lab = Lab(prepared)
    work = asyncio.create_task(lab.run(), name="experiment")
    stopper = asyncio.create_task(first.wait(), name="signal wait")
    forced = asyncio.create_task(second.wait(), name="second signal wait")
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        signum = signals.received[0]
        lab.events.phase(
            "interrupted",
            f"{signal.Signals(signum).name}: graceful teardown (a second signal kills everything)",
        )
        await stop_task(work, 10)
        graceful = asyncio.create_task(
            _stop_and_report(lab, signal.Signals(signum).name), name="graceful teardown"
        )
        await asyncio.wait({graceful, forced}, return_when=asyncio.FIRST_COMPLETED)
        partial: report.Report | None = None
        if not graceful.done():
            name = signal.Signals(signals.received[-1]).name
            lab.events.phase("teardown-forced", f"{name}: killing every process the lab started")
            # The same steps, walked on with their forced deadlines.
            lab.steps.force()
            await asyncio.wait({graceful}, timeout=FORCED_TEARDOWN)
            await stop_task(graceful, 5)
        elif graceful.exception() is not None:
            lab.events.phase("teardown-failed", repr(graceful.exception()))
        else:
            partial = graceful.result()
        raise Interrupted(signum, partial)
    finally:
        for task in (stopper, forced):
            task.cancel()
        await asyncio.gather(stopper, forced, return_exceptions=True)
        if not work.done():
            await stop_task(work, 10)
        await lab.close()
        lab.events.close()
        if cleaned is not None:
            cleaned.append(True)
        if handled:
            for sig in Signals.STOPPING:
                loop.remove_signal_handler(sig)
                # Back to whoever handled them before (lab matrix records between runs).
                before = previous[sig]
                signal.signal(sig, before if before is not None else signal.SIG_DFL)


def _service_urls(value: str, services: dict[str, dict[int, str]]) -> str:
    """`http://cache:9000/x` or `cache.default.svc.cluster.local:9000` -> the supporting
    pod's address, as the Service's cluster DNS name and port would lead there."""
    for name, ports in services.items():
        pattern = re.compile(
            rf"(?:(?<=//)|^){re.escape(name)}(?:\.[A-Za-z0-9.-]+)?(?::(\d+))?(?=[/?]|$)"
        )

        def replace(match: re.Match[str], ports: dict[int, str] = ports) -> str:
            port = match.group(1)
            if port is None:
                # A URL without a port: 80, as http:// means (the Service's port 80).
                return ports.get(80, match.group(0))
            return ports.get(int(port), match.group(0))

        value = pattern.sub(replace, value)
    return value


async def _all_gone(pods: list[Pod], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(p.gone for p in pods):
            return True
        await asyncio.sleep(0.05)
    return False


def _scenario_name(config: LabConfig) -> str:
    if config.scenario == "scale":
        return f"scale to {config.to}"
    if config.scenario == "update":
        return f"update to {config.update_to}"
    return config.scenario


async def write_report(
    p: Prepared,
    events: EventLog,
    influx: OperationLog | None,
    *,
    stopping_wall: float,
    steady_window: tuple[float, float],
    completed: bool,
    action_s: float | None,
    interrupted: str | None,
    pod_bounds: tuple[int, int | None] | None,
    supporting: frozenset[str],
    notes: tuple[str, ...] = (),
) -> report.Report:
    """Account every request and operation; write report.json and the timeline (in
    the config's `out`). Shared by both clusters (the lab's own, lab.kube.experiment)."""
    config, deployment = p.config, p.manifests.deployment
    requests, failed_checks = accounting.read_csv(config.out / "k6.csv", config.expect_status)
    point_ids: list[object] | None = None
    unmeasured = operations_unmeasured(config)
    if influx is not None and unmeasured is None:
        point_ids = await asyncio.to_thread(influx.field_values, p.influx_db, "operation", "id")
    result = accounting.account(requests, point_ids, stopped_ms=int(stopping_wall * 1000))
    events.phase("accounted", f"{result.requests} requests")
    entry = report.entry_notes(p.manifests.service, config.nodes, config.entry)
    all_notes = [*p.notes, *notes, *entry]
    if interrupted is not None:
        all_notes.insert(
            0,
            f"INTERRUPTED ({interrupted}): the numbers cover the run until then; a "
            "request k6 had not finished when it stopped is not counted",
        )
    if config.nodes > 1:
        all_notes.append(
            f"{config.nodes} nodes, each with its own proxy and its own lag draws, "
            "behind one L4 balancer"
        )
    if result.unmatched_points:
        all_notes.append(
            f"{len(result.unmatched_points)} points carry ids k6 never recorded "
            "(requests cut when the load stopped, or ids from elsewhere)"
        )
    the_report = report.build(
        manifests=str(config.manifests),
        scenario=_scenario_name(config),
        lb=config.lb,
        lb_retries=config.lb_retries,
        endpoint_lag=config.endpoint_lag,
        vus=config.vus,
        replicas=config.replicas if config.replicas is not None else deployment.replicas,
        accounting=result,
        requests=requests,
        events=events.events,
        duration_s=events.now(),
        steady_ms=(int(steady_window[0] * 1000), int(steady_window[1] * 1000)),
        action_completed=completed,
        action_s=action_s,
        notes=all_notes,
        failed_checks=failed_checks,
        http_reuse=config.http_reuse if config.lb != "tcp" else None,
        pod_bounds=pod_bounds,
        supporting=supporting,
        k6_script=describe_script(config),
        request=describe_request(config),
        expect_status=config.expect_status,
        operations_unmeasured=unmeasured,
        quick_changes=list(config.quick_changes),
    )
    the_report.write_json(config.out / "report.json")
    await asyncio.to_thread(
        plot.draw, requests, events.events, events.start_wall, config.out / "timeline.png"
    )
    html_report.write_run(the_report, config.out)  # after the timeline it holds
    return the_report


class Experiment:
    """What both clusters' experiments share (lab.experiment.Lab, the lab's own; and
    lab.kube.experiment.KubeLab, a real control plane): the load's settings, waiting
    under load, the report of a run cut short, and the way out: `steps` (lab.steps),
    walked by `teardown()` after a first signal and by `close()` on every way out."""

    def __init__(self, prepared: Prepared, die_with_parent: bool = False) -> None:
        self.p = prepared
        self.config = prepared.config
        self.out = self.config.out
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("pids.txt", "k6.csv", "report.json", "timeline.png", "report.html"):
            (self.out / stale).unlink(missing_ok=True)
        # The event log as JSON lines, as it happens: a run that dies still leaves it.
        self.event_file = (self.out / "events.jsonl").open("w")
        self.events = EventLog(sys.stderr if self.config.progress else None, self.event_file)
        self.registry = Registry(self.out / "pids.txt", die_with_parent=die_with_parent)
        self.base_env = dict(os.environ)
        self.k6: K6 | None = None
        self.load_start: float | None = None  # when k6 started: a partial report needs it
        self.faults: Faults | None = None
        # The run's steps and their undos: every way out walks them (lab.steps).
        self.steps = Steps(lambda step, what: self.events.phase("undo", f"{step}: {what}"))
        self.for_report = 0  # the steps the report needs (the operation log's)

    async def _report(
        self,
        *,
        stopping_wall: float,
        steady_window: tuple[float, float],
        completed: bool,
        action_s: float | None,
        interrupted: str | None = None,
    ) -> report.Report:
        return await write_report(
            self.p,
            self.events,
            self._operation_log(),
            stopping_wall=stopping_wall,
            steady_window=steady_window,
            completed=completed,
            action_s=action_s,
            interrupted=interrupted,
            pod_bounds=self._pod_bounds(),
            supporting=self._supporting_pods(),
            notes=self._cluster_notes(),
        )

    # What each cluster adds to the report.
    def _operation_log(self) -> OperationLog | None:
        raise NotImplementedError

    def _pod_bounds(self) -> tuple[int, int | None] | None:
        raise NotImplementedError

    def _supporting_pods(self) -> frozenset[str]:
        return frozenset()

    def _cluster_notes(self) -> tuple[str, ...]:
        return ()

    def _check_parts(self) -> None:
        """Fail at once when a part the run needs died, instead of at the next deadline."""
        raise NotImplementedError

    async def partial_report(self, interrupted: str) -> report.Report | None:
        """After an interruption and a graceful teardown: the report of the run so far
        (requests k6 recorded, operations stored), or None if no load had started."""
        csv_path = self.out / "k6.csv"
        if self.load_start is None or not csv_path.exists():
            return None
        stopped = self.events.phase("partial-report", interrupted)
        return await self._report(
            stopping_wall=stopped.wall,
            steady_window=(self.load_start + 1, stopped.wall),
            completed=False,
            action_s=None,
            interrupted=interrupted,
        )

    def _k6_env(self) -> dict[str, str]:
        env = load_env(self.config)  # the request, the expected status
        if self.config.lb in ("https", "h2"):
            env["INSECURE"] = "1"  # the lab's self-signed certificate
        if self.config.lb == "https":
            env["H2"] = "0"  # HTTP/1.1 over TLS: the script's HTTP/2 check does not apply
        if self.config.conn_reuse:
            env["CONN_REUSE"] = "1"
        if self.config.request_timeout:
            env["TIMEOUT"] = self.config.request_timeout
        return env

    async def _load(self, url: str) -> None:
        """The load, a step: a graceful undo stops it at once (K6_STOP_WHEN_INTERRUPTED),
        a forced one kills it. A run's normal end stops it itself, its stop measured."""
        await self.steps.do(
            "load",
            lambda: self._start_load(url),
            self._stop_load_at_once,
            deadline=K6_STOP_WHEN_INTERRUPTED + 15,
            forced=0,
            kill=self._kill_load,
        )

    async def _start_load(self, url: str) -> None:
        config = self.config
        self.k6 = K6(
            config.k6_script_path,
            url,
            config.vus,
            run_id=f"lab{int(time.time())}",
            csv_path=self.out / "k6.csv",
            api_port=free_port(),
            # A cap well past the run's own end: the run stops the load itself.
            max_duration=config.warmup
            + config.duration
            + config.action_timeout
            + config.cooldown
            + 120,
            log_path=self.out / "k6.log",
            extra_env=self._k6_env(),
            binary=self.p.k6_binary,
        )
        await self.k6.start(self.registry, self.base_env)
        self.load_start = time.time()

    async def _stop_load_at_once(self) -> None:
        """The load step's undo when the run is cut short: requests in flight need not
        finish (one hung on a failed node's address would hold the stop for k6's 60 s
        request timeout); the partial report counts what k6 recorded."""
        if self.k6 is not None:
            await self.k6.stop(timeout=K6_STOP_WHEN_INTERRUPTED)

    def _kill_load(self) -> None:
        if self.k6 is not None:
            self.k6.kill()

    async def _stop_faults(self) -> None:
        """Every fault cancelled and undone: nothing stays stopped or down."""
        if self.faults is not None:
            await self.faults.stop()

    async def teardown(self) -> None:
        """After an interruption: the steps after those the report needs, undone
        gracefully (the load stops, every pod is deleted with its preStop and grace
        period), or with their forced deadlines after force()."""
        self.events.phase("teardown", "interrupted: stopping the load, then every pod")
        await self.steps.undo(down_to=self.for_report)

    async def close(self) -> None:
        """The end of every way out: every step undone (forced: the graceful walks are
        done by now), every process the run started killed, the event file closed."""
        self.steps.force()
        try:
            await self.steps.undo()
        finally:
            await self.registry.kill_all()
            self.events.sink = None
            self.event_file.close()

    async def _sleep_under_load(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            self._check_parts()
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))


class Lab(Experiment):
    def __init__(self, prepared: Prepared) -> None:
        # Every child dies with the lab, also by SIGKILL (the kernel's parent-death
        # signal); the watchdog (lab.leftovers) takes what is not a child.
        super().__init__(prepared, die_with_parent=True)
        self.rng = random.Random(self.config.seed)
        self.influx: InfluxServer | None = None
        self.influx_start: asyncio.Future[None] | None = None
        self.haproxy: HAProxy | None = None
        self.kubelet: Kubelet | None = None
        self.runtime: Runtime | None = None
        self.controller: DeploymentController | None = None
        self.endpoints: EndpointsController | None = None
        # --nodes: every node's proxy and its endpoints view (the first is `haproxy` /
        # `endpoints`), and the balancer in front of them (None with one node).
        self.node_proxies: list[HAProxy] = []
        self.node_endpoints: list[EndpointsController] = []
        self.front: HAProxy | None = None
        # Pod addresses, and with --nodes each node's own address for its proxy: a failed
        # node's address then drops packets like its pods' do.
        self.addresses = AddressPool()
        self.support: list[DeploymentController] = []
        # Service name -> (port -> pod address), for the supporting pods' Services.
        self.service_addresses: dict[str, dict[int, str]] = {}
        self.influx_address: str | None = None  # host:port of the lab's InfluxDB

    async def run(self) -> report.Report:
        """The run as steps, each undone on the way out (lab.steps): the pods' network,
        InfluxDB, the proxies, the kubelet, the controllers, the pods, the load and the
        faults; the action under load; then the load stops and the steps after InfluxDB
        are undone (every pod deleted gracefully) before the report."""
        config, steps = self.config, self.steps
        self.events.phase("start", f"{config.manifests} scenario {config.scenario}")
        for note in self.p.notes:  # on the progress lines before anything starts, too
            self.events.add("", "note", note)
        if config.runtime == "docker" or config.pod_network == "netns":
            # The pods' network first: InfluxDB listens on its gateway, which pods reach.
            await steps.do(
                "pod network",
                self._open_pod_network,
                self._close_runtime,
                deadline=CLOSE,
            )
        if self.p.uses_influx:
            await steps.do("influxdb", self._start_influx, self._stop_influx, deadline=CLOSE)
        self.for_report = steps.mark()  # the report reads the operation log
        load_url = await steps.do("proxies", self._start_proxies, self._stop_proxies)
        if self.runtime is None:
            await steps.do("runtime", self._process_runtime, self._close_runtime, deadline=CLOSE)
        await steps.do("kubelet", self._start_kubelet, self._stop_kubelet)
        await steps.do("controllers", self._make_controllers, self._stop_controllers)
        # Deleting every pod gracefully is skipped when forced: the kubelet's undo kills.
        grace = self._teardown_time()
        await steps.do("pods", self._deploy, self._teardown_pods, deadline=grace, forced=0)
        under_load = steps.mark()
        await self._load(load_url)
        assert self.controller is not None and self.k6 is not None
        load_start = self.load_start
        assert load_start is not None
        self.events.phase("warm-up", f"{config.vus} VUs for {config.warmup:g} s")
        await self._sleep_under_load(config.warmup)
        action_start = time.time()
        self.controller.start_sampling()
        if config.faults:
            await steps.do("faults", self._start_faults, self._stop_faults, deadline=60, forced=15)
        completed, action_s, steady_end = await self._act(action_start)
        self.controller.sampling = False
        self.events.phase("cool-down", f"{config.cooldown:g} s")
        await self._sleep_under_load(config.cooldown)
        await steps.undo(down_to=under_load + 1)  # the faults end (undone) under load
        stopping = self.events.phase("stop-load")
        code = await self.k6.stop()  # in-flight requests finish: the stop is measured
        self.events.phase("load-stopped", describe_exit(code))
        if self.front is not None:
            self._log_node_connections()
        await steps.undo(down_to=self.for_report)
        return await self._report(
            stopping_wall=stopping.wall,
            steady_window=(load_start + 1, steady_end),  # k6 ramps up in the first second
            completed=completed,
            action_s=action_s,
        )

    async def _act(self, action_start: float) -> tuple[bool, float | None, float]:
        """The scenario under load: whether the action completed, its seconds, and the
        end of the steady window."""
        config, controller = self.config, self.controller
        assert controller is not None
        if config.scenario == "steady":
            self.events.phase("steady", f"{config.duration:g} s")
            await self._sleep_under_load(config.duration)
            return True, None, time.time()
        mono = time.monotonic()
        if config.scenario == "rollout-restart":
            controller.rollout_restart()
        elif config.scenario == "update":
            assert self.p.update is not None
            controller.update_template(self.p.update.deployment.template)
        else:
            assert config.to is not None
            controller.scale(config.to)
        self.events.phase("action", config.scenario)
        completed = await self._until(self._action_done, config.action_timeout)
        action_s = time.monotonic() - mono
        self.events.phase("action-complete" if completed else "action-timeout", f"{action_s:.1f} s")
        return completed, action_s, action_start

    # -- the steps and their undos -------------------------------------------------------

    async def _open_pod_network(self) -> None:
        """The Docker runtime, or the process runtime's network namespaces."""
        if self.config.runtime == "docker":
            from lab.docker_runtime import docker_runtime

            self.runtime = await docker_runtime(
                self.p.manifests, self.p.update, self.out / "pods", made=self._record
            )
        else:
            from lab.pod_netns import netns_runtime

            self.runtime = await netns_runtime(
                self.registry, self.out / "pods", self.base_env, made=self._record
            )
        self._log_runtime(self.runtime)

    async def _process_runtime(self) -> None:
        """Pods as process groups on loopback addresses, a gone one's address dead."""
        dead = Blackhole() if blackhole.available() is None else None
        self.runtime = ProcessRuntime(
            self.registry, self.out / "pods", self.base_env, self._rewrite, self.addresses, dead
        )
        if any(self.runtime.sweep_record()):
            self._record(self.runtime)
        self._log_runtime(self.runtime)

    def _record(self, runtime: Runtime) -> None:
        """Before the runtime makes anything: what it will make, for the sweep after a
        SIGKILL (lab.leftovers)."""
        leftovers.record(self.out, *runtime.sweep_record())

    def _log_runtime(self, runtime: Runtime) -> None:
        for name, detail in runtime.phases():
            self.events.phase(name, detail)

    async def _close_runtime(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()

    async def _start_influx(self) -> None:
        # Where the pods reach the host: loopback, or the pods' network's gateway.
        host = self.runtime.gateway if self.runtime is not None else "127.0.0.1"
        # Started from a worker thread, which lives as long as the event loop's
        # executor: the kernel kills influxd when the lab dies, not before.
        self.influx = InfluxServer(
            data_dir=self.out / "influxdb",
            log_path=self.out / "influxd.log",
            host=host,
            die_with_parent=True,
            marks=self.registry.marks,
        )
        shutil.rmtree(self.influx.data_dir, ignore_errors=True)
        # A thread cannot be cancelled: keep the start's future, so that the undo
        # after Ctrl-C waits for it and then stops the influxd it started.
        self.influx_start = asyncio.ensure_future(asyncio.to_thread(self.influx.start))
        await asyncio.shield(self.influx_start)
        assert self.influx.pid is not None
        self.registry.record(self.influx.pid, "influxd")
        await asyncio.to_thread(self.influx.create_database, self.p.influx_db)
        self.influx_address = address = f"{self.influx.host}:{self.influx.port}"
        services = [f"{svc.name}:{port}" for svc in self.p.influx_services for port, _ in svc.ports]
        names = ", ".join(dict.fromkeys(["influxdb:8086", *services]))
        self.events.phase("influxdb", f"{self.influx.url} stands in for {names}")
        for svc in self.p.influx_services:
            self.service_addresses[svc.name] = {port: address for port, _ in svc.ports}

    async def _stop_influx(self) -> None:
        if self.influx_start is not None and not self.influx_start.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.influx_start), 30)
        if self.influx is not None:
            await asyncio.to_thread(self.influx.stop)

    def _rewrite(self, value: str) -> str:
        """An env value as the pods need it: the in-cluster InfluxDB and the supporting
        Deployments' Services pointed at their addresses here."""
        if self.influx_address is not None:
            value = INFLUX_SERVICE.sub(self.influx_address, value)
        return _service_urls(value, self.service_addresses)

    async def _start_proxies(self) -> str:
        """The first node's proxy, and with --nodes the others and the balancer in front
        of them; returns where the load goes."""
        config = self.config
        self.haproxy = HAProxy(
            self.out / "haproxy",
            free_port(),
            host=self.addresses.take() if config.nodes > 1 else "127.0.0.1",
            mode=config.lb,
            retries=config.lb_retries,
            http_reuse=config.http_reuse,
        )
        self.node_proxies.append(self.haproxy)
        await self.haproxy.start(self.registry)
        self.events.phase("haproxy", f"{self.haproxy.url} mode {config.lb}")
        if config.nodes > 1:
            return await self._start_node_proxies(config)
        return self.haproxy.url

    async def _start_kubelet(self) -> None:
        assert self.runtime is not None
        self.runtime.rewrite = self._rewrite
        self.kubelet = Kubelet(
            self.events,
            self.registry,
            self.out / "pods",
            self.base_env,
            self._rewrite,
            self.rng,
            runtime=self.runtime,
            nodes=self.config.nodes,
        )

    async def _stop_kubelet(self) -> None:
        """Kills what is left of every pod (nothing, after a graceful teardown)."""
        if self.kubelet is not None:
            await self.kubelet.shutdown()

    async def _make_controllers(self) -> None:
        """The Deployment controller, and each node's endpoints controller (its
        kube-proxy's view), not started yet."""
        config, manifests = self.config, self.p.manifests
        deployment = manifests.deployment
        kubelet = self.kubelet
        assert kubelet is not None
        self.controller = DeploymentController(
            deployment, kubelet, self.p.images, self.events, config.replicas
        )
        selector = deployment.selector

        def service_pods() -> list[Pod]:
            # The Service's pods: the Deployment under test's, not the supporting ones.
            return [
                p
                for p in kubelet.pods
                if all(p.template.labels.get(k) == v for k, v in selector.items())
            ]

        for index, proxy in enumerate(self.node_proxies):
            # Each node's kube-proxy watches the EndpointSlices and syncs on its own
            # (pkg/proxy/config/config.go, the iptables proxier's syncPeriod and
            # minSyncPeriod): the lag is drawn per change and per node, from its own stream.
            rng = self.rng if index == 0 else random.Random(self.rng.random())
            self.node_endpoints.append(
                EndpointsController(
                    proxy,
                    service_pods,
                    manifests.target_port,
                    self.events,
                    config.endpoint_lag,
                    rng,
                    node=f"node{index}" if config.nodes > 1 else "",
                )
            )
        self.endpoints = self.node_endpoints[0]
        kubelet.on_change = self._changed

    async def _deploy(self) -> None:
        """The supporting Deployments, then the one under test: every replica ready and
        in every node's proxy."""
        controller = self.controller
        assert controller is not None
        await self._start_supporting()
        controller.start()
        for endpoints in self.node_endpoints:
            endpoints.start()
        self.events.phase("deploy", f"{controller.replicas} replicas")
        timeout = self.config.ready_timeout
        if not await self._until(self._deployed, timeout):
            raise LabError(self._not_ready(controller.deployment.name, controller, timeout))

    def _teardown_time(self) -> float:
        """The graceful teardown's deadline: each group's longest grace period and its
        margin (lab.experiment.Lab._teardown_pods), and the kubelet's last look."""
        templates = [self.p.manifests.deployment.template]
        if self.p.update is not None:
            templates.append(self.p.update.deployment.template)
        templates += [s.deployment.template for s in self.p.supporting]
        grace = max(t.termination_grace for t in templates)
        return 2 * (grace + 15) + 15

    async def _start_faults(self) -> None:
        config, controller = self.config, self.controller
        assert self.kubelet is not None and controller is not None
        self.faults = Faults(
            config.faults,
            self.events,
            self.registry,
            self.kubelet,
            self.influx,
            lambda: list(controller.pods),
            self.haproxy,
            self.endpoints,
            node_monitor_grace=config.node_monitor_grace,
            unreachable_toleration=config.unreachable_toleration,
            node_down=self._node_down if config.nodes > 1 else None,
        )
        self.faults.start()

    def _operation_log(self) -> OperationLog | None:
        return self.influx

    def _pod_bounds(self) -> tuple[int, int | None] | None:
        if self.controller is None:
            return None
        return (self.controller.peak_pods, self.controller.fewest_available)

    def _supporting_pods(self) -> frozenset[str]:
        return frozenset(
            e.pod
            for e in self.events.events
            if e.kind == "created" and e.pod and not self._under_test(e.pod)
        )

    async def _start_supporting(self) -> None:
        """The other Deployments first, one pod each, ready before the one under test
        starts (its env may name their Services, which point at these pods)."""
        assert self.kubelet is not None
        for s in self.p.supporting:
            support = DeploymentController(
                s.deployment, self.kubelet, self.p.images, self.events, replicas=1
            )
            self.support.append(support)
            support.start()
            self.events.phase("supporting", f"{s.deployment.name}: one pod, no load")
        timeout = self.config.ready_timeout
        for support in self.support:
            if not await self._until(support.complete, timeout):
                raise LabError(self._not_ready(support.deployment.name, support, timeout))
        for s, support in zip(self.p.supporting, self.support, strict=True):
            pod = support.active()[0]
            container = s.deployment.template.container
            for service in s.services:
                self.service_addresses[service.name] = {
                    port: f"{pod.ip}:{container.resolve_port(target)}"
                    for port, target in service.ports
                }
            self.events.phase(
                "supporting-ready",
                f"{s.deployment.name} at {pod.ip} for Services "
                f"{', '.join(svc.name for svc in s.services) or '(none)'}",
            )

    def _not_ready(self, name: str, controller: DeploymentController, timeout: float) -> str:
        """ "Not ready within N s", with which pods, which probe and its last result."""
        now = self.events.now()
        pods = [p for p in controller.pods if not p.gone and not controller.available(p)]
        lines = [f"the Deployment {name} was not ready within {timeout:g} s"]
        if not pods and self.endpoints is not None and controller is self.controller:
            missing = self.endpoints.desired() - self.endpoints.in_lb
            lines.append(f"pods ready but not yet in the load balancer: {', '.join(missing)}")
        for pod in pods:
            state = (
                "not ready"
                if not pod.ready
                else f"ready for {now - (pod.ready_since or now):.1f} s"
            )
            if pod.restarts:
                state += f", {pod.restarts} restarts"
            results = [
                f"{kind} probe {describe(probe)}: {pod.last_probe[kind]}"
                for kind, probe in (
                    ("startup", pod.container.startup),
                    ("readiness", pod.container.readiness),
                    ("liveness", pod.container.liveness),
                )
                if probe is not None and kind in pod.last_probe
            ]
            failures = [e for e in self.events.of(pod.name) if e.kind in report.FAILURE_KINDS]
            if failures and not results:
                results.append(f"{failures[-1].kind}: {failures[-1].detail}")
            lines.append(f"{pod.name} ({state}): {'; '.join(results) or 'no probe result yet'}")
        return "\n  ".join(lines)

    def _under_test(self, pod_name: str) -> bool:
        assert self.kubelet is not None
        selector = self.p.manifests.deployment.selector
        return any(
            p.name == pod_name and all(p.template.labels.get(k) == v for k, v in selector.items())
            for p in self.kubelet.pods
        )

    def _changed(self) -> None:
        if self.controller is not None:
            self.controller.wake.set()
        for endpoints in self.node_endpoints:
            endpoints.wake.set()

    def _deployed(self) -> bool:
        assert self.controller is not None and self.node_endpoints
        return self.controller.complete() and all(
            e.in_lb == e.desired() for e in self.node_endpoints
        )

    def _action_done(self) -> bool:
        # Done when the Deployment is, and every pod it deleted has exited: a pod's
        # SIGTERM (after its preStop) is when requests and operations get dropped, so the
        # load must go on until the last one is gone.
        assert self.controller is not None
        return self.controller.complete() and not any(
            p.terminating and not p.gone for p in self.controller.pods
        )

    async def _until(self, predicate: object, timeout: float) -> bool:
        assert callable(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if predicate():
                return True
            self._check_parts()
            await asyncio.sleep(0.05)
        return bool(predicate())

    def _check_parts(self) -> None:
        """Fail at once when k6 or a controller died, instead of at the next deadline."""
        for part in (self.controller, *self.node_endpoints):
            task = part.task if part is not None else None
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                raise LabError(f"{task.get_name()} stopped: {error!r}") from error
        if self.k6 is not None and self.k6.process is not None:
            code = self.k6.process.returncode
            if code is not None:
                raise LabError(f"k6 exited early with code {code}; see {self.k6.log_path}")

    async def _teardown_pods(self) -> None:
        assert self.kubelet is not None
        self.events.phase("teardown", "deleting every pod gracefully")
        # The pods under test first: their last flushes may need the supporting ones.
        for controllers in ([self.controller], self.support):
            pods: list[Pod] = []
            for controller in controllers:
                if controller is not None:
                    pods += controller.pods
                    controller.delete_all()
            grace = max([p.template.termination_grace for p in pods] or [0.0])
            await _all_gone(pods, grace + 15)
        if not await self.kubelet.wait_all_gone(5):
            self.events.phase("teardown-forced", "pods still there after their grace period")
            await self.kubelet.shutdown()

    async def _start_node_proxies(self, config: LabConfig) -> str:
        """The other nodes' proxies, and the L4 balancer in front of every node (a cloud
        load balancer to the Service's NodePort: each connection to one node, round
        robin); the load's URL goes to the balancer."""
        assert self.haproxy is not None
        for index in range(1, config.nodes):
            proxy = HAProxy(
                self.out / f"haproxy-node{index}",
                free_port(),
                host=self.addresses.take(),
                mode=config.lb,
                retries=config.lb_retries,
                http_reuse=config.http_reuse,
            )
            self.node_proxies.append(proxy)
            await proxy.start(self.registry)
        self.front = HAProxy(
            self.out / "haproxy-lb", free_port(), mode="tcp", health_checks=FRONT_CHECKS
        )
        await self.front.start(self.registry)
        for index, proxy in enumerate(self.node_proxies):
            self.front.add_server(f"node{index}", proxy.host, proxy.port)
        # TLS (https, h2) ends at the node proxies; the balancer passes the bytes on.
        scheme = self.haproxy.url.partition(":")[0]
        url = f"{scheme}://{self.front.host}:{self.front.port}"
        self.events.phase("nodes", f"{config.nodes} node proxies behind {url}")
        return url

    async def _node_down(self, node: int) -> str:
        """A failed node's proxy goes with it: its address drops packets, and the
        balancer keeps sending it connections until its health checks fail."""
        # node-failure calls this only once it knows the runtime drops addresses.
        assert self.runtime is not None
        proxy = self.node_proxies[node]
        await self.runtime.drop_ip(proxy.host)
        return (
            f"node{node}'s proxy {proxy.host} drops packets, out of the balancer after "
            f"{FRONT_CHECKS.fall} failed checks every {FRONT_CHECKS.interval:g} s"
        )

    def _log_node_connections(self) -> None:
        """How many connections each node's proxy took: the balancer spread the load."""
        counts = []
        try:
            in_balancer = self.front.servers() if self.front is not None else {}
        except (OSError, HAProxyError) as exc:
            in_balancer = {}
            counts.append(f"balancer unknown ({exc!r})")
        for index, proxy in enumerate(self.node_proxies):
            status = in_balancer.get(f"node{index}", "")
            # "UP 1/2" is up with a failed check; only a node out of rotation is named.
            down = status and not status.startswith("UP")
            seen = f" ({status} in the balancer)" if down else ""
            try:
                counts.append(f"node{index} {proxy.connections_total()}{seen}")
            except (OSError, HAProxyError) as exc:
                counts.append(f"node{index} unknown ({exc!r}){seen}")
        self.events.phase("node-connections", ", ".join(counts))

    async def _stop_proxies(self) -> None:
        if self.front is not None:
            await self.front.stop()
        for proxy in self.node_proxies:
            await proxy.stop()
        if self.haproxy is not None and self.haproxy not in self.node_proxies:
            await self.haproxy.stop()

    async def _stop_controllers(self) -> None:
        for support in self.support:
            await support.stop()
        if self.controller is not None:
            await self.controller.stop()
        for endpoints in self.node_endpoints:
            await endpoints.stop()
