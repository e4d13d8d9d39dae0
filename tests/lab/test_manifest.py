"""Manifests, the image map and options: parsed and checked before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli
from lab.config import ConfigError, parse_lag
from lab.images import Image, ImageMap, container_argv, container_env, expand, image_name
from lab.manifest import ManifestError, Strategy, load
from tests.lab.labkit import TINY_IMAGES, tiny_manifest


def _edit(path: Path, change: Any) -> Path:
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_probe_defaults_and_ports(tmp_path: Path) -> None:
    """A manifest with a bare httpGet readiness probe on a named port.
    1. Load it.
    2. The probe has Kubernetes' defaults; the Service's named targetPort resolves."""
    path = tiny_manifest(
        tmp_path / "m.yml", port=8123, readiness={"httpGet": {"path": "/ready", "port": "http"}}
    )
    manifests = load(path)
    probe = manifests.deployment.template.container.readiness
    assert probe is not None
    assert (probe.period, probe.timeout, probe.failure_threshold, probe.success_threshold) == (
        10,
        1,
        3,
        1,
    )
    assert manifests.deployment.template.termination_grace == 30
    assert manifests.target_port == 8123


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "expected"),
    [
        ("25%", "25%", 4, (1, 1)),
        ("25%", "25%", 13, (4, 3)),  # surge rounds up, unavailable down
        (0, 0, 3, (0, 1)),  # both zero would deadlock: Kubernetes makes unavailable 1
        (1, "0%", 13, (1, 0)),
    ],
)
def test_strategy_resolves_like_kubernetes(
    surge: int | str, unavailable: int | str, replicas: int, expected: tuple[int, int]
) -> None:
    """maxSurge/maxUnavailable as ints or percentages of replicas, rounded as Kubernetes."""
    assert Strategy("RollingUpdate", surge, unavailable).resolve(replicas) == expected


def _bad_period(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"port": "http"},
        "periodSeconds": "often",
    }


def _bad_surge(d: dict[str, Any]) -> None:
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": "lots"}}


def _no_image(d: dict[str, Any]) -> None:
    del d["spec"]["template"]["spec"]["containers"][0]["image"]


def _bad_port_name(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] = {
        "tcpSocket": {"port": "metrics"}
    }


def _two_containers(d: dict[str, Any]) -> None:
    containers = d["spec"]["template"]["spec"]["containers"]
    containers.append(dict(containers[0], name="sidecar"))


def _bad_prestop(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {}}}


def _bad_replicas(d: dict[str, Any]) -> None:
    d["spec"]["replicas"] = -1


def _bad_labels(d: dict[str, Any]) -> None:
    d["spec"]["template"]["metadata"]["labels"] = {"app": "other"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_bad_period, "spec.template.spec.containers[0].readinessProbe.periodSeconds"),
        (_bad_surge, "spec.strategy.rollingUpdate.maxSurge"),
        (_no_image, "spec.template.spec.containers[0].image"),
        (_bad_port_name, "spec.template.spec.containers[0].livenessProbe.tcpSocket.port"),
        (_two_containers, "spec.template.spec.containers"),
        (_bad_prestop, "spec.template.spec.containers[0].lifecycle.preStop.sleep.seconds"),
        (_bad_replicas, "spec.replicas"),
        (_bad_labels, "spec.template.metadata.labels"),
    ],
)
def test_bad_manifest_names_the_field(tmp_path: Path, change: Any, field: str) -> None:
    """A manifest with one bad field.
    1. Load it.
    2. The error names the file and the field's full path."""
    path = _edit(tiny_manifest(tmp_path / "m.yml", port=8123), change)
    with pytest.raises(ManifestError) as caught:
        load(path)
    assert field in str(caught.value)
    assert str(path) in str(caught.value)


def test_directory_needs_one_deployment_and_notes_other_kinds(tmp_path: Path) -> None:
    """A directory with a Deployment, its Service and a PodDisruptionBudget.
    1. Load the directory: the PDB is ignored with a note.
    2. A directory with no Deployment is an error."""
    tiny_manifest(tmp_path / "calc.yml", port=8123)
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}}
    (tmp_path / "pdb.yaml").write_text(yaml.safe_dump(pdb))
    manifests = load(tmp_path)
    assert manifests.service is not None and manifests.service.port == 80
    assert any("PodDisruptionBudget" in note for note in manifests.notes)
    (tmp_path / "calc.yml").unlink()
    with pytest.raises(ManifestError, match="exactly one Deployment"):
        load(tmp_path)


