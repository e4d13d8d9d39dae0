"""`lab matrix`: every version x scenario x load-balancer mode, one experiment each, and
one table of what each dropped.

The matrix runs the project's own manifests (`deploy/k8s/vN/`). `--quick` runs copies
rewritten in a few named ways (fewer replicas, and lab.quick's shorter probe delays, the
same as `lab run --quick`) so the whole matrix fits in minutes; the table's header lists
every change, and the rewritten manifests are kept in the output directory to read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab import html_report
from lab import quick as quick_mode
from lab.config import CLUSTERS, LB_MODES, MAX_NODES, REPO, ConfigError, LabConfig
from lab.lag import DEFAULT_LAG, Lag
from lab.progress import MatrixProgress, status_line
from lab.quick import QUICK_PROBE, QUICK_WRAPPER_GRACE, WRAPPER
from lab.report import Report
from lab.stopping import Interrupted, Signals

VERSIONS = tuple(f"v{i}" for i in range(1, 11))
SCENARIOS = ("rollout-restart", "scale-up", "scale-down")


@dataclass(frozen=True)
class Sizes:
    replicas: int  # for rollout-restart
    scale_low: int
    scale_high: int


FULL = Sizes(replicas=13, scale_low=5, scale_high=13)
QUICK = Sizes(replicas=5, scale_low=2, scale_high=5)


@dataclass(frozen=True)
class MatrixConfig:
    versions: tuple[str, ...] = VERSIONS
    scenarios: tuple[str, ...] = SCENARIOS
    lbs: tuple[str, ...] = ("tcp",)
    quick: bool = False
    no_prestop: bool = False  # a cluster without a preStop sleep: hooks removed
    vus: int = 50
    endpoint_lag: Lag = DEFAULT_LAG
    warmup: float | None = None  # None: 10 s, or QUICK_PHASE with --quick
    cooldown: float | None = None  # None: 10 s, or QUICK_PHASE with --quick
    out: Path = Path("out/matrix")
    manifests_dir: Path = REPO / "deploy" / "k8s"
    image_map: Path | None = None  # None: deploy/lab-images.yml
    progress: bool = True
    # The L7 modes share idle keep-alive connections to the pods between all client
    # requests, as cloud HTTP load balancers pool them: a pod that closes a connection
    # HAProxy is about to reuse then shows up as a 502.
    http_reuse: str = "always"
    runtime: str = "process"  # the kubelet's container runtime (lab.runtime)
    nodes: int = 1  # `lab run --nodes`: each node its own proxy and lag draws
    cluster: str = "lab"  # `lab run --cluster`: the lab's controllers, or a real control plane

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    def validate(self) -> None:
        for name, values, allowed in (
            ("--versions", self.versions, VERSIONS),
            ("--scenarios", self.scenarios, SCENARIOS),
            ("--lb", self.lbs, LB_MODES),
        ):
            if not values:
                raise ConfigError(f"{name}: name at least one")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ConfigError(
                    f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}"
                )
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes: must be between 1 and {MAX_NODES}, got {self.nodes}")
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"--cluster: must be one of {', '.join(CLUSTERS)}")
        for version in self.versions:
            if not (self.manifests_dir / version).is_dir():
                raise ConfigError(f"--versions: no manifests at {self.manifests_dir / version}")

    def changes(self) -> list[str]:
        """What differs from the manifests as written, in words (the table's header)."""
        s = self.sizes
        lines = [
            f"rollout-restart with {s.replicas} replicas; scale-up {s.scale_low} -> "
            f"{s.scale_high}; scale-down {s.scale_high} -> {s.scale_low}",
        ]
        if self.runtime != "process":
            lines.append(f"--runtime {self.runtime}: pods as containers of the built image")
        if self.no_prestop:
            lines.append("--no-prestop: every preStop hook removed from the manifests")
        if self.nodes > 1:
            lines.append(
                f"--nodes {self.nodes}: pods spread over {self.nodes} nodes, each with its "
                "own proxy and lag draws, behind one L4 balancer"
            )
        if any(lb != "tcp" for lb in self.lbs):
            lines.append(
                f"L7 modes (http, https, h2): HAProxy `http-reuse {self.http_reuse}`, "
                "keep-alive connections to the pods shared between client requests"
            )
        if self.quick:
            lines.append(
                f"--quick: readiness probes' initialDelaySeconds 20 -> {QUICK_PROBE['initialDelaySeconds']} "
                f"and periodSeconds 5 -> {QUICK_PROBE['periodSeconds']}; "
                f"terminationGracePeriodSeconds 30 -> {QUICK_WRAPPER_GRACE} where the container "
                f"runs the shell wrapper {WRAPPER} (v1, v2: pods still die by SIGKILL); "
                f"replicas as above (13 in the manifests)"
            )
        warmup, cooldown = self.phases()
        if (warmup, cooldown) != (10.0, 10.0):
            lines.append(f"warm-up {warmup:g} s and cool-down {cooldown:g} s (10 s each)")
        return lines

    def phases(self) -> tuple[float, float]:
        """Seconds of load before and after each action: the options, or 10 s each
        (QUICK_PHASE with --quick)."""
        return quick_mode.phases(self.warmup, self.cooldown, self.quick)


@dataclass
class Cell:
    """One experiment's outcome, or why it has none."""

    version: str
    scenario: str
    lb: str
    requests: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failed_total: int = 0
    lost_operations: int | None = None
    orphan_operations: int | None = None
    steady_ratio: float | None = None
    duration_s: float = 0.0
    error: str | None = None
    out: str = ""

    @classmethod
    def from_report(cls, version: str, scenario: str, lb: str, report: Report, out: Path) -> Cell:
        return cls(
            version=version,
            scenario=scenario,
            lb=lb,
            requests=report.requests,
            ok=report.ok,
            failed=dict(report.failed),
            failed_total=report.failed_total,
            lost_operations=report.lost_operations,
            orphan_operations=report.orphan_operations,
            steady_ratio=report.steady_ratio,
            duration_s=report.duration_s,
            out=str(out),
        )

    def failed_text(self) -> str:
        if self.error:
            return "error"
        if not self.requests:
            return "-"
        pct = 100 * self.failed_total / self.requests
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items()) if n)
        return f"{self.failed_total} ({pct:.2f} %)" + (f": {kinds}" if kinds else "")


