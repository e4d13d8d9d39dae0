"""The lab on a team's own manifest directory, as it is: several Deployments, a ConfigMap,
Services; every failure explained; unmapped commands named before anything starts."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli
from lab.config import LabConfig
from lab.experiment import _service_urls, prepare
from lab.images import ImageMap, resolve
from lab.influx import free_port
from lab.manifest import ManifestError
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.lab.test_lab_run import _assert_all_gone, _kill_leftovers, _lab, _run
from tests.support import REPO, VENV_BIN

K8S = REPO / "deploy" / "k8s"


def _backend(directory: Path, port: int) -> None:
    """A second Deployment `backend` (the tiny app again) behind a ClusterIP Service
    `backend` on port 9000."""
    tiny_manifest(directory / "backend.yml", port=port, readiness=READY_PROBE)
    docs = list(yaml.safe_load_all((directory / "backend.yml").read_text()))
    docs[0]["metadata"]["name"] = "backend"
    docs[0]["spec"]["selector"]["matchLabels"] = {"app": "backend"}
    docs[0]["spec"]["template"]["metadata"]["labels"] = {"app": "backend"}
    docs[1]["metadata"]["name"] = "backend"
    docs[1]["spec"].update(type="ClusterIP", selector={"app": "backend"})
    docs[1]["spec"]["ports"] = [{"port": 9000, "targetPort": "http"}]
    (directory / "backend.yml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_directory_with_two_deployments_a_configmap_and_services(tmp_path: Path) -> None:
    """A directory: the app (2 replicas, LoadBalancer Service) whose every sum is also
    POSTed to `$(BACKEND_URL)`, a ConfigMap holding BACKEND_URL=http://backend:9000/x,
    the `backend` Deployment with its ClusterIP Service, and the project's influxdb.yml.
    1. `lab run` the directory, rollout-restart, 5 VUs.
    2. The backend ran as one pod, got the app's writes (through the Service name, which
       pointed at its pod), and never joined the load balancer; InfluxDB was replaced by
       the lab's own. The report's notes say both; nothing failed; every process gone."""
    directory = tmp_path / "k8s"
    directory.mkdir()
    app = tiny_manifest(
        directory / "app.yml",
        port=free_port(),
        replicas=2,
        args=["--influx", "$(BACKEND_URL)"],
        readiness=READY_PROBE,
        pre_stop={"sleep": {"seconds": 1}},
        grace=5,
    )
    docs = list(yaml.safe_load_all(app.read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"configMapRef": {"name": "app-config"}}
    ]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app-config"},
        "data": {"BACKEND_URL": "http://backend:9000/x"},
    }
    app.write_text(yaml.safe_dump_all([*docs, config_map], sort_keys=False))
    _backend(directory, free_port())
    (directory / "influxdb.yml").write_text((K8S / "influxdb.yml").read_text())
    out = tmp_path / "out"
    report = _run(
        out, directory, "--scenario", "rollout-restart", "--vus", "5", "--warmup", "2",
        "--cooldown", "1", "--endpoint-lag", "0.2",
    )  # fmt: skip
    assert report["failed"] == {} and report["ok"] == report["requests"] > 50
    notes = "\n".join(report["notes"])
    assert "Deployment backend" in notes and "as one pod, without load" in notes
    assert "Deployment influxdb" in notes and "replaced by the lab's own InfluxDB" in notes
    events = report["events"]
    backend_pods = {e["pod"] for e in events if e["kind"] == "created" and e["pod"].startswith("backend-")}  # fmt: skip
    assert len(backend_pods) == 1
    (backend,) = backend_pods
    in_lb = {e["pod"] for e in events if e["kind"] == "lb-added"}
    assert backend not in in_lb and len(in_lb) == 4  # the app's 2 pods, twice
    assert report["pods_created"] == 4
    writes = (out / "pods" / f"{backend}.log").read_text().count("request ")
    assert writes >= report["ok"] * 0.9, (writes, report["ok"])
    # Torn down after the app's pods: the app's last writes still reached it.
    gone = {e["pod"]: e["t"] for e in events if e["kind"] == "gone"}
    assert gone[backend] >= max(t for pod, t in gone.items() if pod != backend)


def _set(path: Path, change: Any) -> Path:
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs[0]["spec"]["template"]["spec"]["containers"][0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_unmapped_exec_command_is_named_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The original demo's liveness probe `exec: /app/bin/calc pid` (an Elixir release
    command) and a preStop `drain-now` that is on no PATH here.
    1. `lab run` it with the tiny image map.
    2. It exits 2 before anything starts (no output dir), naming both fields and how to
       map each in the image map."""
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda c: c.update(
            livenessProbe={"exec": {"command": ["/app/bin/calc", "pid"]}},
            lifecycle={"preStop": {"exec": {"command": ["drain-now"]}}},
            workingDir="/srv/app",
        ),
    )
    out = tmp_path / "out"
    argv = ["run", "--manifests", str(manifest), "--image-map", str(TINY_IMAGES), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "containers[0].livenessProbe.exec.command: '/app/bin/calc'" in err
    assert "under images.tinyapp.paths (e.g. `/app/bin/calc: " in err and str(TINY_IMAGES) in err
    assert "containers[0].lifecycle.preStop.exec.command: 'drain-now'" in err
    assert "images.tinyapp.env PATH" in err
    assert "containers[0].workingDir: '/srv/app' is a directory inside image 'tinyapp'" in err
    assert not out.exists()


def test_with_the_docker_runtime_the_image_runs_its_own_commands(tmp_path: Path) -> None:
    """The same unmapped liveness exec `/app/bin/calc pid`. 1. Prepared for the process
    runtime: refused before start, naming it. 2. Prepared for the docker runtime: accepted,
    since the container runs the image's own files (a command missing there fails its
    probe as in a cluster, and the probe's last output says why)."""
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda c: c.update(livenessProbe={"exec": {"command": ["/app/bin/calc", "pid"]}}),
    )
    config = LabConfig(manifests=manifest, image_map=TINY_IMAGES)
    with pytest.raises(ManifestError, match=r"livenessProbe\.exec\.command: '/app/bin/calc'"):
        prepare(config)
    prepared = prepare(dataclasses.replace(config, runtime="docker"))
    assert prepared.manifests.deployment.template.container.liveness is not None


