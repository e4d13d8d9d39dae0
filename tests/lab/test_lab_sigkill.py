"""`lab run` killed with SIGKILL leaves nothing behind, and one --out holds one run.

The chaos test: `lab run` (tiny-app pods writing to the lab's InfluxDB on the process
runtime; calc v10 on the Docker runtime) gets SIGKILL at a seeded random moment: a phase
drawn from those it goes through, plus a drawn delay. Then, within a deadline, nothing of
it is left: no process it logged, none whose command line or environment points into its
--out, no nftables table, container, network or cgroup of it. The next `lab run` on the
same --out says what it removed (if anything remained) and completes.

`make test` runs a few seeds (LAB_CHAOS_SEEDS, LAB_CHAOS_DOCKER_SEEDS);
`make lab-chaos SEEDS=1-30 RUNTIMES=process,docker` runs many.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab import leftovers
from lab.docker_runtime import LABEL
from lab.influx import free_port
from lab.run_cgroup import RunCgroup
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.support import REPO, VENV_BIN, wait_until

# Phases of a run, in order; a kill lands at one of them (or before the first).
PHASES = ["", "start", "influxdb", "haproxy", "deploy", "warm-up", "action", "cool-down"]
# The next run: as short as a complete run gets.
NEXT_RUN = ["--scenario", "steady", "--replicas", "1", "--vus", "1", "--warmup", "0.5"]
NEXT_RUN += ["--duration", "0.5", "--cooldown", "0"]
GONE_WITHIN = 30.0  # seconds for the watchdog to remove everything after the kill


def _seeds(variable: str, default: str) -> list[int]:
    """`1-3,7` -> [1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in os.environ.get(variable, default).split(","):
        if part.strip():
            low, _, high = part.partition("-")
            seeds += range(int(low), int(high or low) + 1)
    return seeds


def _runtimes() -> set[str]:
    return set(os.environ.get("LAB_CHAOS_RUNTIMES", "process,docker").split(","))


def _lab(out: Path, manifests: Path, *options: str, images: Path | None = TINY_IMAGES) -> list[str]:
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(manifests), "--out", str(out)]
    if images is not None:
        argv += ["--image-map", str(images)]
    return [*argv, "--seed", "1", "--quiet", *options]


