"""What a pod costs on each of the lab's runtimes: start time and memory.

For each runtime (process, docker) and round: the kubelet creates --pods pods of a
version's manifests at once (default v3: exec-form calc, no preStop), and the script
times each from `create_pod` to its first 200 on GET /health at the pod IP; then it reads
the resident memory of every process of each pod (the process group on loopback; the app
and sandbox containers' processes on Docker, from the engine's `top`, and apart from it
the engine's containerd-shim of each container), deletes the pods
and waits until they are gone. Medians over pods and rounds.

    .venv/bin/python bench/runtime_cost.py [--version v3] [--pods 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lab.config import REPO
from lab.docker_runtime import DockerContainer, DockerRuntime, docker_runtime
from lab.events import EventLog
from lab.images import ImageMap
from lab.manifest import load
from lab.pods import Kubelet, Pod
from lab.procs import Registry


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # field 5 of proc(5): the process group
                pids.append(int(entry.name))
    return pids


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def shim_pids(pod: Pod, runtime: Any) -> list[int]:
    """The engine's per-container processes (containerd-shim) of a pod, if any."""
    if not isinstance(runtime, DockerRuntime):
        return []
    return sorted({parent(pid) for pid in pod_pids(pod, runtime) if parent(pid) > 1})


def pod_pids(pod: Pod, runtime: Any) -> list[int]:
    if isinstance(runtime, DockerRuntime):
        assert runtime.engine is not None
        state = runtime.pods[pod.name]
        pids = []
        for ident in (state.app, state.sandbox):
            if ident is None:
                continue
            top = runtime.engine.api.top(ident)
            column = top["Titles"].index("PID")
            pids += [int(row[column]) for row in top["Processes"]]
        return pids
    assert pod.process is not None
    return group_pids(pod.process.pid)


async def until_answers(pod: Pod, start: float, timeout: float = 60) -> float:
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() - start < timeout:
            try:
                if (await client.get(f"http://{pod.ip}:4000/health")).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    raise TimeoutError(f"{pod.name} did not answer within {timeout} s")


async def one_round(runtime_name: str, version: str, pods: int, tmp: Path) -> dict[str, Any]:
    manifests = load(REPO / "deploy" / "k8s" / version)
    template = manifests.deployment.template
    image = ImageMap.load(REPO / "deploy" / "lab-images.yml").image(template.container.image)
    events = EventLog(progress=None)
    registry = Registry(tmp / "pids.txt")
    runtime = None
    if runtime_name == "docker":
        runtime = await docker_runtime(manifests, None, tmp / "pods")
    kubelet = Kubelet(events, registry, tmp / "pods", dict(os.environ), runtime=runtime)
    try:
        start = time.monotonic()
        made = [kubelet.create_pod(f"calc-{i}", template, image, 1) for i in range(pods)]
        starts = await asyncio.gather(*(until_answers(p, start) for p in made))
        await asyncio.sleep(2)  # settled: imports done, first requests served
        rss = [sum(rss_kib(pid) for pid in pod_pids(p, kubelet.runtime)) / 1024 for p in made]
        shims = [sum(rss_kib(pid) for pid in shim_pids(p, kubelet.runtime)) / 1024 for p in made]
        if isinstance(runtime, DockerRuntime):
            assert all(isinstance(p.running, DockerContainer) for p in made)
        for pod in made:
            kubelet.delete_pod(pod)
        gone_start = time.monotonic()
        await kubelet.wait_all_gone(60)
        gone = time.monotonic() - gone_start
        return {"start_s": starts, "rss_mib": rss, "shim_mib": shims, "all_gone_s": gone}
    finally:
        await kubelet.shutdown()
        if runtime is not None:
            await runtime.close()
        await registry.kill_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="v3", help="manifests deploy/k8s/<version>")
    parser.add_argument("--pods", type=int, default=5, help="pods started at once")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", default="process,docker")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="runtime-cost-") as tmp:
        for i in range(args.rounds):
            for name in args.runtimes.split(","):
                out = Path(tmp) / f"{name}-{i}"
                out.mkdir()
                results.setdefault(name, []).append(
                    asyncio.run(one_round(name, args.version, args.pods, out))
                )
    print(f"{args.version}, {args.pods} pods started at once, {args.rounds} rounds (medians)")
    print(
        f"{'runtime':10} {'start -> /health 200':>22} {'slowest':>9} {'RSS/pod':>9} "
        f"{'+shims':>9} {'gone':>7}"
    )
    for name, rounds in results.items():
        starts = [s for r in rounds for s in r["start_s"]]
        rss = [m for r in rounds for m in r["rss_mib"]]
        shim = [m for r in rounds for m in r["shim_mib"]]
        gone = [r["all_gone_s"] for r in rounds]
        print(
            f"{name:10} {statistics.median(starts):>20.2f} s {max(starts):>7.2f} s "
            f"{statistics.median(rss):>5.1f} MiB {statistics.median(shim):>5.1f} MiB "
            f"{statistics.median(gone):>5.1f} s"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