def test_not_ready_names_pods_probe_and_last_status(tmp_path: Path) -> None:
    """One pod whose readiness probe (GET /ready) answers 500 "database unreachable".
    1. `lab run --ready-timeout 4`.
    2. It fails (exit 1) with "not ready within 4 s", the pod's name, the probe and its
       last result (HTTP 500 and the body); the progress lines showed the failure as it
       happened; every process is gone."""
    manifest = tiny_manifest(
        tmp_path / "m.yml", port=free_port(), args=["--ready-status", "500"], readiness=READY_PROBE
    )
    out = tmp_path / "out"
    try:
        result = subprocess.run(
            _lab(out, manifest, "--ready-timeout", "4"),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        _assert_all_gone(out)
    finally:
        _kill_leftovers(out)
    assert result.returncode == 1, result.stderr[-2000:]
    failed = result.stderr[result.stderr.index("lab: failed:") :]
    assert "the Deployment tiny was not ready within 4 s" in failed
    assert "tiny-r1-" in failed and "(not ready)" in failed
    assert "readiness probe httpGet :http/ready: HTTP 500: 'database unreachable'" in failed
    progress = result.stderr[: result.stderr.index("lab: failed:")]
    assert "probe-failed: readiness httpGet :http/ready: HTTP 500" in progress


def test_report_names_a_liveness_command_that_cannot_run(tmp_path: Path) -> None:
    """A liveness exec `sh -c "/app/bin/calc pid"`: sh exists, the command it runs does
    not (period 1 s, failureThreshold 1000, so the pod keeps running).
    1. `lab run --scenario steady --duration 2`.
    2. The report's pod failures (JSON and table) name the probe, exit code 127 and
       sh's "not found" message, once, with the pods it happened on."""
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE),
        lambda c: c.update(
            livenessProbe={
                "exec": {"command": ["sh", "-c", "/app/bin/calc pid"]},
                "periodSeconds": 1,
                "failureThreshold": 1000,
            }
        ),
    )
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--scenario", "steady", "--duration", "2", "--vus", "2", "--warmup", "1",
        "--cooldown", "0", "--endpoint-lag", "0",
    )  # fmt: skip
    (line,) = [e for e in report["explanations"] if "liveness" in e]
    assert line.startswith(
        "probe-failed: liveness exec sh -c /app/bin/calc pid: exit code 127 (command not found):"
    )
    assert "/app/bin/calc: not found" in line and "1x on tiny-r1-" in line