def _tiny(tmp_path: Path) -> Path:
    return tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "0.3"],
        readiness=READY_PROBE,
        pre_stop={"sleep": {"seconds": 1}},
        grace=5,
        env=[{"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}],
    )


def _phases(out: Path) -> list[str]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    phases = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("kind") == "phase":
                phases.append(str(event.get("detail", "")).split(" ")[0])
    return phases


def _points_into(pid: int, out: str) -> bool:
    """The process's command line or environment names the run's directory."""
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return out.encode() in text


def _left(out: Path, lab_pid: int, owner: str, docker_run: str | None) -> list[str]:
    """What of the killed run is still there."""
    left = []
    where = str(out.resolve())
    recorded = out / "pids.txt"
    lines = recorded.read_text().splitlines() if recorded.exists() else []
    for line in lines:
        pid = int(line.split()[0])
        # Alive, and still that run's (not a PID the kernel gave to another process).
        if leftovers.start_time(pid) is not None and _points_into(pid, where):
            left.append(f"logged process {line}")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if leftovers.start_time(pid) is not None and _points_into(pid, where):
                with contextlib.suppress(OSError):
                    command = Path(f"/proc/{pid}/cmdline").read_bytes()[:80]
                    left.append(f"process {pid} {command!r}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    left += [t for t in tables.splitlines() if f"lab_dead_{lab_pid}_" in t]
    if docker_run is not None:
        import docker

        engine = docker.from_env(timeout=30)
        with contextlib.closing(engine):
            for label in (f"{leftovers.OWNER_LABEL}={owner}", f"{LABEL}={docker_run}"):
                selector: dict[str, str | list[str] | bool] = {"label": label}
                # Listed without an inspect each: the watchdog removes them meanwhile.
                left += [f"container {c['Names']}" for c in engine.api.containers(all=True, filters=selector)]  # fmt: skip
                left += [f"network {n['Name']}" for n in engine.api.networks(filters=selector)]
        left += [f"cgroup {d}" for d in RunCgroup(f"lab-{docker_run}").directories()]
    return sorted(set(left))


def _kill_at_random_moment(
    tmp_path: Path, seed: int, argv: list[str], out: Path, phases: list[str]
) -> tuple[int, str, str | None, str]:
    """Start `lab run`, SIGKILL it at the seed's moment; returns its PID, its owner mark,
    its Docker run id (if it recorded one) and what the moment was."""
    rng = random.Random(seed)
    phase = rng.choice(phases)
    delay = rng.uniform(0, 1.0)
    moment = f"seed {seed}: {delay:.2f} s after phase {phase or '(launch)'}"
    log = tmp_path / f"lab-{seed}.log"
    with log.open("wb") as sink:
        lab = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        owner = wait_until(
            lambda: f"{lab.pid}:{leftovers.start_time(lab.pid)}", 10, what="the lab's start time"
        )
        if phase:
            wait_until(
                lambda: phase in _phases(out) or lab.poll() is not None,
                90,
                interval=0.05,
                what=f"phase {phase}",
            )
        time.sleep(delay)  # the drawn moment itself
        assert lab.poll() is None, f"{moment}: the lab ended first\n{log.read_text()[-3000:]}"
        lab.send_signal(signal.SIGKILL)
        lab.wait(10)
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
    record = leftovers.recorded(out) or {}
    docker_run = record.get("docker_run")
    return lab.pid, owner, str(docker_run) if docker_run else None, moment


def _chaos(
    tmp_path: Path, seed: int, first: list[str], after: list[str], phases: list[str]
) -> None:
    out = tmp_path / "out"
    lab_pid, owner, docker_run, moment = _kill_at_random_moment(tmp_path, seed, first, out, phases)
    deadline = time.monotonic() + GONE_WITHIN
    left = _left(out, lab_pid, owner, docker_run)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _left(out, lab_pid, owner, docker_run)
    assert not left, f"{moment}: left {GONE_WITHIN:g} s after the SIGKILL: {left}"
    print(f"{moment}: nothing left after {GONE_WITHIN - deadline + time.monotonic():.1f} s")
    began = time.monotonic()
    # The next run on the same --out starts, says what it found, and completes.
    next_run = subprocess.run(after, capture_output=True, text=True, cwd=REPO, timeout=100)
    assert next_run.returncode == 0, f"{moment}: {next_run.stderr[-3000:]}"
    print(f"next run: {time.monotonic() - began:.1f} s; {next_run.stderr}")
    if "(launch)" not in moment:  # it had claimed the --out: its record names it
        assert f"earlier run (PID {lab_pid}) ended without its clean-up" in next_run.stderr, (
            moment,
            next_run.stderr[-3000:],
        )
    assert json.loads((out / "report.json").read_text())["requests"] > 0
    assert not (out / leftovers.RECORD).exists(), "a clean end forgets its record"


@pytest.mark.parametrize("seed", _seeds("LAB_CHAOS_SEEDS", "1,17"))
def test_sigkill_at_a_random_moment_leaves_nothing_process_runtime(
    tmp_path: Path, seed: int
) -> None:
    """1. `lab run --scenario rollout-restart` of two tiny-app pods (InfluxDB, HAProxy,
       k6, an nftables table when the rollout removes a pod).
    2. SIGKILL at the seed's moment.
    3. Within 30 s no process of the run is alive, no table of it is left.
    4. The next `lab run` on the same --out names the killed run and completes."""
    if "process" not in _runtimes():
        pytest.skip("LAB_CHAOS_RUNTIMES leaves out the process runtime")
    manifest = _tiny(tmp_path)
    out = tmp_path / "out"
    options = ["--vus", "2", "--warmup", "1.5", "--cooldown", "2", "--endpoint-lag", "0.2"]
    first = _lab(out, manifest, "--scenario", "rollout-restart", *options)
    after = _lab(out, manifest, *NEXT_RUN)
    _chaos(tmp_path, seed, first, after, PHASES)


@pytest.mark.parametrize("seed", _seeds("LAB_CHAOS_DOCKER_SEEDS", "2"))
def test_sigkill_at_a_random_moment_leaves_nothing_docker_runtime(
    tmp_path: Path, seed: int
) -> None:
    """As above with `--runtime docker` and calc v10: also no container, network or
    cgroup of the run is left."""
    if "docker" not in _runtimes():
        pytest.skip("LAB_CHAOS_RUNTIMES leaves out the docker runtime")
    from tests.docker_support import engine_or_skip, ensure_image

    engine = engine_or_skip()
    with contextlib.closing(engine):
        ensure_image(engine)
    out = tmp_path / "out"
    options = ["--runtime", "docker", "--replicas", "2", "--vus", "2", "--warmup", "1.5"]
    options += ["--cooldown", "2", "--endpoint-lag", "0.2"]
    manifests = REPO / "deploy" / "k8s" / "v10"
    first = _lab(out, manifests, "--scenario", "rollout-restart", *options, images=None)
    after = _lab(out, manifests, "--runtime", "docker", *NEXT_RUN, images=None)
    phases = ["", "docker", "influxdb", "haproxy", "deploy", "warm-up", "action"]
    _chaos(tmp_path, seed, first, after, phases)


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_a_second_run_on_a_held_out_is_refused(tmp_path: Path) -> None:
    """1. `lab run --scenario steady` for 20 s (so that it still holds its --out when a
       second `lab` has started, also on a loaded machine).
    2. Once its load runs, a second `lab run` on the same --out exits 2 at once, naming
       the first one's PID, and changes nothing there.
    3. The first completes with its own numbers: every request and operation its own."""
    manifest = _tiny(tmp_path)
    out = tmp_path / "out"
    options = ["--scenario", "steady", "--duration", "20", "--vus", "2", "--warmup", "0.5"]
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(
            _lab(out, manifest, *options), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        wait_until(lambda: "steady" in _phases(out), 60, interval=0.1, what="the first run's load")
        csv_before = (out / "k6.csv").stat().st_ino
        second = subprocess.run(
            _lab(out, manifest, *options), capture_output=True, text=True, cwd=REPO, timeout=90
        )
        assert second.returncode == 2, second.stderr
        assert f"held by a running lab (PID {first.pid})" in second.stderr
        assert second.stderr.startswith("lab: error: --out"), second.stderr
        assert (out / "k6.csv").stat().st_ino == csv_before  # nothing of the first touched
        assert first.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    report = _report(out)
    assert report["requests"] > 0 and report["failed_total"] == 0
    assert report["lost_operations"] == 0 and report["orphan_operations"] == 0
    assert report["unmatched_points"] == 0