def experiment_config(
    config: MatrixConfig, manifests: Path, scenario: str, lb: str, out: Path
) -> LabConfig:
    sizes = config.sizes
    if scenario == "rollout-restart":
        lab_scenario, replicas, to = "rollout-restart", sizes.replicas, None
    elif scenario == "scale-up":
        lab_scenario, replicas, to = "scale", sizes.scale_low, sizes.scale_high
    else:
        lab_scenario, replicas, to = "scale", sizes.scale_high, sizes.scale_low
    warmup, cooldown = config.phases()
    return LabConfig(
        manifests=manifests,
        scenario=lab_scenario,
        to=to,
        replicas=replicas,
        vus=config.vus,
        lb=lb,
        endpoint_lag=config.endpoint_lag,
        warmup=warmup,
        cooldown=cooldown,
        out=out,
        progress=config.progress,
        http_reuse=config.http_reuse,
        image_map=config.image_map,
        runtime=config.runtime,
        nodes=config.nodes,
        cluster=config.cluster,
    )


def rewrite_manifests(source: Path, target: Path, quick: bool, no_prestop: bool = False) -> Path:
    """Copy a version's manifests with the --quick and --no-prestop changes (lab.quick);
    returns the copy's dir."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".yml", ".yaml"))
    quick_mode.rewrite_files(files, target, quick, no_prestop)
    return target


Runner = Callable[[LabConfig], Report]


def run_matrix(config: MatrixConfig, runner: Runner, signals: Signals | None = None) -> list[Cell]:
    """Run every experiment; an experiment that fails is recorded and the rest go on.
    A SIGINT or SIGTERM stops them all: the experiments done are written, marked
    interrupted, and `Interrupted` propagates.

    `runner` is `lab.experiment.run_experiment`, passed in so this module does not start
    processes itself; `signals` is what the caller's handlers record between runs."""
    config.validate()
    config.out.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    plan = [(v, s, lb) for lb in config.lbs for v in config.versions for s in config.scenarios]
    # On a terminal: which experiment of how many, elapsed, and an estimate of the rest.
    progress = MatrixProgress(len(plan), status_line() if config.progress else None)
    try:
        for index, (version, scenario, lb) in enumerate(plan, 1):
            if signals is not None and signals.first is not None:
                _interrupted(config, cells, Interrupted(signals.first), len(plan))
            manifests = config.manifests_dir / version
            if config.quick or config.no_prestop:
                manifests = rewrite_manifests(
                    manifests, config.out / "manifests" / version, config.quick, config.no_prestop
                )
            out = config.out / f"{version}-{scenario}-{lb}"
            progress.begin(index, f"{version} {scenario} {lb}")
            lab_config = experiment_config(config, manifests, scenario, lb, out)
            try:
                report = runner(lab_config)
            except ConfigError:
                raise
            except Interrupted as exc:
                _interrupted(config, cells, exc, len(plan))
            except Exception as exc:  # recorded in the table; the matrix goes on
                cells.append(Cell(version, scenario, lb, error=f"{type(exc).__name__}: {exc}"))
            else:
                cells.append(Cell.from_report(version, scenario, lb, report, out))
            progress.end()
            write_outputs(config, cells)
    finally:
        progress.close()
    if signals is not None and signals.first is not None:
        _interrupted(config, cells, Interrupted(signals.first), len(plan))
    return cells


