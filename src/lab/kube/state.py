"""What a running `lab cluster up` leaves in its state directory, so another `lab`
process can find it, stop it, or clean up after it.

- `lock`: an flock held by the running `up` for its whole life (the file holds its PID).
  The kernel drops it when the process dies, however it dies, so "lock free" means "no
  live owner", whatever cluster.json says.
- `cluster.json`: the owner's PID, each component's PID with its start time, the ports,
  the API URL and the kubeconfig path, and `ready`.

A PID is only ever signalled together with the start time recorded for it (field 22 of
/proc/<pid>/stat, proc(5)): a PID the kernel has since given to another process is left
alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.kube import leftovers
from lab.leftovers import DirLock as StateLock
from lab.leftovers import kill_group, own_start_time, same_process, start_time, wait_gone

__all__ = [
    "ClusterState",
    "ComponentRecord",
    "StateLock",
    "kill_group",
    "own_start_time",
    "same_process",
    "start_time",
    "sweep",
    "wait_gone",
]

STATE_FILE = "cluster.json"
LOCK_FILE = "lock"
KUBECONFIG = "kubeconfig"


@dataclass
class ComponentRecord:
    name: str
    pid: int
    start_time: int
    ports: dict[str, int]
    log: str
    healthy: bool = False


@dataclass
class ClusterState:
    owner_pid: int
    owner_start_time: int
    api_url: str
    kubeconfig: str
    components: list[ComponentRecord] = field(default_factory=list)
    ready: bool = False
    started_at: float = field(default_factory=time.time)  # wall clock, for people

    def owner_alive(self) -> bool:
        return same_process(self.owner_pid, self.owner_start_time)

    def save(self, state_dir: Path) -> None:
        # Written whole and renamed into place: a reader never sees half a file.
        path = state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        """The recorded state, or None when there is none or it cannot be read (a file
        from another version, or a crash mid-write of an older lab)."""
        try:
            data: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
            components = [ComponentRecord(**c) for c in data.pop("components", [])]
            return cls(components=components, **data)
        except (OSError, ValueError, TypeError):
            return None


def sweep(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Clean up after an owner that is gone (the caller holds the lock, so it is):
    SIGKILL every recorded component that is still the recorded process, wait for them,
    and remove the state file and the admin kubeconfig. Returns what was done, one line
    per thing, empty when there was nothing."""
    done: list[str] = []
    state = ClusterState.load(state_dir)
    if state is not None:
        killed = []
        for record in reversed(state.components):
            if kill_group(record.pid, record.start_time):
                killed.append((record.pid, record.start_time))
                done.append(f"killed leftover {record.name} (pid {record.pid})")
        for pid in wait_gone(killed, timeout):
            done.append(f"pid {pid} still alive {timeout:g} s after SIGKILL")
    # The nodes' containers, network, cgroup and nftables table (lab.kube.leftovers).
    done += leftovers.sweep(state_dir / leftovers.NODES_DIR)
    for name in (STATE_FILE, KUBECONFIG):
        path = state_dir / name
        if path.exists():
            path.unlink()
            done.append(f"removed stale {path}")
    return done
