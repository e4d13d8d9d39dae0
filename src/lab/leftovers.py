"""Nothing of a run outlives it, however the lab dies: what `lab run` and `lab cluster
up` share to clean up after a SIGKILL, where none of their own clean-up code runs.

- Identity. A process is named by its PID and its start time (field 22 of
  /proc/<pid>/stat, proc(5)): a PID the kernel has since given to another process is
  never signalled. Every child the lab starts carries its owner in its environment
  (`LAB_OWNER=<pid>:<start time>`, and `LAB_OUT=<dir>`), inherited by its own children,
  so a sweep finds every process of a dead owner by a scan of /proc, grandchildren too.
- The lock. A directory (`lab run`'s --out, `lab cluster up`'s state directory) is held
  through an flock on `<dir>/lock` for the owner's whole life; the kernel drops it when
  the owner dies, however it dies.
- The record. What a run makes beside processes (the Docker runtime's containers,
  network and parent cgroup, by run id; the nftables table of dead addresses) is written
  to `<dir>/resources.json`, with the owner, before it is made. The pods' network of
  `--pod-network netns` names its owner itself, in its host link's alias (lab.pod_netns).
- The watchdog (`python -m lab.leftovers watch`). A process of its own session, started
  before anything else, that reads a pipe the owner holds. A clean end writes `done`; an
  end of file without it means the owner died: the watchdog kills the owner's processes
  and removes what the record names, and says so in `<dir>/watchdog.log`.
- The sweep at the next start: what the record of a dead owner names, and anything of a
  dead owner anywhere (marked processes, `lab_dead_<pid>_*` tables, containers and
  networks labelled with their owner, and their cgroups, `labgw-*` links and their
  `lab-*` network namespaces).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

LOCK_FILE = "lock"
RECORD = "resources.json"
WATCHDOG_LOG = "watchdog.log"
OWNER_ENV = "LAB_OWNER"  # <pid>:<start time> of the lab that started the process
OUT_ENV = "LAB_OUT"  # the directory of the run that started it
OWNER_LABEL = "lab.owner"  # the same, on the Docker runtime's containers and network
NFT_TIMEOUT = 10.0
KILL_TIMEOUT = 10.0
DONE = b"done"
_DEAD_TABLE = re.compile(r"^table ip (lab_dead_(\d+)_\d+)$")


# -- processes by PID and start time -----------------------------------------------------


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


def own_start_time() -> int:
    started = start_time(os.getpid())
    assert started is not None  # this process is alive
    return started


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


# -- the owner's mark on its processes ---------------------------------------------------


def owner() -> str:
    """This process as an owner: `<pid>:<start time>`."""
    return f"{os.getpid()}:{own_start_time()}"


def owner_alive(value: str) -> bool:
    pid, _, started = value.partition(":")
    try:
        return same_process(int(pid), int(started))
    except ValueError:
        return True  # not ours to judge: never touched


def marks(out: Path | None = None) -> dict[str, str]:
    """The environment every child of this process carries (lab.procs adds it)."""
    mark = {OWNER_ENV: owner()}
    if out is not None:
        mark[OUT_ENV] = str(out.resolve())
    return mark


def marked() -> dict[int, tuple[str, int]]:
    """Every process that carries an owner's mark: pid -> (owner, its start time)."""
    found: dict[int, tuple[str, int]] = {}
    key = f"{OWNER_ENV}=".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        for var in environ.split(b"\0"):
            if var.startswith(key):
                started = start_time(pid)
                if started is not None:
                    found[pid] = (var[len(key) :].decode(errors="replace"), started)
                break
    return found


def kill_marked(owners: Iterable[str] | None = None, timeout: float = KILL_TIMEOUT) -> list[str]:
    """SIGKILL every process marked by one of `owners` (None: by any owner that is gone),
    scanning again until none is left (one may fork meanwhile); one line per process."""
    wanted = set(owners) if owners is not None else None
    done: list[str] = []
    killed: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            (pid, started, who)
            for pid, (who, started) in marked().items()
            if pid != os.getpid()
            and (who in wanted if wanted is not None else not owner_alive(who))
            and (pid, started) not in killed
        ]
        if not found:
            break
        for pid, started, who in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            killed.add((pid, started))
            done.append(f"killed leftover {_name(pid)} (pid {pid}) of the lab {who}")
        wait_gone(sorted(killed), 2.0)
    return done


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "process"
    return Path(argv[0].decode(errors="replace")).name or "process"