ORIGINAL_V9 = Path(__file__).resolve().parent / "original-v9"


def test_original_v9_manifests_need_their_image_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The original demo's v9 directory (deployment.yml, service.yml, influxdb.yml) with
    the project's image map, which knows the image `calc` but not the Elixir release.
    1. `lab run` it.
    2. It exits 2 before anything starts, naming the liveness command /app/bin/calc and
       the image map entry that would map it."""
    out = tmp_path / "out"
    assert cli.main(["run", "--manifests", str(ORIGINAL_V9 / "k8s"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "livenessProbe.exec.command: '/app/bin/calc' from image 'calc'" in err
    assert "under images.calc.paths" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(170)
@pytest.mark.skipif(not (VENV_BIN / "calc").exists(), reason="calc is not installed")
def test_original_v9_manifests_through_the_lab_drop_nothing(tmp_path: Path) -> None:
    """The original demo's v9 directory with its image map (original-v9/images.yml: the
    release's `start` and `pid` stood in for by calc v9), 2 replicas, 20 VUs.
    1. `lab run --scenario rollout-restart`.
    2. No request fails, no operation is lost; InfluxDB was replaced by the lab's own;
       the liveness command ran and passed (no probe failure)."""
    report = _run(
        tmp_path / "out", ORIGINAL_V9 / "k8s", "--image-map", str(ORIGINAL_V9 / "images.yml"),
        "--replicas", "2", "--vus", "20", "--warmup", "3", "--cooldown", "2", timeout=150,
    )  # fmt: skip
    assert report["action_completed"]
    assert report["failed"] == {} and report["ok"] == report["requests"] > 100
    assert report["lost_operations"] == 0 and report["operations_logged"] > 100
    assert any("influxdb" in n and "replaced by the lab's own" in n for n in report["notes"])
    assert not [e for e in report["explanations"] if "liveness" in e]


def test_influxdb_deployment_is_replaced_under_its_own_service_and_database(
    tmp_path: Path,
) -> None:
    """A directory with the app and an InfluxDB Deployment whose Service is `metrics-db`
    on port 80 and whose INFLUXDB_DB is `ops`.
    1. Prepare the run (everything checked, nothing started).
    2. The lab's InfluxDB will stand in for metrics-db:80 with database `ops`; the notes
       say the Deployment was replaced.
    3. URLs naming the Service, in any DNS spelling, point at the stand-in; others stay."""
    tiny_manifest(tmp_path / "app.yml", port=8123)
    influx = list(yaml.safe_load_all((K8S / "influxdb.yml").read_text()))
    env = influx[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "INFLUXDB_DB")["value"] = "ops"
    influx[1]["metadata"]["name"] = "metrics-db"
    influx[1]["spec"]["ports"] = [{"port": 80, "targetPort": 8086}]
    (tmp_path / "influx.yml").write_text(yaml.safe_dump_all(influx, sort_keys=False))
    prepared = prepare(LabConfig(manifests=tmp_path, image_map=TINY_IMAGES))
    assert prepared.uses_influx and prepared.influx_db == "ops"
    assert [s.name for s in prepared.influx_services] == ["metrics-db"]
    assert any("Deployment influxdb" in n and "replaced" in n for n in prepared.notes)
    services = {"metrics-db": {80: "127.0.0.1:9999"}}
    for value, expected in [
        ("http://metrics-db/write?db=ops", "http://127.0.0.1:9999/write?db=ops"),
        ("http://metrics-db.default.svc.cluster.local:80", "http://127.0.0.1:9999"),
        ("metrics-db:80", "127.0.0.1:9999"),
        ("http://metrics-db:8086", "http://metrics-db:8086"),  # no such Service port
        ("http://metrics-dbx:80", "http://metrics-dbx:80"),
        ("xmetrics-db:80", "xmetrics-db:80"),
    ]:
        assert _service_urls(value, services) == expected, value


def test_supporting_deployment_not_ready_is_named_before_any_load(tmp_path: Path) -> None:
    """The app plus a `backend` Deployment whose readiness probe answers 500.
    1. `lab run --ready-timeout 3` on the directory.
    2. It fails (exit 1) naming the backend Deployment, its pod and the probe's last
       result; the app's pods were never created; every process is gone."""
    directory = tmp_path / "k8s"
    directory.mkdir()
    tiny_manifest(directory / "app.yml", port=free_port(), readiness=READY_PROBE)
    _backend(directory, free_port())
    _set(directory / "backend.yml", lambda c: c.update(args=[*c["args"], "--ready-status", "500"]))
    out = tmp_path / "out"
    try:
        result = subprocess.run(
            _lab(out, directory, "--ready-timeout", "3"),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        _assert_all_gone(out)
    finally:
        _kill_leftovers(out)
    assert result.returncode == 1, result.stderr[-2000:]
    failed = result.stderr[result.stderr.index("lab: failed:") :]
    assert "the Deployment backend was not ready within 3 s" in failed
    assert "backend-r1-" in failed
    assert "readiness probe httpGet :http/ready: HTTP 500: 'database unreachable'" in failed
    assert "tiny-r1-" not in result.stderr


def test_args_that_look_like_unmapped_image_files_are_noted(tmp_path: Path) -> None:
    """1. Prepare a run whose args name /app/config/prod.exs (a file inside the image,
    not mapped), /health (a URL path) and this test's own directory (exists here).
    2. Only the first is named in the notes, with the image map entry that would map it;
    the run is not refused."""
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda c: c.update(
            args=[*c["args"], "--config", "/app/config/prod.exs", "/health", str(tmp_path)]
        ),
    )
    prepared = prepare(LabConfig(manifests=manifest, image_map=TINY_IMAGES))
    named = [n for n in prepared.notes if "is not on this machine" in n]
    assert len(named) == 1, named
    assert "containers[0].args[3]: '/app/config/prod.exs'" in named[0]
    assert "map it under images.tinyapp.paths" in named[0]


