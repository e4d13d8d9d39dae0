"""`lab run` loads any request, not only calc's `POST /sum`: `--request`, `--header`,
`--body`, `--body-file`, `--expect-status`; the report names the script and the request,
and says why operations are not accounted. Real `lab run` processes, real k6, a service
that is not calc (tests/lab/apps/healthonly.py: /health, /ready and `POST /echo` only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli
from lab.influx import free_port
from tests.lab.labkit import HERE
from tests.lab.test_lab_run import _run

APPS = HERE / "apps"


def health_only(tmp_path: Path) -> tuple[Path, Path]:
    """A Deployment of healthonly.py (its manifest's `command` runs it) behind a
    LoadBalancer Service, and an image map of one line: the service's virtualenv (this
    interpreter's) and working directory."""
    port = free_port()
    container: dict[str, Any] = {
        "name": "api",
        "image": "ghcr.io/team/api:1.2",
        "command": ["python", "healthonly.py", "--port", str(port)],
        "env": [{"name": "HEALTHONLY_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [container]}},
        },
    }  # fmt: skip
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }  # fmt: skip
    manifest = tmp_path / "api.yml"
    manifest.write_text(yaml.safe_dump_all([deployment, service], sort_keys=False))
    images = tmp_path / "images.yml"
    venv = Path(sys.executable).parent.parent
    images.write_text(f"images:\n  api: {{venv: {venv}, workdir: {APPS}}}\n")
    return manifest, images


STEADY = ("--scenario", "steady", "--duration", "2", "--vus", "2", "--warmup", "1",
          "--cooldown", "0", "--endpoint-lag", "0")  # fmt: skip


def _pod_log(out: Path) -> str:
    return "".join(p.read_text() for p in (out / "pods").glob("api-*.log"))


def test_get_health_on_a_service_without_sum_fails_nothing(tmp_path: Path) -> None:
    """1. `lab run --request 'GET /health' --header 'X-Team: blue'` on a service that
       answers 404 to calc's POST /sum, with its own one-line image map entry.
    2. Nothing failed; the report (JSON and table) names the lab's script and the request
       with its header; operations are "not measured: the request is not calc's /sum".
    3. The service got GET /health from k6 with the header."""
    manifest, images = health_only(tmp_path)
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--image-map", str(images), "--request", "GET /health",
        "--header", "X-Team: blue", *STEADY,
    )  # fmt: skip
    assert report["failed"] == {} and report["ok"] == report["requests"] > 20, report["failed"]
    assert report["k6_script"].endswith("deploy/k6/load-test.js (the lab's)")
    assert report["request"] == "GET /health, X-Team: blue"
    assert report["lost_operations"] is None and report["orphan_operations"] is None
    assert report["operations_unmeasured"] == "not measured: the request is not calc's /sum"
    log = _pod_log(out)
    assert "request GET /health x-team=blue body='' Grafana k6/" in log, log[-2000:]
    assert "/sum" not in log


def test_wrong_expected_status_fails_every_request_and_says_which(tmp_path: Path) -> None:
    """1. `--request 'GET /health' --expect-status 201` (the service answers 200).
    2. Every request failed as http_200, the report says 201 was expected (JSON, the
       failure row, the ok row and k6's check)."""
    manifest, images = health_only(tmp_path)
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--image-map", str(images), "--request", "GET /health",
        "--expect-status", "201", *STEADY,
    )  # fmt: skip
    assert report["ok"] == 0 and report["failed"] == {"http_200": report["requests"]}
    assert report["requests"] > 20 and report["expect_status"] == 201
    assert report["failed_checks"] == {"status is 201": report["requests"]}
    assert report["error_examples"] == {"http_200": "HTTP 200"}


def test_body_from_a_file_with_its_expected_status(tmp_path: Path) -> None:
    """1. `--request 'POST /echo' --body-file FILE --expect-status 201` (the service
       answers 201 with the body's length).
    2. Nothing failed; the service got the file's bytes; the report names the file."""
    manifest, images = health_only(tmp_path)
    body = tmp_path / "body.json"
    body.write_text('{"team": "blue"}')
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--image-map", str(images), "--request", "POST /echo",
        "--body-file", str(body), "--expect-status", "201", *STEADY,
    )  # fmt: skip
    assert report["failed"] == {} and report["ok"] == report["requests"] > 20
    assert report["request"] == f"POST /echo, body 16 bytes from {body}"
    assert 'request POST /echo x-team=- body=\'{"team": "blue"}\' Grafana k6/' in _pod_log(out)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--request", "GET"], "--request: expected 'METHOD /PATH'"),
        (["--request", "/health"], "--request: expected 'METHOD /PATH'"),
        (["--request", "GET health"], "--request: expected 'METHOD /PATH'"),
        (["--request", "GET /health", "--header", "X-Team blue"], "--header: expected 'Name: value'"),
        (["--request", "GET /x", "--header", "x-request-id: 1"], "x-request-id is the script's own"),
        (["--request", "POST /echo", "--body-file", "missing.json"], "--body-file: missing.json does not exist"),
        (["--request", "POST /echo", "--body", "a", "--body-file", "b"], "--body and --body-file: give one"),
        (["--header", "X-Team: blue"], "--header: add to --request 'METHOD /PATH', which is missing"),
        (["--body", "{}"], "--body: add to --request"),
        (["--expect-status", "42"], "--expect-status: must be an HTTP status (100-599), got 42"),
        (["--request", "GET /health", "--k6-script", "tests/lab/apps/tinyapp.py"], "--request: the lab's k6 script sends it"),
    ],
)  # fmt: skip
def test_bad_request_options_are_one_line_and_start_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], named: str
) -> None:
    """1. `lab run` with a bad request option. 2. Exit 2, one `lab: error:` line naming
    the option, and no output directory: nothing started."""
    manifest, images = health_only(tmp_path)
    out = tmp_path / "out"
    argv = ["run", "--manifests", str(manifest), "--image-map", str(images), "--out", str(out)]
    assert cli.main([*argv, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: error: ") and err.count("\n") == 1, err
    assert named in err, err
    assert not out.exists()
