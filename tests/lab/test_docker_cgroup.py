"""The run's own parent cgroup (lab.run_cgroup): when it is used, its weight, its removal;
the live engine's side is in test_docker_faults (the containers' cgroup and weight)."""

from __future__ import annotations

from pathlib import Path

from lab.run_cgroup import RunCgroup, unavailable
from tests.lab.test_docker_faults import _as_nobody


def _unavailable_here() -> list[str]:
    return [str(unavailable("cgroupfs"))]


def test_parent_falls_back_to_the_engines_default_where_it_cannot_be_made(
    tmp_path: Path,
) -> None:
    """Scenario: 1. the engine's systemd cgroup driver (takes slices, not paths); 2. a
    cgroup root with no cpu controller; 3. an unprivileged user (nobody) on this machine's
    /sys/fs/cgroup; each is refused with why, so the run keeps the engine's default parent
    and says so; 4. root with cgroupfs here is accepted."""
    assert unavailable("systemd") == "the engine's cgroup driver is 'systemd', not cgroupfs"
    assert unavailable("cgroupfs", tmp_path) == f"no cpu controller under {tmp_path}"
    assert _as_nobody(_unavailable_here) == ["/sys/fs/cgroup is not writable (needs root)"]
    assert unavailable("cgroupfs") is None


def test_parent_weight_follows_the_pods_and_its_directories_go(tmp_path: Path) -> None:
    """Scenario (a cgroup v2 layout in a directory of the test's own): 1. the parent is
    made before any container, at one process's weight; 2. 3 pods weigh 3 processes, 0
    pods still one, 200 pods the v2 maximum; 3. the engine made the parent on another
    controller too; remove() takes every directory of it, and a second call is harmless."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    cgroup = RunCgroup("lab-test", tmp_path)
    assert cgroup.parent == "/lab-test" and not cgroup.v1
    cgroup.weigh(3)  # before make(): nothing to weigh, nothing written
    assert not cgroup.cpu_dir.exists()
    cgroup.make()
    weight = cgroup.cpu_dir / "cpu.weight"
    assert weight.read_text() == "100"
    for pods, expected in ((3, "300"), (0, "100"), (200, "10000")):
        cgroup.weigh(pods)
        assert weight.read_text() == expected
    weight.unlink()  # cgroupfs has no files to remove, a plain directory does
    (tmp_path / "memory" / "lab-test").mkdir(parents=True)
    assert cgroup.remove() == []
    assert cgroup.directories() == []
    assert cgroup.remove() == []