# -- the lock ----------------------------------------------------------------------------


class DirLock:
    """The flock on `dir/lock`. The file's descriptor is not inherited by the children
    (Python opens files close-on-exec), so only this process holds it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
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


# -- the record of what a run makes beside processes -------------------------------------


def record(directory: Path, docker_run: str | None, nft_table: str | None) -> None:
    """Write what the run makes before it makes it: a crash in between leaves a record
    of something that is not there, which the sweep takes as done."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"owner": owner(), "docker_run": docker_run, "nft_table": nft_table}))
    tmp.replace(path)  # a reader never sees half a record


def forget(directory: Path) -> None:
    (directory / RECORD).unlink(missing_ok=True)


def recorded(directory: Path, name: str = RECORD) -> dict[str, Any] | None:
    """The JSON object `name` in `directory` holds, or None (missing, unreadable, not
    an object)."""
    try:
        data = json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sweep(directory: Path, only_owner: str | None = None) -> list[str]:
    """Remove what a dead owner's record names: its marked processes, its nftables table,
    its Docker containers, network and cgroup; then the record. One line per thing
    removed. With `only_owner`, nothing unless the record is that owner's."""
    data = recorded(directory)
    if data is None:
        return []
    who = data.get("owner")
    if only_owner is not None and who != only_owner:
        return []
    if isinstance(who, str) and owner_alive(who):
        return []  # a live owner's record (a caller without the lock): not ours to touch
    done: list[str] = kill_marked([who]) if isinstance(who, str) else []
    if data.get("nft_table"):
        done += drop_table(str(data["nft_table"]))
    if data.get("docker_run"):
        done += drop_docker([str(data["docker_run"])])
    if isinstance(who, str):
        from lab import pod_netns  # its host link's alias names the owner: no record needed

        done += pod_netns.sweep(who)
    if only_owner is None:
        forget(directory)
    return done


def drop_table(table: str) -> list[str]:
    result = _nft("delete", "table", "ip", table)
    return [f"removed leftover nftables table {table}"] if result is not None else []


def _nft(*args: str) -> str | None:
    """nft's output, or None when it failed (or is not here)."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        result = subprocess.run(
            [nft, *args], capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _engine() -> Any:
    """A Docker client, or None where no engine is configured or answers."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return None
    try:
        import docker
    except ImportError:
        return None
    try:
        engine = docker.from_env(timeout=30)
        engine.ping()
    except docker.errors.DockerException:
        return None
    return engine


def drop_docker(run_ids: Iterable[str], engine: Any = None) -> list[str]:
    """Remove the containers, networks and parent cgroups of these Docker runtime runs."""
    from lab.docker_runtime import LABEL
    from lab.run_cgroup import RunCgroup

    run_ids = list(run_ids)
    done: list[str] = []
    own = engine is None
    engine = engine if engine is not None else _engine()
    if engine is not None:
        import docker

        try:
            for run_id in run_ids:
                # Listed without an inspect each, and removed one by one: another sweep
                # (the watchdog, the next start) may remove some meanwhile.
                selector = {"label": f"{LABEL}={run_id}"}
                with contextlib.suppress(docker.errors.DockerException):
                    for info in engine.api.containers(all=True, filters=selector):
                        name = ",".join(n.lstrip("/") for n in info.get("Names") or [info["Id"]])
                        with contextlib.suppress(docker.errors.NotFound):
                            engine.api.remove_container(info["Id"], force=True)
                            done.append(f"removed leftover container {name}")
                with contextlib.suppress(docker.errors.DockerException):
                    for info in engine.api.networks(filters=selector):
                        with contextlib.suppress(docker.errors.NotFound):
                            engine.api.remove_network(info["Id"])
                            done.append(f"removed leftover network {info.get('Name')}")
        finally:
            if own:
                engine.close()
    for run_id in run_ids:
        cgroup = RunCgroup(f"lab-{run_id}")
        existed = [d for d in cgroup.directories() if d.exists()]
        if existed and not cgroup.remove():
            done.append(f"removed leftover cgroup {cgroup.parent}")
    return done


