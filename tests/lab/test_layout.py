"""The seams between the lab's modules, read from their source: what a module may know
of another."""

from __future__ import annotations

import ast
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "src" / "lab"

# What only one runtime has: the experiment asks the Runtime interface instead
# (gateway, phases(), sweep_record(), drop_ip()).
RUNTIME_PRIVATE = {"network", "network_name", "subnet", "cgroup", "cgroup_note", "dead", "run_id"}
# The endpoints controller's own state.
ENDPOINTS_PRIVATE = {"in_lb", "to_delete", "known", "pending", "published", "seen"}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, also under TYPE_CHECKING."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def attributes_read(path: Path, of: str) -> set[str]:
    """The attributes read of any expression whose source ends with `of` (e.g.
    `runtime`: `self.runtime.x`, `runtime.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value).split(".")[-1] == of:
            found.add(node.attr)
    return found


def test_the_runtimes_do_not_import_the_kubelet() -> None:
    """lab.pods (the kubelet) uses a runtime; a runtime knows a pod only as
    lab.runtime.Pod: no runtime module imports lab.pods, so there is no cycle."""
    for name in ("runtime.py", "docker_runtime.py", "pod_netns.py"):
        assert "lab.pods" not in imported(LAB / name), name


def test_the_experiment_reads_no_runtime_private_attribute() -> None:
    """The experiment logs, records and places InfluxDB through the Runtime interface,
    not through one runtime's own attributes."""
    assert attributes_read(LAB / "experiment.py", "runtime") & RUNTIME_PRIVATE == set()


def test_faults_do_not_edit_the_endpoints_controllers_state() -> None:
    """lb-restart asks the endpoints controller (proxy_restarting) instead of reading
    and clearing its sets."""
    assert attributes_read(LAB / "faults.py", "endpoints") & ENDPOINTS_PRIVATE == set()
