"""report.html, opened in Debian's Chromium (headless, from the file, no network): the
table and every picture rendered, for one run and for a real matrix whose every cell links
to its run's page; values from users shown as text, never run as markup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lab import accounting, html_report, report
from lab.accounting import Request
from lab.events import Event
from lab.influx import free_port
from lab.lag import Lag
from lab.plot import draw
from tests.lab.browser import assert_rendered, chromium
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.lab.test_lab_run import _kill_leftovers
from tests.support import REPO, VENV_BIN

HOSTILE = '<script>document.title="run as markup"</script><img src=x onerror="alert(1)">'


def _synthetic_run(out: Path) -> report.Report:
    """A 6 s run's report and timeline: 2 pods, 20 requests a second, a burst of refused
    and reset ones while a pod goes, one lost and one orphan operation; the manifests'
    path and a pod's name carry markup."""
    start_wall = 1_000.0
    pod = f"calc-{HOSTILE}"
    events = [
        Event(0.0, start_wall, "", "phase", "start"),
        Event(0.1, start_wall + 0.1, pod, "created"),
        Event(0.2, start_wall + 0.2, "calc-b", "created"),
        Event(0.8, start_wall + 0.8, pod, "ready"),
        Event(0.9, start_wall + 0.9, pod, "lb-added", "127.1.1.2:8000"),
        Event(1.0, start_wall + 1.0, "calc-b", "ready"),
        Event(1.1, start_wall + 1.1, "calc-b", "lb-added", "127.1.1.3:8000"),
        Event(2.0, start_wall + 2.0, "", "phase", "action rollout-restart"),
        Event(2.5, start_wall + 2.5, pod, "deleted"),
        Event(3.5, start_wall + 3.5, pod, "lb-removed"),
        Event(3.6, start_wall + 3.6, pod, "probe-failed", f"GET /ready: {HOSTILE}"),
        Event(4.0, start_wall + 4.0, pod, "gone"),
        Event(6.0, start_wall + 6.0, "", "phase", "teardown"),
    ]
    requests = []
    for i in range(120):
        t_ms = int(start_wall * 1000) + i * 50
        status, code, error = 200, "", ""
        if 2500 <= i * 50 < 3000:
            status, code, error = 0, "1212", "connection refused"
        elif 3000 <= i * 50 < 3300:
            status, code, error = 0, "1220", f"read: connection reset {HOSTILE}"
        requests.append(Request(t_ms, f"r{i}", status, code, error, "HTTP/1.1", 20.0))
    points = [f"r{i}" for i in range(120) if requests[i].status == 200 and i != 7] + ["r51"]
    accounted = accounting.account(requests, points, stopped_ms=int(start_wall * 1000) + 6000)
    the_report = report.build(
        manifests=f"deploy/{HOSTILE}",
        scenario="rollout-restart",
        lb="tcp",
        lb_retries=0,
        endpoint_lag=Lag.fixed(1.0),
        vus=2,
        replicas=2,
        accounting=accounted,
        requests=requests,
        events=events,
        duration_s=6.0,
        steady_ms=(int(start_wall * 1000), int(start_wall * 1000) + 2000),
        action_completed=True,
        action_s=2.0,
        notes=[f"a note with {HOSTILE}"],
    )
    out.mkdir(parents=True, exist_ok=True)
    draw(requests, events, start_wall, out / "timeline.png")
    return the_report


def tiny_matrix(tmp_path: Path, out: Path, versions: tuple[str, ...]) -> list[str]:
    """`lab matrix`'s argv over versions of the tiny app, two pods each (rollout-restart,
    --quick): v1 without a preStop hook (it fails requests), the others with one."""
    manifests = tmp_path / "k8s"
    for version in versions:
        (manifests / version).mkdir(parents=True)
        tiny_manifest(
            manifests / version / "tiny.yml",
            port=free_port(),
            replicas=2,
            readiness=READY_PROBE,
            pre_stop=None if version == "v1" else {"sleep": {"seconds": 1}},
            grace=5,
        )
    return [
        str(VENV_BIN / "lab"), "matrix", "--versions", ",".join(versions), "--scenarios",
        "rollout-restart", "--quick", "--vus", "4", "--warmup", "1", "--cooldown", "1",
        "--endpoint-lag", "0.2", "--manifests-dir", str(manifests), "--image-map",
        str(TINY_IMAGES), "--out", str(out),
    ]  # fmt: skip


def test_run_page_renders_its_table_and_pictures_in_chromium(tmp_path: Path) -> None:
    """1. A run's report (2 pods, refused and reset requests, a lost and an orphan
    operation; markup in the manifests' path, a pod's name and an error) written as
    report.html beside its timeline.png. 2. Chromium loads it from the file: the settings
    and results tables have their rows, the timeline PNG (a data: URI) and the failures'
    SVG are drawn and not blank, no request leaves the page. 3. The markup shows as text:
    no script ran, none is in the page."""
    out = tmp_path / "run"
    the_report = _synthetic_run(out)
    page = html_report.write_run(the_report, out)
    source = page.read_text()
    assert "<script" not in source and "onerror=" not in source.replace("onerror=&quot;", "")
    with chromium() as browser:
        found = browser.open(page)
        assert_rendered(browser, found, pictures=2)
    assert found["title"].startswith("lab run: rollout-restart") and found["scripts"] == 0
    tables = {t["cls"]: t for t in found["tables"]}
    assert tables["report"]["rows"] == len(the_report.rows())
    assert "refused" in tables["failures-table"]["text"]
    assert "lost operations\t1" in tables["operations"]["text"]
    assert "orphan operations\t1" in tables["operations"]["text"]
    (bars,) = found["svgs"]
    assert bars["bars"] == 2  # refused and reset
    assert HOSTILE in found["text"] and f"deploy/{HOSTILE}" in tables["settings"]["text"]
    assert "r7" in found["text"] and "r51" in found["text"]  # the lost and the orphan id


def test_matrix_page_links_every_cell_to_its_rendered_run_page(tmp_path: Path) -> None:
    """1. `lab matrix` over two versions of the tiny app (v1 without a preStop hook, v2
    with one; rollout-restart, --quick), as `make demo` runs it, output to a pipe.
    2. Its report.html in Chromium: the settings and the matrix table with a row per
    version, the matrix picture drawn, each cell's requests linking to its run's page.
    3. Each linked page in Chromium: its tables, timeline and pictures drawn."""
    out = tmp_path / "out"
    argv = tiny_matrix(tmp_path, out, ("v1", "v2"))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=150)
    finally:
        for cell_out in out.glob("v*-rollout-restart-tcp"):
            _kill_leftovers(cell_out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report.html" in done.stdout
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    assert [c["version"] for c in cells] == ["v1", "v2"]
    with chromium() as browser:
        found = browser.open(out / "report.html")
        assert_rendered(browser, found, pictures=1)
        (matrix,) = [t for t in found["tables"] if t["cls"] == "matrix"]
        assert matrix["rows"] == 2 + 2  # two header rows, a row per version
        assert sorted(found["links"]) == [
            "v1-rollout-restart-tcp/report.html",
            "v2-rollout-restart-tcp/report.html",
        ]
        for link in found["links"]:
            run_page = browser.open(out / link)
            cell = next(c for c in cells if link.startswith(f"{c['version']}-"))
            # The timeline, and the failures' bars when a request failed.
            assert_rendered(browser, run_page, pictures=2 if cell["failed_total"] else 1)
            tables = {t["cls"]: t for t in run_page["tables"]}
            assert f"requests\t{cell['requests']}" in tables["report"]["text"]