def sweep_stale() -> list[str]:
    """Anything of a dead owner anywhere on this machine: its marked processes, its
    `lab_dead_<pid>_*` tables, and the Docker runs labelled with it."""
    from lab import pod_netns

    done = kill_marked()
    done += pod_netns.sweep()
    listing = _nft("list", "tables") if os.geteuid() == 0 else None
    for line in (listing or "").splitlines():
        match = _DEAD_TABLE.match(line.strip())
        if match and start_time(int(match.group(2))) is None:
            done += drop_table(match.group(1))
    engine = _engine()
    if engine is not None:
        import docker

        from lab.docker_runtime import LABEL

        runs: set[str] = set()
        with contextlib.closing(engine), contextlib.suppress(docker.errors.DockerException):
            things = [
                *engine.api.containers(all=True, filters={"label": OWNER_LABEL}),
                *engine.api.networks(filters={"label": OWNER_LABEL}),
            ]
            for thing in things:
                labels = thing.get("Labels") or {}
                if not owner_alive(labels.get(OWNER_LABEL, "")) and labels.get(LABEL):
                    runs.add(labels[LABEL])
            done += drop_docker(sorted(runs), engine)
    return done


# -- the watchdog ------------------------------------------------------------------------


class Watchdog:
    """A process that outlives the lab to clean up after it (see the module's doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None

    def start(self) -> None:
        read, write = os.pipe()  # both close-on-exec: no other child inherits them
        env = {k: v for k, v in os.environ.items() if k not in (OWNER_ENV, OUT_ENV)}
        log: IO[bytes]
        try:
            with (self.directory / WATCHDOG_LOG).open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "lab.leftovers", "watch", str(self.directory), owner()],
                    stdin=read,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # no Ctrl-C from the terminal, no SIGHUP
                )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._pipe = write

    def stop(self, timeout: float = 5.0) -> None:
        """The clean end: the watchdog exits without touching anything."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe, DONE)
            os.close(self._pipe)
            self._pipe = None
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
            self.process = None


class Held(RuntimeError):
    """Another live process holds the directory."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.pid = pid
        super().__init__(
            f"{directory} is held by a running lab (PID {pid if pid is not None else '?'})"
        )


class Claim:
    """A run's hold on its directory: the lock, the sweep of what a dead earlier owner
    left, the record, and the watchdog."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lock = DirLock(directory)
        self.watchdog = Watchdog(directory)

    def take(self) -> list[str]:
        """Lock the directory (Held when a live process has it), sweep, record this
        process as the owner and start the watchdog. Returns what the sweep removed (and
        what an earlier run's watchdog did), one line each."""
        if not self.lock.try_acquire():
            raise Held(self.directory, self.lock.holder())
        try:
            log = self.directory / WATCHDOG_LOG
            said = log.read_text().splitlines() if log.exists() else []
            log.unlink(missing_ok=True)
            done = [f"its watchdog: {line.split(': ', 1)[-1]}" for line in said]
            data = recorded(self.directory)
            if data is not None and data.get("owner") and not owner_alive(str(data["owner"])):
                pid = str(data["owner"]).partition(":")[0]
                done.insert(0, f"an earlier run (PID {pid}) ended without its clean-up")
            done += sweep(self.directory)
            done += sweep_stale()
            record(self.directory, None, None)
            self.watchdog.start()
        except BaseException:
            self.lock.release()
            raise
        return done

    def release(self, clean: bool) -> None:
        """The owner's end. `clean`: every part was stopped and removed, so the record
        goes; else it stays for the next start. The watchdog is told either way: the
        owner lives, and did what it could."""
        if clean:
            forget(self.directory)
        self.watchdog.stop()
        self.lock.release()


def watch(directory: Path, owner_value: str) -> int:
    """The watchdog's life: wait for the owner's end; if it died, clean up after it."""
    said = sys.stdin.buffer.read()  # until the owner writes `done` or dies
    if said == DONE:
        return 0
    pid, _, started = owner_value.partition(":")
    # The pipe closes while the owner exits; its /proc entry goes a moment later.
    wait_gone([(int(pid), int(started))], KILL_TIMEOUT)
    began = time.monotonic()
    done = kill_marked([owner_value]) + sweep(directory, only_owner=owner_value)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    took = f"{time.monotonic() - began:.1f} s"
    for line in [*done, f"swept in {took}" if done else f"nothing was left ({took})"]:
        print(f"{stamp} the lab {owner_value} died: {line}", flush=True)
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "watch":
        # Only SIGKILL ends the watchdog before its work is done.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        return watch(Path(argv[1]), argv[2])
    print("usage: python -m lab.leftovers watch DIR OWNER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
