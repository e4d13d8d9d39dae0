"""The endpoints controller through a restart of its HAProxy (what lb-restart does):
the controller owns its state, the fault only stops and starts HAProxy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from lab.endpoints import Conditions, EndpointsController
from lab.events import EventLog
from lab.haproxy import HAProxy
from lab.influx import free_port
from lab.lag import Lag
from lab.procs import Registry

READY = Conditions(ready=True, serving=True, terminating=False)


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str


def test_proxy_restarting_puts_the_servers_in_rotation_back(tmp_path: Path) -> None:
    """A real HAProxy and a controller with two ready endpoints, both in rotation.
    1. `async with controller.proxy_restarting()`: the controller stops and yields the
       servers in rotation; inside, HAProxy is stopped and started again (empty).
    2. After the block both servers are in the new HAProxy, nothing waits to be deleted,
       and the controller runs again: an endpoint that becomes ready later is added."""
    endpoints = [Endpoint("pod-a", "127.0.0.2"), Endpoint("pod-b", "127.0.0.3")]

    async def scenario() -> None:
        registry = Registry()
        haproxy = HAProxy(tmp_path / "haproxy", free_port())
        controller = EndpointsController(
            haproxy,
            lambda: list(endpoints),
            8080,
            EventLog(progress=None),
            Lag.fixed(0.0),
            conditions_of=lambda _: READY,
        )
        try:
            await haproxy.start(registry)
            controller.start()
            await _until(lambda: haproxy.active_servers() == {"pod-a", "pod-b"})
            async with controller.proxy_restarting() as servers:
                assert controller.task is None  # paused while HAProxy is away
                assert servers == {"pod-a": "127.0.0.2", "pod-b": "127.0.0.3"}
                await haproxy.stop()
                await haproxy.start(registry)
                assert haproxy.servers() == {}
            assert haproxy.active_servers() == {"pod-a", "pod-b"}
            assert controller.to_delete == {} and controller.task is not None
            endpoints.append(Endpoint("pod-c", "127.0.0.4"))
            await _until(lambda: "pod-c" in haproxy.active_servers())
        finally:
            await controller.stop()
            await haproxy.stop()
            await registry.kill_all()
        assert registry.alive() == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
