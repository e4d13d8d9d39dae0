"""`lab run --quick` on a team's manifest: probe delays and periods shortened as `lab
matrix --quick` does (lab.quick, one copy of the rules), warm-up and cool-down 2 s, and
the report lists each change, from and to. A real `lab run` against the tiny app."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from lab.influx import free_port
from lab.quick import phase_changes, phases, rewrite_document
from tests.lab.labkit import READY_PROBE, tiny_manifest
from tests.lab.test_lab_run import _run

STARTUP = {
    "httpGet": {"path": "/health", "port": "http"},
    "initialDelaySeconds": 60,
    "periodSeconds": 10,
}


def _with_startup_probe(path: Path) -> Path:
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["startupProbe"] = dict(STARTUP)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_quick_run_of_a_manifest_with_a_60_s_startup_delay(tmp_path: Path) -> None:
    """1. The tiny app with a startup probe (initialDelaySeconds 60, periodSeconds 10,
       failureThreshold 3 by default) and a readiness probe every second; without --quick
       every pod waits 60 s before it may be ready.
    2. `lab run --quick`, rollout-restart of one replica.
    3. It completes in well under a minute; the report (JSON and table) lists each change
       from and to: the startup probe's delay, period and failureThreshold (which keeps
       the 90 s the probe allows to start), and the warm-up and cool-down; the copy that
       ran is in OUT/quick-manifests and the manifest itself is unchanged."""
    manifest = _with_startup_probe(
        tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE)
    )
    original = manifest.read_text()
    out = tmp_path / "out"
    started = time.monotonic()
    report = _run(out, manifest, "--quick", "--vus", "2", "--endpoint-lag", "0", timeout=90)
    took = time.monotonic() - started
    assert took < 50, took  # without --quick the startup delay alone is 60 s
    assert report["action_completed"]
    assert report["quick_changes"] == [
        "warm-up 10 -> 2 s (--warmup)",
        "cool-down 10 -> 2 s (--cooldown)",
        "m.yml Deployment tiny containers[0].startupProbe.initialDelaySeconds 60 -> 2",
        "m.yml Deployment tiny containers[0].startupProbe.periodSeconds 10 -> 1",
        "m.yml Deployment tiny containers[0].startupProbe.failureThreshold 3 -> 88 "
        "(still 90 s for the container to start)",
    ]
    assert manifest.read_text() == original
    copy = yaml.safe_load_all((out / "quick-manifests" / "m.yml").read_text())
    startup = next(copy)["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert (startup["initialDelaySeconds"], startup["periodSeconds"]) == (2, 1)
    # The pod was ready long before the manifest's 60 s.
    ready = [e["t"] for e in report["events"] if e["kind"] == "ready"]
    assert ready and max(ready) < 20, ready


def test_liveness_stays_a_default_period_counts_and_a_given_option_is_no_change() -> None:
    """1. --quick's rules on a Deployment whose liveness probe waits 60 s and whose
       readiness probe has Kubernetes' default period (10 s, the field absent).
    2. The liveness probe is left as it is (a probe every second restarts a service a
       loaded machine answers slowly); the absent readiness period becomes 1 and the
       change says it was 10.
    3. With --warmup given, only the cool-down is a change of --quick's."""
    container = {
        "name": "api",
        "livenessProbe": {"httpGet": {"path": "/health", "port": 80}, "initialDelaySeconds": 60},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 80}},
    }
    document = {
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }
    rewritten, changes = rewrite_document(document, quick=True, where="k8s/api.yml")
    probes = rewritten["spec"]["template"]["spec"]["containers"][0]
    assert probes["livenessProbe"] == container["livenessProbe"]
    assert probes["readinessProbe"]["periodSeconds"] == 1
    assert [str(c) for c in changes] == [
        "k8s/api.yml Deployment api containers[0].readinessProbe.periodSeconds 10 -> 1"
    ]
    assert phases(5.0, None, quick=True) == (5.0, 2.0)
    assert phase_changes(5.0, None, quick=True) == ["cool-down 10 -> 2 s (--cooldown)"]
