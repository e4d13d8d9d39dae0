"""One experiment: parts up, pods deployed, load, the action, teardown, accounting.

`run_experiment(config)` is the whole program without the CLI. Every check that can
fail on bad input runs before any process starts. Every process goes through one
registry and is gone when this returns, also after Ctrl-C (SIGINT/SIGTERM only record;
the main coroutine acts) or an error: each phase has a deadline and a forced path.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import accounting, plot, report
from lab.config import ConfigError, LabConfig
from lab.controller import DeploymentController
from lab.endpoints import EndpointsController
from lab.events import EventLog
from lab.faults import Faults
from lab.haproxy import HAProxy
from lab.images import ImageMap, resolve
from lab.influx import InfluxServer, free_port
from lab.k6 import K6, find_k6
from lab.manifest import Container, Manifests, load
from lab.pods import Kubelet
from lab.procs import Registry
from lab.runtime import Runtime
from lab.waits import stop_task

# The in-cluster InfluxDB Service, in any of its DNS spellings, with the default port.
INFLUX_SERVICE = re.compile(r"(?<=//)influxdb(?:\.[A-Za-z0-9.-]+)?(?::8086)?(?=[/?]|$)")
INFLUX_DB = "calc"


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; everything was cleaned up."""


class LabError(RuntimeError):
    pass


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


def _uses_influx(container: Container) -> bool:
    return any(
        INFLUX_SERVICE.search(v.value or "") or v.name == "INFLUXDB_BASE_URL" for v in container.env
    )


def prepare(config: LabConfig) -> Prepared:
    config.validate()
    manifests = load(config.manifests)
    update = load(config.update_to) if config.update_to is not None else None
    images = ImageMap.load(config.image_map_path)
    containers = [manifests.deployment.template.container]
    if update is not None:
        containers.append(update.deployment.template.container)
        if update.target_port != manifests.target_port:
            raise ConfigError(
                f"--update-to: the new pods listen on {update.target_port}, the Service sends "
                f"to {manifests.target_port}"
            )
    for container in containers:
        image = images.image(container.image)
        # Resolve the command and env once with stand-in pod values, so that a container
        # the image map cannot run fails here, before anything starts.
        resolve(container, image, "check", "127.0.0.2", dict(os.environ))
    uses_influx = any(_uses_influx(c) for c in containers)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        raise ConfigError("haproxy is not installed (apt-get install haproxy, or make setup)")
    if uses_influx and shutil.which("influxd") is None:
        raise ConfigError("the manifests use InfluxDB but influxd is not installed")
    notes = list(manifests.notes)
    replicas = config.replicas if config.replicas is not None else manifests.deployment.replicas
    if replicas < 1:
        raise ConfigError("--replicas: the experiment needs at least one replica to send load to")
    for fault in config.faults:
        if fault.kind.startswith("influx-") and not uses_influx:
            raise ConfigError(f"--fault {fault}: these manifests do not use InfluxDB")
    if config.runtime == "docker":
        from lab.docker_runtime import check_docker

        check_docker(manifests, update)
    return Prepared(config, manifests, images, uses_influx, find_k6(), notes, update)


def run_experiment(config: LabConfig) -> report.Report:
    """Run one experiment to the end and return its report (also written to `out`)."""
    prepared = prepare(config)
    return asyncio.run(_main(prepared))


async def _main(prepared: Prepared) -> report.Report:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def record(signum: int) -> None:
        received.append(signum)
        stop.set()

    handled = threading.current_thread() is threading.main_thread()
    if handled:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, record, sig)
    lab = Lab(prepared)
    work = asyncio.create_task(lab.run(), name="experiment")
    stopper = asyncio.create_task(stop.wait(), name="signal wait")
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        lab.events.phase("interrupted", signal.Signals(received[0]).name)
        await stop_task(work, 10)
        raise Interrupted(f"interrupted by {signal.Signals(received[0]).name}")
    finally:
        stopper.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
        if not work.done():
            await stop_task(work, 10)
        await lab.cleanup()
        if handled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _scenario_name(config: LabConfig) -> str:
    if config.scenario == "scale":
        return f"scale to {config.to}"
    if config.scenario == "update":
        return f"update to {config.update_to}"
    return config.scenario


