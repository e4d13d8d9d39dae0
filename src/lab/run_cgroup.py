"""The run's own parent cgroup for its containers, weighted as the pods' processes would be.

Under the engine's default parent (`/docker`) every container of every run shares one
CPU weight, that of a single host process: against k6's and HAProxy's threads, InfluxDB
and whatever else runs on the machine, all pods together got what one process gets, and
under load they waited on the run queue far longer than the same pods as processes (lab
README, "Pods as containers"). On a node the kubelet gives its pods a parent of their own
(`kubepods`, weighted by the node's allocatable CPU: --enforce-node-allocatable=pods,
https://kubernetes.io/docs/tasks/administer-cluster/reserve-compute-resources/), and the
load generator and the balancer run elsewhere. Here the load shares the machine, so the lab
gives the run's containers a parent of their own (`lab-<run id>`, a child of the root on
each controller) whose weight is one process's per pod, as on the process runtime. Inside
it, each container keeps the weight its CPU request gives it (lab.container_config).

Only with the engine's `cgroupfs` driver (a path parent; the systemd driver takes slices)
and a writable cgroup file system (root). The directories are removed at the end, once
the containers are gone; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
ONE_PROCESS_V1 = 1024  # cpu.shares of a nice-0 process's group
ONE_PROCESS_V2 = 100  # cpu.weight's default
REMOVE_TRIES = 20  # a cgroup stays busy for a moment after its last process went


def unavailable(driver: str, root: Path = ROOT) -> str | None:
    """None if the run can have its own weighted parent here, else why not."""
    if driver != "cgroupfs":
        return f"the engine's cgroup driver is {driver!r}, not cgroupfs"
    if not os.access(root, os.W_OK) and not os.access(root / "cpu", os.W_OK):
        return f"{root} is not writable (needs root)"
    if not (root / "cpu" / "cpu.shares").exists() and not (root / "cgroup.controllers").exists():
        return f"no cpu controller under {root}"
    return None


class RunCgroup:
    def __init__(self, name: str, root: Path = ROOT) -> None:
        self.name = name
        self.root = root
        self.v1 = (root / "cpu" / "cpu.shares").exists()
        self.made = False

    @property
    def parent(self) -> str:
        """The engine's `cgroup_parent` for the run's containers."""
        return f"/{self.name}"

    @property
    def cpu_dir(self) -> Path:
        return self.root / "cpu" / self.name if self.v1 else self.root / self.name

    def make(self) -> None:
        """Make the parent before any container, so that its weight is set from the start."""
        self.cpu_dir.mkdir(exist_ok=True)
        self.made = True
        self.weigh(0)

    def weigh(self, pods: int) -> None:
        """One process's weight per pod (at least one's, so an empty run is not starved)."""
        if not self.made:
            return
        if self.v1:
            (self.cpu_dir / "cpu.shares").write_text(str(ONE_PROCESS_V1 * max(1, pods)))
        else:
            weight = min(10_000, ONE_PROCESS_V2 * max(1, pods))
            (self.cpu_dir / "cpu.weight").write_text(str(weight))

    def directories(self) -> list[Path]:
        """Every directory of the parent, on each controller the engine made it on."""
        found = [d for d in self.root.glob(f"*/{self.name}") if d.is_dir()]
        if (self.root / self.name).is_dir():
            found.append(self.root / self.name)
        return found

    def remove(self) -> list[Path]:
        """Remove the parent's directories (their containers removed first); returns those
        still there after REMOVE_TRIES tries. Safe to call twice."""
        left = self.directories()
        for _ in range(REMOVE_TRIES):
            for directory in left:
                with contextlib.suppress(OSError):  # gone already, or still busy
                    directory.rmdir()
            left = [d for d in left if d.exists()]
            if not left:
                break
            time.sleep(0.05)
        self.made = False
        return left
