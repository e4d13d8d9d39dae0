"""The kubelet's startupProbe and postStart rules, and probe failures explained with their
last output (HTTP status and body, exec exit code and output, connect error)."""

from __future__ import annotations

from pathlib import Path

from lab.events import Event
from lab.influx import free_port
from lab.pods import Pod
from tests.lab.labkit import READY_PROBE, Cluster, cluster, run, tiny_manifest


def _kinds(c: Cluster, pod: Pod, kind: str) -> list[Event]:
    return [e for e in c.events.of(pod.name) if e.kind == kind]


def _one(c: Cluster, pod: Pod, kind: str) -> Event:
    event = c.events.first(pod.name, kind)
    assert event is not None, f"no {kind} event for {pod.name}: {c.events.of(pod.name)}"
    return event


def test_startup_probe_holds_liveness_and_readiness_until_it_succeeds(tmp_path: Path) -> None:
    """A pod whose startup probe (GET /ready, period 1 s, 10 failures allowed) succeeds
    once the app is ready after 2 s; its liveness exec appends a line to a file on every
    run, and its readiness probe (GET /health) would pass at once.
    1. Start it.
    2. The startup probe fails (HTTP 503), then succeeds: `started-up`.
    3. No liveness run and no `ready` came before `started-up`."""
    marks = tmp_path / "liveness-runs"
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        args=["--ready-after", "2"],
        readiness={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
        liveness={
            "exec": {"command": ["sh", "-c", f"date +%s.%N >> {marks}"]},
            "periodSeconds": 1,
        },
    )
    _add_startup(manifest, {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1,
                            "failureThreshold": 10})  # fmt: skip

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
            pod = c.pods()[0]
            await c.until(lambda: marks.exists() and marks.read_text().split(), 5, "a liveness run")
            started_up = _one(c, pod, "started-up")
            assert _one(c, pod, "ready").t >= started_up.t
            first_liveness = min(float(line) for line in marks.read_text().split())
            assert first_liveness >= started_up.wall - 0.01
            failed = [e for e in _kinds(c, pod, "probe-failed") if e.t < started_up.t]
            assert failed[-1].detail == "startup httpGet :http/ready: HTTP 503: 'not ready'"

    run(scenario())


