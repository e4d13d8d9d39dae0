"""One chaos run: calc as a real process against the scripted fake InfluxDB, a load of
clients (some vanishing before their answer), signals at the plan's moments (a SIGKILL is
followed by a restart on the same port and spool), then the invariant is checked.

The invariant: every request id answered 200 is in the sink, or still in the spool, or
counted as lost (by a log line and the lost-operations metric); each process exits within
its budget (the grace period from its first SIGTERM/SIGINT, plus a margin for this shared
machine); nothing is cancelled after "Shutdown finished"; no traceback in any log; no
point stored twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab.influx import free_port
from tests.chaos.fake_influx import ScriptedInflux
from tests.chaos.plan import GRACE_PERIOD, Plan
from tests.support import VENV_BIN, Processes, http_ok, wait_until

POD = "chaos-pod"
EXIT_MARGIN = 2.0  # interpreter exit and a loaded machine, beyond the grace period
_ID = re.compile(r'id="((?:[^"\\]|\\.)*)"')
_APP_STOPPED = re.compile(r"App stopped: .*?(\d+) lost")
# A third signal's exit, with what it leaves unwritten (and whether that is in the spool).
_FORCED_EXIT = re.compile(
    r"Exiting at once .*?left unwritten: (\d+) operations( \(left in the spool)?"
)
# A running total of what a process has lost, as its loss log lines end.
_LOST_SO_FAR = re.compile(r"(\d+) lost so far in all")


class Interrupted(Exception):
    """The run was asked to stop (its `interrupt` event was set)."""


@dataclass
class Life:
    """One calc process of the run."""

    process: subprocess.Popen[bytes]
    started: float
    signals: list[tuple[float, str]] = field(default_factory=list)
    exited_at: float | None = None
    killed_by_harness: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # last scraped
    log: str = ""

    @property
    def first_stop_signal(self) -> float | None:
        return next((at for at, sig in self.signals if sig != "SIGKILL"), None)

    @property
    def sigkilled(self) -> bool:
        return self.killed_by_harness or any(sig == "SIGKILL" for _, sig in self.signals)


@dataclass
class Outcome:
    plan: Plan
    answers: dict[str, object] = field(default_factory=dict)  # id -> status or error name
    vanished: list[str] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    stored: dict[str, int] = field(default_factory=dict)
    spooled: set[str] = field(default_factory=set)
    writes: int = 0
    peak_writes: int = 0  # most write requests the sink got in any one second
    problems: list[str] = field(default_factory=list)

    @property
    def answered_200(self) -> set[str]:
        return {rid for rid, status in self.answers.items() if status == 200}

    def summary(self) -> str:
        statuses: dict[str, int] = {}
        for status in self.answers.values():
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        exits = ", ".join(
            f"{life.process.returncode}"
            + (
                f" {life.exited_at - t:.2f} s after {sig}"
                if (t := life.first_stop_signal) and life.exited_at
                else ""
            )
            for life in self.lives
            for sig in [next((s for _, s in life.signals if s != "SIGKILL"), "-")]
        )
        return (
            f"seed {self.plan.seed} {self.plan.profile}: answers {statuses}, "
            f"{len(self.vanished)} vanished, {len(self.stored)} ids stored, "
            f"{len(self.spooled)} spooled, {self.writes} writes to the sink "
            f"(at most {self.peak_writes} in a second), "
            f"{len(self.lives)} process(es) exited {exits}"
        )


class ChaosRun:
    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        processes: Processes,
        interrupt: threading.Event | None = None,
    ) -> None:
        """`interrupt`, once set (e.g. by a signal handler), ends the run at its next
        wait with `Interrupted`; the caller then cleans up `processes`."""
        self.plan = plan
        self.interrupt = interrupt or threading.Event()
        self.workdir = workdir
        self.processes = processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sink = ScriptedInflux(plan.sink)
        self.outcome = Outcome(plan)
        self._stop_load = threading.Event()
        self._life: Life | None = None
        self._lock = threading.Lock()

    # -- the run ---------------------------------------------------------------------------

    def execute(self) -> Outcome:
        self.sink.start()
        threads: list[threading.Thread] = []
        try:
            self._start_calc()
            threads = [
                threading.Thread(target=self._client, args=(i,), name=f"chaos-client-{i}")
                for i in range(self.plan.clients)
            ]
            threads.append(threading.Thread(target=self._scrape, name="chaos-metrics"))
            for thread in threads:
                thread.start()
            self._signals()
        finally:
            self._stop_load.set()
            for thread in threads:
                thread.join(15)
            self.outcome.stored = self.sink.stored_ids()
            self.outcome.writes = len(self.sink.requests)
            self.outcome.peak_writes = peak_per_second([r.at for r in self.sink.requests])
            self.sink.close()
        for life in self.outcome.lives:
            life.log = self.processes.output(life.process)
        self.outcome.spooled = spooled_ids(self.workdir / "spool" / f"{POD}-{self.port}")
        self.outcome.problems = check(self.outcome)
        return self.outcome

    def _start_calc(self) -> None:
        env = {
            "INFLUXDB_BASE_URL": self.sink.url,
            "CALC_POD": POD,
            "CALC_SPOOL_DIR": str(self.workdir / "spool"),
            **self.plan.env(),
        }
        process = self.processes.start(
            [
                str(VENV_BIN / "calc"),
                "serve",
                "--profile",
                self.plan.profile,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            name=f"calc-{self.plan.profile}",
        )
        life = Life(process, time.monotonic())
        self.outcome.lives.append(life)
        wait_until(
            lambda: (
                self.interrupt.is_set()
                or process.poll() is not None
                or http_ok(f"{self.url}/health")
            ),
            timeout=20,
            what="calc to answer /health",
        )
        self._check_interrupt()
        if process.poll() is not None:
            raise RuntimeError(f"calc exited at start:\n{self.processes.output(process)}")
        with self._lock:
            self._life = life

    def _signals(self) -> None:
        base = time.monotonic()
        deadline = base + self.plan.duration
        for step in self.plan.signals:
            life = self._current()
            if self._wait_exit(life, base + step.after):
                break  # the process is gone: later signals have no target
            now = time.monotonic()
            life.signals.append((now, step.signal))
            if step.signal == "SIGKILL":
                self._kill(life)
                life.process.wait(10)
                life.exited_at = time.monotonic()
                self._pause(step.restart_after)
                self._start_calc()
            else:
                os.kill(life.process.pid, getattr(signal, step.signal))
            base = time.monotonic()
        life = self._current()
        if (
            life.process.poll() is None
            and life.first_stop_signal is None
            and not self._wait_exit(life, deadline)
        ):
            life.signals.append((time.monotonic(), "SIGTERM"))
            os.kill(life.process.pid, signal.SIGTERM)
        stop_at = life.first_stop_signal
        if stop_at is not None and life.process.poll() is None:
            budget_end = stop_at + GRACE_PERIOD + EXIT_MARGIN
            if not self._wait_exit(life, budget_end):
                # What a kubelet does at the end of the grace period.
                life.killed_by_harness = True
                self._kill(life)
        life.process.wait(10)
        if life.exited_at is None:
            life.exited_at = time.monotonic()

    def _wait_exit(self, life: Life, until: float) -> bool:
        """Wait until `until` or the process's exit; True when it has exited."""
        while time.monotonic() < until:
            if life.process.poll() is not None:
                break
            self.interrupt.wait(0.01)
            self._check_interrupt()
        if life.process.poll() is not None:
            if life.exited_at is None:
                life.exited_at = time.monotonic()
            return True
        return False

    def _pause(self, seconds: float) -> None:
        # Part of the plan (the time a restart takes), not a wait for state.
        self.interrupt.wait(seconds)
        self._check_interrupt()

    def _check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted(f"seed {self.plan.seed} interrupted")

    def _current(self) -> Life:
        with self._lock:
            assert self._life is not None
            return self._life

    # -- load and metrics --------------------------------------------------------------

    def _client(self, number: int) -> None:
        rng = random.Random(f"{self.plan.seed}-{number}")
        count = 0
        with httpx.Client(timeout=5) as http:
            while not self._stop_load.is_set():
                rid = f"s{self.plan.seed}-c{number}-{count}"
                count += 1
                if rng.random() < self.plan.vanish_rate:
                    self._vanish(rid, rng.uniform(0, self.plan.slow_math))
                    continue
                try:
                    response = http.post(
                        f"{self.url}/sum",
                        json={"numbers": [count, 1]},
                        headers={"x-request-id": rid},
                    )
                except httpx.HTTPError as exc:
                    self.outcome.answers[rid] = type(exc).__name__
                    self._stop_load.wait(0.05)  # pacing while the service is away
                else:
                    self.outcome.answers[rid] = response.status_code

    def _vanish(self, rid: str, after: float) -> None:
        """Send a whole request, then close the connection before the answer."""
        body = b'{"numbers": [1, 2]}'
        head = (
            f"POST /sum HTTP/1.1\r\nHost: chaos\r\nx-request-id: {rid}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(head + body)
                self.outcome.vanished.append(rid)
                self._stop_load.wait(after)
        except OSError:
            self._stop_load.wait(0.05)

    def _scrape(self) -> None:
        with httpx.Client(timeout=1) as http:
            while not self._stop_load.wait(0.25):
                self._scrape_once(http, self._current())

    def _scrape_once(self, http: httpx.Client, life: Life) -> None:
        """The operation counters of /metrics, kept as the last values seen for `life`."""
        try:
            text = http.get(f"{self.url}/metrics").text
        except httpx.HTTPError:
            return
        if life is not self._current() or life.process.poll() is not None:
            return  # the answer may come from the process restarted on the same port
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("calc_operations_"):
                with contextlib.suppress(ValueError):
                    life.metrics[name] = float(value)

    def _kill(self, life: Life) -> None:
        """SIGKILL the process's group, its counters scraped just before: what the
        metric counted up to the kill counts as counted (a log line may still have been
        waiting for its once-a-second turn)."""
        with httpx.Client(timeout=1) as http:
            self._scrape_once(http, life)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(life.process.pid, signal.SIGKILL)


def peak_per_second(times: list[float]) -> int:
    """The most of `times` (seconds) that fall in any window of one second."""
    times = sorted(times)
    peak, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def spooled_ids(directory: Path) -> set[str]:
    """Ids of the lines left unsettled in the spool segments (as recovery would read them)."""
    ids: set[str] = set()
    for segment in sorted(directory.glob("*.spool")):
        lines = [line for line in segment.read_text(errors="replace").split("\n")[:-1] if line]
        done = segment.with_suffix(".done")
        settled = int(done.read_text()) if done.exists() else 0
        for line in lines[settled:]:
            found = _ID.search(line)
            if found:
                ids.add(found.group(1))
    return ids


def check(outcome: Outcome) -> list[str]:
    """The invariant, as a list of what broke it (empty: the run is clean)."""
    problems: list[str] = []
    reported_lost = 0
    killed: list[str] = []  # how the lost count of each killed process was taken
    for index, life in enumerate(outcome.lives):
        name = f"process {index + 1} (pid {life.process.pid})"
        stopped = _APP_STOPPED.findall(life.log)
        if stopped:
            reported_lost += int(stopped[-1])
            final = int(stopped[-1])
            if life.metrics.get("calc_operations_lost_total", 0) > final:
                problems.append(
                    f"{name}: the lost metric reached {life.metrics['calc_operations_lost_total']:.0f}"
                    f" but the final log line says {final} lost"
                )
        else:
            # Killed, or exited at once on a third signal: what it had counted lost is
            # its last scrape or its last logged total; a forced exit also logs what it
            # leaves unwritten, lost unless that is in the spool (checked by id).
            logged = [int(n) for n in _LOST_SO_FAR.findall(life.log)]
            scraped = int(life.metrics.get("calc_operations_lost_total", 0))
            reported_lost += max([scraped, *logged])
            if life.sigkilled:
                killed.append(
                    f"process {index + 1} SIGKILLed: {logged[-1] if logged else 0} lost by its"
                    f" last loss log line, {scraped} by its metric just before the kill"
                )
            forced = _FORCED_EXIT.findall(life.log)
            if forced:
                unwritten, in_spool = forced[-1]
                reported_lost += 0 if in_spool else int(unwritten)
            elif not life.sigkilled:
                problems.append(
                    f"{name}: exited ({life.process.returncode}) without a final accounting line"
                    " ('App stopped', or 'Exiting at once' with what it leaves unwritten)"
                )
        stop_at = life.first_stop_signal
        if life.killed_by_harness:
            problems.append(
                f"{name}: still running {GRACE_PERIOD + EXIT_MARGIN:.0f} s after its first stop signal; SIGKILLed"
            )
        elif stop_at is not None and life.exited_at is not None and not life.sigkilled:
            took = life.exited_at - stop_at
            if took > GRACE_PERIOD + EXIT_MARGIN:
                problems.append(
                    f"{name}: exited {took:.2f} s after its first stop signal (budget {GRACE_PERIOD:.0f} s)"
                )
        problems.extend(f"{name}: {p}" for p in _log_problems(life.log))
    missing = outcome.answered_200 - set(outcome.stored) - outcome.spooled
    if len(missing) > reported_lost:
        sample = ", ".join(sorted(missing)[:5])
        problems.append(
            f"{len(missing)} ids answered 200 are neither in the sink nor in the spool, and only "
            f"{reported_lost} were counted lost (e.g. {sample})"
            + "".join(f"; {note}" for note in killed)
        )
    if reported_lost and not any(
        re.search(r" (WARNING|ERROR) .*(lost|[Dd]ropp|rejected|unwritten)", life.log)
        for life in outcome.lives
    ):
        problems.append(f"{reported_lost} counted lost but no warning or error line says so")
    doubles = sorted(rid for rid, n in outcome.stored.items() if n > 1)
    if doubles:
        problems.append(f"{len(doubles)} ids stored as more than one point (e.g. {doubles[:3]})")
    return problems


def _log_problems(log: str) -> list[str]:
    problems: list[str] = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            # The exception is the first unindented line after the traceback's frames.
            tail = next((n for n in lines[i + 1 :] if n and not n.startswith(" ")), "?")
            problems.append(f"traceback in the log: {tail.strip()[:200]}")
    finished = next((i for i, line in enumerate(lines) if "Shutdown finished" in line), None)
    if finished is not None:
        late = [line for line in lines[finished + 1 :] if "ancel" in line]
        if late:
            problems.append(f"cancelled after 'Shutdown finished': {late[0].strip()[:200]}")
    return problems