def _interrupted(config: MatrixConfig, cells: list[Cell], exc: Interrupted, planned: int) -> None:
    """Write what is done, marked, and stop the matrix."""
    write_outputs(config, cells, interrupted=_interruption(exc, len(cells), planned))
    raise exc


def _interruption(exc: Interrupted, done: int, planned: int) -> str:
    return f"interrupted by {exc.signal_name} after {done} of {planned} experiments"


def write_outputs(config: MatrixConfig, cells: list[Cell], interrupted: str | None = None) -> None:
    data = {
        "changes": config.changes(),
        "vus": config.vus,
        "endpoint_lag": config.endpoint_lag.to_json(),
        "interrupted": interrupted,
        "cells": [asdict(c) for c in cells],
    }
    (config.out / "matrix.json").write_text(json.dumps(data, indent=2) + "\n")
    (config.out / "matrix.md").write_text(markdown(config, cells, interrupted))
    html_report.write_matrix(config, cells, interrupted)


def markdown(config: MatrixConfig, cells: list[Cell], interrupted: str | None = None) -> str:
    lines = [
        f"k6 {config.vus} VUs, new connection per request; endpoint lag "
        f"{config.endpoint_lag.describe()}.",
        *(f"- {c}" for c in config.changes()),
        "",
    ]
    if interrupted:
        lines[:0] = [f"**INTERRUPTED: {interrupted}; the table shows those done.**", ""]
    for lb in dict.fromkeys(c.lb for c in cells):
        lines.append(f"### load balancer: {lb}")
        lines.append("")
        header = ["version"]
        for scenario in config.scenarios:
            header += [f"{scenario}: requests", "failed", "lost / orphan ops"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for version in config.versions:
            row = [version]
            for scenario in config.scenarios:
                cell = _find(cells, version, scenario, lb)
                if cell is None:
                    row += ["", "", ""]
                else:
                    row += [str(cell.requests), cell.failed_text(), _ops(cell)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    errors = [c for c in cells if c.error]
    if errors:
        lines.append("Errors:")
        lines += [f"- {c.version} {c.scenario} {c.lb}: {c.error}" for c in errors]
    return "\n".join(lines) + "\n"


def _find(cells: list[Cell], version: str, scenario: str, lb: str) -> Cell | None:
    for cell in cells:
        if (cell.version, cell.scenario, cell.lb) == (version, scenario, lb):
            return cell
    return None


def _ops(cell: Cell) -> str:
    if cell.error:
        return "-"
    if cell.lost_operations is None:
        return "n/a"
    return f"{cell.lost_operations} / {cell.orphan_operations}"