def _add_startup(manifest: Path, probe: dict[str, object]) -> None:
    import yaml

    docs = list(yaml.safe_load_all(manifest.read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["startupProbe"] = probe
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _add_post_start(manifest: Path, hook: dict[str, object]) -> None:
    import yaml

    docs = list(yaml.safe_load_all(manifest.read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("lifecycle", {})["postStart"] = hook
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_failing_startup_probe_restarts_the_container_and_says_why(tmp_path: Path) -> None:
    """A pod whose startup probe connects to a port nothing listens on (period 1 s,
    failureThreshold 2).
    1. After two failures the kubelet kills the container and restarts it in the same pod.
    2. The event names the probe and its last result (connection refused); the pod was
       never ready."""
    dead_port = free_port()
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE, grace=2)
    _add_startup(manifest, {"tcpSocket": {"port": dead_port}, "periodSeconds": 1,
                            "failureThreshold": 2})  # fmt: skip

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: len(_kinds(c, pod, "started")) >= 2, 15, "a restart")
            failed = _one(c, pod, "startup-failed")
            assert f"tcpSocket :{dead_port}" in failed.detail
            assert "refused" in failed.detail.lower() and "restarting" in failed.detail
            assert c.events.first(pod.name, "ready") is None
            assert pod.restarts >= 1 and not pod.gone

    run(scenario())


def test_post_start_runs_before_the_container_counts_as_running(tmp_path: Path) -> None:
    """A pod with a postStart exec hook that takes 1.5 s, and a readiness probe that
    passes at once.
    1. Start it.
    2. `poststart-finished` comes >= 1.5 s after `started`, and `ready` only after it."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE)
    _add_post_start(manifest, {"exec": {"command": ["sh", "-c", "sleep 1.5; echo hooked"]}})

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
            pod = c.pods()[0]
            finished = _one(c, pod, "poststart-finished")
            assert finished.t - _one(c, pod, "started").t >= 1.5
            assert _one(c, pod, "ready").t >= finished.t
            assert "hooked" in c.log(pod)

    run(scenario())


def test_failing_post_start_kills_the_container_and_says_why(tmp_path: Path) -> None:
    """A pod whose postStart hook prints to stderr and exits 3.
    1. Start it.
    2. The kubelet kills the container (SIGTERM; no readiness ever) and restarts it; the
       event names the hook, the exit code and the output."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE, grace=2)
    _add_post_start(manifest, {"exec": {"command": ["sh", "-c", "echo no config >&2; exit 3"]}})

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: len(_kinds(c, pod, "started")) >= 2, 15, "a restart")
            failed = _one(c, pod, "poststart-failed")
            assert "exec sh -c echo no config >&2; exit 3" in failed.detail
            assert "exit code 3: 'no config'" in failed.detail
            assert _one(c, pod, "sigterm").t >= failed.t
            assert c.events.first(pod.name, "ready") is None

    run(scenario())


def test_readiness_answering_500_shows_the_status_and_body(tmp_path: Path) -> None:
    """A pod whose /ready answers 500 "database unreachable".
    1. Start it; wait for three failed probes.
    2. One `probe-failed` event (not one per probe) names the probe, the status and the
       body; the pod's last readiness result says the same; it is never ready."""
    manifest = tiny_manifest(
        tmp_path / "m.yml", port=free_port(), args=["--ready-status", "500"], readiness=READY_PROBE
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: "listening" in c.log(pod), 10, "the app listening")
            await c.until(lambda: "HTTP 500" in str(pod.last_probe.get("readiness")), 5, "a 500")
            await c.until(lambda: c.events.now() > 4, 6, "a few probes")
            failures = _kinds(c, pod, "probe-failed")
            assert failures[-1].detail == (
                "readiness httpGet :http/ready: HTTP 500: 'database unreachable'"
            )
            assert len([e for e in failures if "HTTP 500" in e.detail]) == 1
            assert not pod.ready and c.events.first(pod.name, "ready") is None

    run(scenario())


def test_liveness_exec_that_cannot_run_is_named_with_its_error(tmp_path: Path) -> None:
    """A pod whose liveness probe is the Elixir release's `/app/bin/calc pid`, which does
    not exist here (period 1 s, failureThreshold 2).
    1. Start it.
    2. The probe fails with "cannot run: ... No such file or directory", and the
       `liveness-failed` event that restarts the container names the command and that
       error."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        liveness={"exec": {"command": ["/app/bin/calc", "pid"]}, "periodSeconds": 1,
                  "failureThreshold": 2},
        grace=2,
    )  # fmt: skip

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: c.events.first(pod.name, "liveness-failed"), 10, "a kill")
            failed = _one(c, pod, "liveness-failed")
            assert failed.detail.startswith("exec /app/bin/calc pid: cannot run:")
            assert "No such file or directory" in failed.detail
            assert "restarting the container" in failed.detail

    run(scenario())


def test_volumes_are_directories_of_the_pod_mapped_at_their_mount_paths(tmp_path: Path) -> None:
    """A pod with a configMap volume (one key projected to conf/greeting.txt, mode 0600)
    at /etc/tiny, and an emptyDir at /data; its postStart runs `touch /data/started`,
    its liveness probe `cat /etc/tiny/conf/greeting.txt` every second.
    1. Start it and let the liveness probe run a few times.
    2. The pod's volumes/config holds the projected file with its mode, volumes/data the
       hook's file; the liveness probe found the file (no failure): the mount paths in
       exec commands point at the pod's directories."""
    import yaml

    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        readiness=READY_PROBE,
        liveness={"exec": {"command": ["cat", "/etc/tiny/conf/greeting.txt"]}, "periodSeconds": 1},
    )
    docs = list(yaml.safe_load_all(manifest.read_text()))
    spec = docs[0]["spec"]["template"]["spec"]
    spec["volumes"] = [
        {"name": "config", "configMap": {"name": "tiny-config", "defaultMode": 0o600,
                                         "items": [{"key": "greeting", "path": "conf/greeting.txt"}]}},
        {"name": "data", "emptyDir": {}},
    ]  # fmt: skip
    container = spec["containers"][0]
    container["volumeMounts"] = [
        {"name": "config", "mountPath": "/etc/tiny", "readOnly": True},
        {"name": "data", "mountPath": "/data"},
    ]
    container["lifecycle"] = {"postStart": {"exec": {"command": ["touch", "/data/started"]}}}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tiny-config"},
        "data": {"greeting": "hello", "unused": "x"},
    }
    manifest.write_text(yaml.safe_dump_all([*docs, config_map], sort_keys=False))

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
            pod = c.pods()[0]
            await c.until(lambda: c.events.now() > 3, 5, "a few liveness probes")
            volumes = c.kubelet.log_dir / pod.name / "volumes"
            greeting = volumes / "config" / "conf" / "greeting.txt"
            assert greeting.read_text() == "hello" and greeting.stat().st_mode & 0o777 == 0o600
            assert not (volumes / "config" / "unused").exists()
            assert (volumes / "data" / "started").exists()
            assert pod.last_probe["liveness"].ok
            assert not [e for e in _kinds(c, pod, "probe-failed") if "liveness" in e.detail]

    run(scenario())
