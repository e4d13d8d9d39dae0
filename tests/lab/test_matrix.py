"""`lab matrix`: the --quick manifest rewrite, option errors, and a small real matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lab.config import ConfigError
from lab.experiment import run_experiment
from lab.matrix import (
    QUICK_WRAPPER_GRACE,
    MatrixConfig,
    markdown,
    rewrite_manifests,
    run_matrix,
)
from lab.matrix_plot import draw
from tests.support import REPO

K8S = REPO / "deploy" / "k8s"


def deployment(directory: Path) -> dict[str, object]:
    for path in directory.glob("*.yml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                return dict(doc)
    raise AssertionError(f"no Deployment in {directory}")


def test_quick_rewrite_changes_only_what_the_header_names(tmp_path: Path) -> None:
    """1. Rewrite v2 (wrapper, probes) and v10 for --quick. 2. Readiness delays shrink
    (liveness stays), v2's grace period shrinks (its wrapper swallows SIGTERM), v10's
    stays; the Service and everything else are unchanged."""
    for version in ("v2", "v10"):
        original = deployment(K8S / version)
        quick = deployment(rewrite_manifests(K8S / version, tmp_path / version, quick=True))
        o_spec = original["spec"]["template"]["spec"]  # type: ignore[index]
        q_spec = quick["spec"]["template"]["spec"]  # type: ignore[index]
        readiness = q_spec["containers"][0]["readinessProbe"]
        assert (readiness["initialDelaySeconds"], readiness["periodSeconds"]) == (2, 1)
        original_readiness = o_spec["containers"][0]["readinessProbe"]
        readiness.update(
            {k: original_readiness[k] for k in ("initialDelaySeconds", "periodSeconds")}
        )
        if version == "v2":
            assert q_spec["terminationGracePeriodSeconds"] == QUICK_WRAPPER_GRACE
            q_spec.pop("terminationGracePeriodSeconds")
            o_spec.pop("terminationGracePeriodSeconds", None)
        else:
            assert q_spec["terminationGracePeriodSeconds"] == 30
        assert quick == original
    services = [
        d
        for d in yaml.safe_load_all((tmp_path / "v10" / "calc.yml").read_text())
        if d["kind"] == "Service"
    ]
    assert len(services) == 1


def test_no_prestop_rewrite_removes_only_the_hook(tmp_path: Path) -> None:
    """--no-prestop: v10's preStop is gone, nothing else changes (not quick)."""
    original = deployment(K8S / "v10")
    rewritten = deployment(rewrite_manifests(K8S / "v10", tmp_path, quick=False, no_prestop=True))
    container = rewritten["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert "lifecycle" not in container
    original["spec"]["template"]["spec"]["containers"][0].pop("lifecycle")  # type: ignore[index]
    assert rewritten == original


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"versions": ("v11",)}, "--versions: unknown v11"),
        ({"scenarios": ("rollout",)}, "--scenarios: unknown rollout"),
        ({"lbs": ("udp",)}, "--lb: unknown udp"),
        ({"versions": ()}, "--versions: name at least one"),
    ],
)
def test_bad_matrix_options_fail_before_anything_runs(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    config = MatrixConfig(out=tmp_path / "out", **changes)  # type: ignore[arg-type]

    def never(config: object) -> object:
        raise AssertionError("no experiment may start")

    with pytest.raises(ConfigError, match=message):
        run_matrix(config, never)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_small_quick_matrix_shows_v4_cutting_requests_and_v5_dropping_none(tmp_path: Path) -> None:
    """1. A quick matrix of v4 and v5, rollout-restart, tcp load balancer, 1 s lag,
    30 VUs. 2. v4 (drain off, no preStop) fails requests; v5 (preStop sleep) fails none.
    3. matrix.json, matrix.md, each experiment's timeline and the combined figure exist."""
    config = MatrixConfig(
        versions=("v4", "v5"),
        scenarios=("rollout-restart",),
        quick=True,
        vus=30,
        out=tmp_path / "matrix",
        progress=False,
    )
    cells = run_matrix(config, run_experiment)
    by_version = {c.version: c for c in cells}
    assert all(c.error is None for c in cells), [c.error for c in cells]
    assert by_version["v4"].failed_total > 0
    assert by_version["v5"].failed_total == 0
    assert by_version["v5"].requests > 1000
    data = json.loads((config.out / "matrix.json").read_text())
    assert [c["version"] for c in data["cells"]] == ["v4", "v5"]
    table = (config.out / "matrix.md").read_text()
    assert "| v5 |" in table and "0 (0.00 %)" in table
    assert table == markdown(config, cells)
    for cell in cells:
        assert (Path(cell.out) / "timeline.png").stat().st_size > 0
    draw(cells, config.versions, config.scenarios, config.out / "matrix.png")
    assert (config.out / "matrix.png").stat().st_size > 0
