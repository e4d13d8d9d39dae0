"""`--quick`, for `lab run` and `lab matrix` alike: shorter probe delays and periods and a
shorter warm-up and cool-down, each change named (field, from, to) so a report can say
exactly what ran.

The manifests are rewritten as copies (the originals stay as they are):
- readiness and startup probes: initialDelaySeconds at most 2, periodSeconds at most 1
  (Kubernetes' default period, 10, counts when the field is absent); a startup probe's
  failureThreshold grows so that it still allows a container as long to start as before
  (initialDelaySeconds + periodSeconds x failureThreshold), since a slow start is the
  service's, not the probe's;
- liveness probes stay: probed every second, a service a loaded 2-core machine answers
  slowly is restarted, which no rollout is about;
- terminationGracePeriodSeconds at most 10 where the container runs the project's shell
  wrapper /app/start.sh (calc v1, v2: it swallows SIGTERM, so pods die by SIGKILL either
  way, a third as late).
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lab.config import LabConfig
from lab.manifest import read_yaml

QUICK_PROBE = {"initialDelaySeconds": 2, "periodSeconds": 1}
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "failureThreshold": 3}
SHORTENED_PROBES = ("readinessProbe", "startupProbe")
DEFAULT_PHASE = 10.0  # `lab run`'s and `lab matrix`'s warm-up and cool-down, seconds
QUICK_PHASE = 2.0  # the same with --quick
QUICK_WRAPPER_GRACE = 10
WRAPPER = "/app/start.sh"
COPY_DIR = "quick-manifests"  # in --out: the manifests that ran
UPDATE_COPY_DIR = "quick-update-to"


@dataclass(frozen=True)
class Change:
    """One field --quick changed."""

    where: str  # the file and the object, e.g. "k8s/app.yml Deployment api"
    field: str  # e.g. "containers[0].startupProbe.initialDelaySeconds"
    before: object
    after: object
    why: str = ""

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"{self.where} {self.field} {self.before} -> {self.after}{why}"


def phases(warmup: float | None, cooldown: float | None, quick: bool) -> tuple[float, float]:
    """Seconds of load before and after the action: the options where given, else 10 s
    each (QUICK_PHASE with --quick)."""
    default = QUICK_PHASE if quick else DEFAULT_PHASE
    return (
        default if warmup is None else warmup,
        default if cooldown is None else cooldown,
    )


def phase_changes(warmup: float | None, cooldown: float | None, quick: bool) -> list[str]:
    """What --quick changed of the warm-up and cool-down (nothing that an option set)."""
    if not quick:
        return []
    return [
        f"{name} {DEFAULT_PHASE:g} -> {QUICK_PHASE:g} s ({option})"
        for name, option, given in (
            ("warm-up", "--warmup", warmup),
            ("cool-down", "--cooldown", cooldown),
        )
        if given is None
    ]


def rewrite_document(
    document: dict[str, Any], quick: bool, no_prestop: bool = False, where: str = ""
) -> tuple[dict[str, Any], list[Change]]:
    """A copy of one manifest document with the --quick (and --no-prestop) changes, and
    the changes; a document that is no Deployment comes back as it is."""
    document = copy.deepcopy(document)
    if document.get("kind") != "Deployment":
        return document, []
    name = (document.get("metadata") or {}).get("name", "?")
    where = f"{where} Deployment {name}".strip()
    pod_spec = document["spec"]["template"]["spec"]
    containers = pod_spec.get("containers", [])
    changes: list[Change] = []
    if no_prestop:
        for index, container in enumerate(containers):
            lifecycle = container.get("lifecycle") or {}
            if lifecycle.pop("preStop", None) is not None:
                changes.append(
                    Change(where, f"containers[{index}].lifecycle.preStop", "set", "removed")
                )
            if not lifecycle:
                container.pop("lifecycle", None)
    if not quick:
        return document, changes
    if any(WRAPPER in (c.get("command") or []) for c in containers):
        grace = pod_spec.get("terminationGracePeriodSeconds", 30)
        if grace > QUICK_WRAPPER_GRACE:
            pod_spec["terminationGracePeriodSeconds"] = QUICK_WRAPPER_GRACE
            changes.append(
                Change(where, "terminationGracePeriodSeconds", grace, QUICK_WRAPPER_GRACE, WRAPPER)
            )
    for index, container in enumerate(containers):
        for key in SHORTENED_PROBES:
            probe = container.get(key)
            if isinstance(probe, dict):
                changes += _shorten(probe, where, f"containers[{index}].{key}")
    return document, changes


def _shorten(probe: dict[str, Any], where: str, at: str) -> list[Change]:
    before = {k: probe.get(k, default) for k, default in PROBE_DEFAULTS.items()}
    changes = []
    for field_name, value in QUICK_PROBE.items():
        if before[field_name] > value:
            probe[field_name] = value
            changes.append(Change(where, f"{at}.{field_name}", before[field_name], value))
    if at.endswith("startupProbe") and changes:
        allowed = (
            before["initialDelaySeconds"] + before["periodSeconds"] * before["failureThreshold"]
        )
        after = {k: probe.get(k, default) for k, default in PROBE_DEFAULTS.items()}
        needed = math.ceil((allowed - after["initialDelaySeconds"]) / after["periodSeconds"])
        if needed > before["failureThreshold"]:
            probe["failureThreshold"] = needed
            changes.append(
                Change(
                    where,
                    f"{at}.failureThreshold",
                    before["failureThreshold"],
                    needed,
                    f"still {allowed:g} s for the container to start",
                )
            )
    return changes


def rewrite_files(
    files: list[Path], target: Path, quick: bool, no_prestop: bool = False
) -> list[Change]:
    """Copy manifest files into `target` (same names) with the changes; returns them."""
    target.mkdir(parents=True, exist_ok=True)
    changes: list[Change] = []
    for path in files:
        rewritten = []
        for document in read_yaml(path):
            if document is None:
                continue
            if isinstance(document, dict):
                document, changed = rewrite_document(document, quick, no_prestop, path.name)
                changes += changed
            rewritten.append(document)
        (target / path.name).write_text(yaml.safe_dump_all(rewritten, sort_keys=False))
    return changes


def manifest_files(path: Path) -> list[Path]:
    """The files `--manifests` names, as the lab reads them (lab.manifest): a file, or a
    directory's .yml and .yaml files."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml"))
    return [path]


@dataclass(frozen=True)
class QuickCopy:
    runs: LabConfig  # the config to prepare: the manifests are the shortened copies
    reported: LabConfig  # the user's config, with every change in quick_changes


def copy_manifests(config: LabConfig) -> QuickCopy:
    """`lab run --quick`: --manifests (and --update-to) rewritten into OUT/quick-manifests
    (and OUT/quick-update-to); call it once the run holds --out."""
    changes = list(config.quick_changes)
    copies: dict[str, Path] = {}
    for option, source, directory in (
        ("manifests", config.manifests, COPY_DIR),
        ("update_to", config.update_to, UPDATE_COPY_DIR),
    ):
        if source is None:
            continue
        target = config.out / directory
        if target.exists():
            shutil.rmtree(target)  # an earlier run's copy
        changes += map(str, rewrite_files(manifest_files(source), target, quick=True))
        copies[option] = target if source.is_dir() else target / source.name
    if len(changes) == len(config.quick_changes):
        changes.append("nothing in the manifests (no readiness or startup probe to shorten)")
    return QuickCopy(
        runs=replace(
            config,
            manifests=copies.get("manifests", config.manifests),
            update_to=copies.get("update_to", config.update_to),
        ),
        reported=replace(config, quick_changes=tuple(changes)),
    )
