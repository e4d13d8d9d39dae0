"""Helpers for the deploy tests: running make like a user would, the manifests as data,
and finding the processes a make target started (to stop exactly those)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO

K8S = REPO / "deploy" / "k8s"
VERSIONS = [f"v{n}" for n in range(1, 11)]

# Variables a surrounding `make test` exports (the root Makefile exports CALC_URL) or a
# developer's shell may set; each test passes what it needs explicitly instead.
_LEAKY_ENV = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
    "CALC_URL",
    "CALC_PROFILE",
    "INFLUXDB_BASE_URL",
    "INFLUXDB_DB",
    "VUS",
    "DURATION",
    "REGISTRY",
    "IMAGE",
)


def make_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env.update(extra or {})
    return env


# Resolved once here: tests run make with a PATH that hides kubectl, docker and doctl.
MAKE = shutil.which("make") or "make"


def make_command(*args: str) -> list[str]:
    # --old-file: a test must never trigger the root Makefile's venv (re)install, even
    # when pyproject.toml is newer than .venv/bin/calc.
    return [MAKE, "--no-print-directory", "--old-file=.venv/bin/calc", *args]


def run_make(
    *args: str,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run a make target to completion; stdout and stderr are kept apart."""
    return subprocess.run(
        make_command(*args),
        cwd=cwd,
        env=make_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a manifest file."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def calc_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    (container,) = (c for c in containers if c["name"] == "calc")
    return dict(container)


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs. Lists of named items (containers, env, ports, volumes) are keyed
    by name, so reordering them is no change and a path names what a reader would."""
    if isinstance(value, dict):
        if not value:
            yield prefix, {}
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(i, dict) and "name" in i for i in value)
    ):
        for item in value:
            rest = {k: v for k, v in item.items() if k != "name"}
            yield from flatten(rest, f"{prefix}[{item['name']}]")
    else:
        yield prefix, value


def manifest_leaves(path: Path) -> dict[str, Any]:
    """A manifest file as {"Kind/name:path": leaf}."""
    leaves: dict[str, Any] = {}
    for doc in load_docs(path):
        head = f"{doc['kind']}/{doc['metadata']['name']}:"
        for key, leaf in flatten(doc):
            leaves[head + key] = leaf
    return leaves


def changed_paths(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k, None) != after.get(k, None)}


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses: fields start after the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    result: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        result.extend(kids)
        todo.extend(kids)
    return result


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_pids(pids: list[int], name: str) -> None:
    """SIGKILL exactly these processes if they still run `name` (they may sit outside the
    process group a test kills; the name check guards against a reused PID)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if alive(pid) and name in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                os.kill(pid, signal.SIGKILL)


def scratch_copy(root: Path) -> Path:
    """The Makefiles and manifests in a scratch dir `root`, so .calc-url is a test's own."""
    root.mkdir()
    shutil.copy(REPO / "Makefile", root)
    shutil.copytree(REPO / "mk", root / "mk")
    shutil.copytree(REPO / "deploy" / "k8s", root / "deploy" / "k8s")
    return root