class Lab:
    def __init__(self, prepared: Prepared) -> None:
        self.p = prepared
        self.config = prepared.config
        self.out = self.config.out
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("pids.txt", "k6.csv", "report.json", "timeline.png"):
            (self.out / stale).unlink(missing_ok=True)
        # The event log as JSON lines, as it happens: a run that dies still leaves it.
        self.event_file = (self.out / "events.jsonl").open("w")
        self.events = EventLog(sys.stderr if self.config.progress else None, self.event_file)
        self.registry = Registry(self.out / "pids.txt")
        self.rng = random.Random(self.config.seed)
        self.influx: InfluxServer | None = None
        self.influx_start: asyncio.Future[None] | None = None
        self.haproxy: HAProxy | None = None
        self.kubelet: Kubelet | None = None
        self.runtime: Runtime | None = None
        self.controller: DeploymentController | None = None
        self.endpoints: EndpointsController | None = None
        self.k6: K6 | None = None
        self.faults: Faults | None = None

    async def run(self) -> report.Report:
        config, manifests = self.config, self.p.manifests
        deployment = manifests.deployment
        base_env = dict(os.environ)
        self.events.phase("start", f"{config.manifests} scenario {config.scenario}")
        rewrite = None
        influx_host = "127.0.0.1"
        if config.runtime == "docker":
            from lab.docker_runtime import docker_runtime

            # The run's Docker network first: InfluxDB listens on its gateway address.
            self.runtime = await docker_runtime(self.p.manifests, self.p.update, self.out / "pods")
            influx_host = self.runtime.gateway
            self.events.phase(
                "docker", f"network {self.runtime.network_name} {self.runtime.subnet}"
            )
        if self.p.uses_influx:
            self.influx = InfluxServer(
                data_dir=self.out / "influxdb", log_path=self.out / "influxd.log", host=influx_host
            )
            shutil.rmtree(self.influx.data_dir, ignore_errors=True)
            # A thread cannot be cancelled: keep the start's future, so that clean-up
            # after Ctrl-C waits for it and then stops the influxd it started.
            self.influx_start = asyncio.ensure_future(asyncio.to_thread(self.influx.start))
            await asyncio.shield(self.influx_start)
            assert self.influx.pid is not None
            self.registry.record(self.influx.pid, "influxd")
            await asyncio.to_thread(self.influx.create_database, INFLUX_DB)
            address = f"{self.influx.host}:{self.influx.port}"
            self.events.phase("influxdb", f"{self.influx.url} stands in for influxdb:8086")

            def rewrite(value: str) -> str:
                return INFLUX_SERVICE.sub(address, value)

        self.haproxy = HAProxy(
            self.out / "haproxy",
            free_port(),
            mode=config.lb,
            retries=config.lb_retries,
            http_reuse=config.http_reuse,
        )
        await self.haproxy.start(self.registry)
        self.events.phase("haproxy", f"{self.haproxy.url} mode {config.lb}")
        if self.runtime is not None:
            self.runtime.rewrite = rewrite
        self.kubelet = Kubelet(
            self.events,
            self.registry,
            self.out / "pods",
            base_env,
            rewrite,
            self.rng,
            runtime=self.runtime,
        )
        controller = DeploymentController(
            deployment, self.kubelet, self.p.images, self.events, config.replicas
        )
        self.controller = controller
        self.endpoints = EndpointsController(
            self.haproxy,
            lambda: self.kubelet.pods if self.kubelet else [],
            manifests.target_port,
            self.events,
            config.endpoint_lag,
            self.rng,
        )
        self.kubelet.on_change = self._changed
        controller.start()
        self.endpoints.start()
        self.events.phase("deploy", f"{controller.replicas} replicas")
        if not await self._until(self._deployed, config.ready_timeout):
            raise LabError(f"the Deployment was not ready within {config.ready_timeout:g} s")

        self.k6 = K6(
            config.k6_script_path,
            self.haproxy.url,
            config.vus,
            run_id=f"lab{int(time.time())}",
            csv_path=self.out / "k6.csv",
            api_port=free_port(),
            max_duration=config.warmup
            + config.duration
            + config.action_timeout
            + config.cooldown
            + 120,
            log_path=self.out / "k6.log",
            extra_env=self._k6_env(),
            binary=self.p.k6_binary,
        )
        await self.k6.start(self.registry, base_env)
        load_start = time.time()
        self.events.phase("warm-up", f"{config.vus} VUs for {config.warmup:g} s")
        await self._sleep_under_load(config.warmup)

        action_start = time.time()
        controller.start_sampling()
        if config.faults:
            self.faults = Faults(
                config.faults,
                self.events,
                self.registry,
                self.kubelet,
                self.influx,
                lambda: list(controller.pods),
                self.haproxy,
                self.endpoints,
            )
            self.faults.start()
        completed = True
        action_s: float | None = None
        mono = time.monotonic()
        if config.scenario == "steady":
            self.events.phase("steady", f"{config.duration:g} s")
            await self._sleep_under_load(config.duration)
            steady_end = time.time()
        else:
            steady_end = action_start
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
            self.events.phase(
                "action-complete" if completed else "action-timeout", f"{action_s:.1f} s"
            )
        controller.sampling = False
        self.events.phase("cool-down", f"{config.cooldown:g} s")
        await self._sleep_under_load(config.cooldown)

        if self.faults is not None:
            await self.faults.stop()
        self.events.phase("stop-load")
        code = await self.k6.stop()
        self.events.phase("load-stopped", f"k6 exit code {code}")
        await self._teardown_pods()
        await self._stop_controllers()
        await self.haproxy.stop()

        requests, failed_checks = accounting.read_csv(self.out / "k6.csv")
        point_ids: list[object] | None = None
        if self.influx is not None:
            point_ids = await asyncio.to_thread(
                self.influx.field_values, INFLUX_DB, "operation", "id"
            )
        result = accounting.account(requests, point_ids)
        self.events.phase("accounted", f"{result.requests} requests")
        notes = list(self.p.notes)
        if result.unmatched_points:
            notes.append(
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
            events=self.events.events,
            duration_s=self.events.now(),
            # Skip the first second of load: k6 ramps its VUs up.
            steady_ms=(int((load_start + 1) * 1000), int(steady_end * 1000)),
            action_completed=completed,
            action_s=action_s,
            notes=notes,
            failed_checks=failed_checks,
            http_reuse=config.http_reuse if config.lb != "tcp" else None,
            pod_bounds=(controller.peak_pods, controller.fewest_available),
        )
        the_report.write_json(self.out / "report.json")
        await asyncio.to_thread(
            plot.draw,
            requests,
            self.events.events,
            self.events.start_wall,
            self.out / "timeline.png",
        )
        return the_report

    def _k6_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.config.lb in ("https", "h2"):
            env["INSECURE"] = "1"  # the lab's self-signed certificate
        if self.config.lb == "https":
            env["H2"] = "0"  # HTTP/1.1 over TLS: the script's HTTP/2 check does not apply
        if self.config.conn_reuse:
            env["CONN_REUSE"] = "1"
        if self.config.request_timeout:
            env["TIMEOUT"] = self.config.request_timeout
        return env

    def _changed(self) -> None:
        if self.controller is not None:
            self.controller.wake.set()
        if self.endpoints is not None:
            self.endpoints.wake.set()

    def _deployed(self) -> bool:
        assert self.controller is not None and self.endpoints is not None
        return self.controller.complete() and self.endpoints.in_lb == self.endpoints.desired()

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

    async def _sleep_under_load(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            self._check_parts()
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))

    def _check_parts(self) -> None:
        """Fail at once when k6 or a controller died, instead of at the next deadline."""
        for part in (self.controller, self.endpoints):
            task = part.task if part is not None else None
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                raise LabError(f"{task.get_name()} stopped: {error!r}") from error
        if self.k6 is not None and self.k6.process is not None:
            code = self.k6.process.returncode
            if code is not None:
                raise LabError(f"k6 exited early with code {code}; see {self.k6.log_path}")

    async def _teardown_pods(self) -> None:
        assert self.controller is not None and self.kubelet is not None
        self.events.phase("teardown", "deleting every pod gracefully")
        self.controller.delete_all()
        grace = max([p.template.termination_grace for p in self.kubelet.pods] or [0.0])
        if not await self.kubelet.wait_all_gone(grace + 15):
            self.events.phase("teardown-forced", "pods still there after their grace period")
            await self.kubelet.shutdown()

    async def _stop_controllers(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
        if self.endpoints is not None:
            await self.endpoints.stop()

    async def cleanup(self) -> None:
        """The forced path, always run: nothing the lab started outlives it."""
        if self.k6 is not None:
            self.k6.kill()
        if self.faults is not None:
            await self.faults.stop()
        await self._stop_controllers()
        if self.kubelet is not None:
            await self.kubelet.shutdown()
        if self.runtime is not None:
            await self.runtime.close()
        if self.haproxy is not None:
            await self.haproxy.stop()
        if self.influx_start is not None and not self.influx_start.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.influx_start), 30)
        if self.influx is not None:
            await asyncio.to_thread(self.influx.stop)
        await self.registry.kill_all()
        self.events.sink = None
        self.event_file.close()