def test_command_and_args_follow_kubernetes_rules() -> None:
    """The image has ENTRYPOINT [tini, --] and CMD [calc, serve].
    1. No command, no args: entrypoint + cmd.
    2. args only: entrypoint + args.
    3. command only: command, the CMD is dropped.
    4. Image paths are mapped to local files; $(VAR) expands from the env."""
    from lab.manifest import Container

    image = Image(
        "calc",
        entrypoint=("tini", "--"),
        cmd=("calc", "serve"),
        paths={"/app/start.sh": Path("/repo/deploy/start.sh")},
    )

    def container(command: list[str] | None, args: list[str] | None) -> Container:
        return Container(
            "c",
            "calc",
            tuple(command) if command is not None else None,
            tuple(args) if args is not None else None,
            (),
            {},
            None,
            None,
            None,
        )

    env = {"PORT": "4000"}
    assert container_argv(container(None, None), image, env) == ("tini", "--", "calc", "serve")
    assert container_argv(container(None, ["x"]), image, env) == ("tini", "--", "x")
    assert container_argv(container(["/app/start.sh"], None), image, env) == (
        "/repo/deploy/start.sh",
    )
    assert container_argv(container(["run"], ["--port", "$(PORT)", "$$(PORT)"]), image, env) == (
        "run",
        "--port",
        "4000",
        "$(PORT)",
    )


def test_env_expansion_order_field_refs_and_rewrite() -> None:
    """Env entries expand against the ones defined before them, field refs give the pod's
    name and IP, HOSTNAME is the pod name, and the image's env comes first."""
    from lab.manifest import Container, EnvVar

    container = Container(
        "c",
        "calc",
        None,
        None,
        (
            EnvVar("LATE", "$(EARLY)-x"),  # not defined yet: stays as written
            EnvVar("EARLY", "e"),
            EnvVar("BOTH", "$(EARLY)+$(MY_IP)"),
            EnvVar("MY_IP", field_ref="status.podIP"),
            EnvVar("URL", "http://influxdb:8086"),
        ),
        {},
        None,
        None,
        None,
    )
    image = Image("calc", env={"CALC_HOST": "$(POD_IP)"})
    env = container_env(
        container,
        image,
        "calc-1",
        "127.9.9.2",
        {"PATH": "/bin"},
        rewrite=lambda v: v.replace("influxdb:8086", "127.0.0.1:9"),
    )
    assert env["LATE"] == "$(EARLY)-x"
    assert env["BOTH"] == "e+$(MY_IP)"
    assert env["MY_IP"] == "127.9.9.2"
    assert env["CALC_HOST"] == "127.9.9.2"
    assert env["HOSTNAME"] == "calc-1"
    assert env["URL"] == "http://127.0.0.1:9"
    assert expand("$(A)$$$(B)", {"A": "1"}) == "1$$(B)"
    assert image_name("registry.digitalocean.com/x/calc:0.1.0") == "calc"


def test_project_image_map_loads() -> None:
    """deploy/lab-images.yml maps the calc image as the Dockerfile builds it."""
    images = ImageMap.load(Path(__file__).resolve().parents[2] / "deploy" / "lab-images.yml")
    calc = images.image("registry.digitalocean.com/team/calc:0.1.0")
    assert calc.cmd == ("calc", "serve") and calc.entrypoint == ()
    assert "/app/start.sh" in calc.paths


def test_endpoint_lag_option() -> None:
    assert parse_lag("1") == (1.0, 1.0)
    assert parse_lag("0.5-3") == (0.5, 3.0)
    for bad in ("fast", "3-1", "-1"):
        with pytest.raises(ConfigError, match="--endpoint-lag"):
            parse_lag(bad)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--endpoint-lag", "3-1"], "--endpoint-lag"),
        (["--vus", "0"], "--vus"),
        (["--scenario", "scale"], "--to"),
        (["--warmup", "-1"], "--warmup"),
        (["--lb", "udp"], "--lb"),
        (["--scenario", "update"], "--update-to"),
        (["--image-map", "/nonexistent.yml"], "--image-map"),
    ],
)
def test_bad_options_fail_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    """`lab run` with one bad option.
    1. It exits 2 with an error naming the option.
    2. The output dir was never created: nothing started."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=8123)
    out = tmp_path / "out"
    argv = ["run", "--manifests", str(manifest), "--image-map", str(TINY_IMAGES)]
    try:
        code = cli.main([*argv, "--out", str(out), *extra])
    except SystemExit as exit_:  # argparse rejects unknown choices itself, also with 2
        code = int(exit_.code or 0)
    assert code == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_bad_manifest_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lab run` on a manifest whose image is not in the image map: exit 2, the error
    names the field, and nothing started."""
    manifest = _edit(
        tiny_manifest(tmp_path / "m.yml", port=8123),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="nginx:1"),
    )
    out = tmp_path / "out"
    argv = ["run", "--manifests", str(manifest), "--image-map", str(TINY_IMAGES)]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "containers[0].image" in capsys.readouterr().err
    assert not out.exists()
