"""`lab matrix`: the --quick manifest rewrite, option errors, and a small real matrix."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.config import ConfigError
from lab.experiment import run_experiment
from lab.influx import free_port
from lab.matrix import (
    MatrixConfig,
    markdown,
    rewrite_manifests,
    run_matrix,
)
from lab.matrix_plot import draw
from lab.quick import QUICK_WRAPPER_GRACE
from tests.lab.browser import assert_rendered, chromium
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.lab.test_lab_run import _alive, _kill_leftovers, _pids
from tests.support import REPO, VENV_BIN, wait_until

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


def test_the_header_names_the_warm_up_and_cool_down_that_ran(tmp_path: Path) -> None:
    """1. A quick matrix config with no phase options, one with --warmup 3 --cooldown 5,
    and a full-size one with none. 2. The header's changes and each experiment's config
    agree: 2 s each for --quick, the options where given, and nothing named (the
    manifests' 10 s) for the full-size one."""
    from lab.matrix import experiment_config

    cases = [
        (MatrixConfig(out=tmp_path, quick=True), (2.0, 2.0), "warm-up 2 s and cool-down 2 s"),
        (
            MatrixConfig(out=tmp_path, quick=True, warmup=3.0, cooldown=5.0),
            (3.0, 5.0),
            "warm-up 3 s and cool-down 5 s",
        ),
        (MatrixConfig(out=tmp_path), (10.0, 10.0), None),
    ]
    for config, phases, named in cases:
        lab = experiment_config(config, K8S / "v5", "rollout-restart", "tcp", tmp_path / "x")
        assert (lab.warmup, lab.cooldown) == phases
        said = [line for line in config.changes() if "warm-up" in line]
        assert said == ([f"{named} (10 s each)"] if named else []), said


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
        ({"nodes": 0}, "--nodes: must be between 1 and"),
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
    # The page `make demo` leaves, as a person opens it: in a real browser, from the file.
    with chromium() as browser:
        found = browser.open(config.out / "report.html")
        assert_rendered(browser, found, pictures=1)
        assert sorted(found["links"]) == sorted(f"{Path(c.out).name}/report.html" for c in cells)


def _start_small_matrix(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`lab matrix` over three versions of the tiny app (rollout-restart, --quick), its
    output in tmp_path/matrix.log."""
    manifests = tmp_path / "k8s"
    for version in ("v1", "v2", "v3"):
        (manifests / version).mkdir(parents=True)
        tiny_manifest(
            manifests / version / "tiny.yml",
            port=free_port(),
            readiness=READY_PROBE,
            pre_stop={"sleep": {"seconds": 1}},
            grace=5,
        )
    out = tmp_path / "out"
    argv = [
        str(VENV_BIN / "lab"), "matrix", "--versions", "v1,v2,v3", "--scenarios",
        "rollout-restart", "--quick", "--vus", "2", "--warmup", "1", "--cooldown", "1",
        "--endpoint-lag", "0.2", "--manifests-dir", str(manifests), "--image-map",
        str(TINY_IMAGES), "--out", str(out),
    ]  # fmt: skip
    log = (tmp_path / "matrix.log").open("wb")
    matrix = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    log.close()
    return matrix, out


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_whole_matrix(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """`lab matrix` over three versions of the tiny app (rollout-restart, --quick).
    1. Once the first experiment is written and the second one's k6 runs, send one
       SIGINT (or SIGTERM).
    2. The matrix exits 130 (143) instead of going on with the third experiment; the
       running one tore down gracefully (its pods exited on SIGTERM, none SIGKILLed).
    3. matrix.json and matrix.md hold the first experiment, marked interrupted, and no
       process any experiment started is left."""
    matrix, out = _start_small_matrix(tmp_path)
    second = out / "v2-rollout-restart-tcp"
    try:
        wait_until(
            lambda: "k6" in _pids(second).values() and (out / "matrix.json").exists(),
            60,
            what="the first experiment done and the second one's load running",
        )
        matrix.send_signal(sig)
        assert matrix.wait(40) == code
    finally:
        _force_stop(matrix, out)
    _assert_no_process_left(out)
    assert not (out / "v3-rollout-restart-tcp").exists()
    data = json.loads((out / "matrix.json").read_text())
    assert [c["version"] for c in data["cells"]] == ["v1"]
    assert data["interrupted"] == f"interrupted by {sig.name} after 1 of 3 experiments"
    table = (out / "matrix.md").read_text()
    assert table.startswith(f"**INTERRUPTED: interrupted by {sig.name} after 1 of 3")
    assert "| v1 |" in table
    kinds = [
        json.loads(line)["kind"] for line in (second / "events.jsonl").read_text().splitlines()
    ]
    assert "sigkilled" not in kinds and kinds.count("exited") >= 1
    assert f"interrupted by {sig.name}" in (tmp_path / "matrix.log").read_text()


def test_a_second_sigint_skips_the_graceful_teardown_but_leaves_no_process(
    tmp_path: Path,
) -> None:
    """`lab matrix` as above. 1. Once the second experiment's k6 runs, SIGINT; as soon as
    the matrix says its graceful teardown began, SIGINT again. 2. The teardown is forced
    (its event says so), the matrix exits 130, the first experiment is written and
    marked interrupted, and no process any experiment started is left."""
    matrix, out = _start_small_matrix(tmp_path)
    second = out / "v2-rollout-restart-tcp"
    log = tmp_path / "matrix.log"
    try:
        wait_until(
            lambda: "k6" in _pids(second).values() and (out / "matrix.json").exists(),
            60,
            what="the first experiment done and the second one's load running",
        )
        matrix.send_signal(signal.SIGINT)
        wait_until(lambda: "graceful teardown" in log.read_text(), 10, what="the graceful teardown")
        matrix.send_signal(signal.SIGINT)
        assert matrix.wait(30) == 130
    finally:
        _force_stop(matrix, out)
    _assert_no_process_left(out)
    assert not (out / "v3-rollout-restart-tcp").exists()
    data = json.loads((out / "matrix.json").read_text())
    assert [c["version"] for c in data["cells"]] == ["v1"]
    assert data["interrupted"].startswith("interrupted by SIGINT after 1 of 3")
    events = (second / "events.jsonl").read_text()
    assert "teardown-forced SIGINT: killing every process the lab started" in events


def _force_stop(matrix: subprocess.Popen[bytes], out: Path) -> None:
    """The test's own forced path: the matrix and every group its experiments logged get
    SIGKILL."""
    if matrix.poll() is None:
        matrix.kill()
        matrix.wait(10)
    for cell in out.glob("v*-rollout-restart-tcp"):
        _kill_leftovers(cell)


def _assert_no_process_left(out: Path) -> None:
    pids = [pid for cell in out.glob("v*-rollout-restart-tcp") for pid in _pids(cell)]
    assert pids
    # A killed orphan is reaped by init a moment after the lab exits.
    wait_until(lambda: not any(_alive(p) for p in pids), 5, what="every logged group gone")