def test_unmapped_image_names_the_map_file_and_the_key_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. `lab run` a manifest whose image `ghcr.io/team/api:1.2` the image map (the
    tiny one, by a relative path) does not have.
    2. Exit 2, one line naming the map file by its full path and the key `images.api`,
    with the one-line entry for a service in its own virtualenv; nothing started."""
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda c: c.update(image="ghcr.io/team/api:1.2"),
    )
    out = tmp_path / "out"
    relative = TINY_IMAGES.relative_to(REPO)
    argv = ["run", "--manifests", str(manifest), "--image-map", str(relative), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        f"'ghcr.io/team/api:1.2' is not in the image map {TINY_IMAGES}: add the key images.api"
        in err
    )
    assert "`  api: {venv: /path/to/.venv, workdir: /path/to/code}` under `images:`" in err
    assert "it has: tinyapp" in err
    assert not out.exists()


def test_a_service_in_its_own_virtualenv_is_one_line_of_the_image_map(tmp_path: Path) -> None:
    """1. An image map of one line: `api: {venv: <a virtualenv>, workdir: <its code>}`.
    2. The container runs in that directory with the virtualenv's bin first on its PATH
       and VIRTUAL_ENV naming it, so the manifest's `uvicorn` is the service's own.
    3. A `venv` that is no virtualenv (no bin/) is refused, naming the field."""
    code = tmp_path / "api"
    (code / ".venv" / "bin").mkdir(parents=True)
    uvicorn = code / ".venv" / "bin" / "uvicorn"
    uvicorn.write_text("#!/bin/sh\n")
    uvicorn.chmod(0o755)
    images_yml = tmp_path / "images.yml"
    images_yml.write_text("images:\n  api: {venv: api/.venv, workdir: api}\n")
    manifest = _set(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda c: c.update(image="ghcr.io/team/api:1.2", command=["uvicorn", "app:app"], args=[]),
    )
    prepared = prepare(LabConfig(manifests=manifest, image_map=images_yml))
    image = prepared.images.image("ghcr.io/team/api:1.2")
    launch = resolve(prepared.manifests.deployment.template.container, image, "p", "127.0.0.9", {"PATH": "/usr/bin"})  # fmt: skip
    assert launch.cwd == code
    assert launch.env["PATH"] == f"{code / '.venv' / 'bin'}:/usr/bin"
    assert launch.env["VIRTUAL_ENV"] == str(code / ".venv")
    assert launch.argv == ("uvicorn", "app:app")
    images_yml.write_text("images:\n  api: {venv: api, workdir: api}\n")
    with pytest.raises(ManifestError, match=r"images\.api\.venv: '.*/api' is not a virtualenv"):
        ImageMap.load(images_yml)
