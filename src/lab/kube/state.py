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

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.kube import leftovers

STATE_FILE = "cluster.json"
LOCK_FILE = "lock"
KUBECONFIG = "kubeconfig"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None when there is no
    such process or it is a zombie (dead; only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of the line; fields[0] is field 3


def same_process(pid: int, started: int) -> bool:
    """True while `pid` is still the process that started at `started`."""
    return pid > 0 and start_time(pid) == started


def kill_group(pid: int, started: int) -> bool:
    """SIGKILL the process group led by `pid` if `pid` is still that process. True if
    it was signalled."""
    if not same_process(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGCONT)  # a stopped process takes SIGKILL too; no harm
        os.killpg(pid, signal.SIGKILL)
        return True
    return False


def wait_gone(processes: list[tuple[int, int]], timeout: float) -> list[int]:
    """Wait until none of (pid, start time) is alive, at most `timeout` s; the PIDs
    still alive at the end."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid, started in processes if same_process(pid, started)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


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


def own_start_time() -> int:
    started = start_time(os.getpid())
    assert started is not None  # this process is alive
    return started


class StateLock:
    """The flock on `state_dir/lock`. The file's descriptor is not inherited by the
    children (Python opens files close-on-exec), so only this process holds it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True if this process now does."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> int | None:
        """The PID holding the lock: the one the holder wrote, when /proc/locks confirms
        it holds an flock on this file (the file may still hold the last owner's PID in
        the instant between a new owner's flock and its write: then None)."""
        try:
            pid = int(self.path.read_text().strip())
            inode = self.path.stat().st_ino
            locks = Path("/proc/locks").read_text().splitlines()
        except (OSError, ValueError):
            return None
        for line in locks:
            # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:819980 0 EOF" (proc(5)); the device
            # is left out: it is not always the one stat reports (overlay file systems).
            parts = line.split()
            if (
                len(parts) >= 6
                and parts[1] == "FLOCK"
                and parts[4] == str(pid)
                and parts[5].rsplit(":", 1)[-1] == str(inode)
            ):
                return pid
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


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
