"""Manifests, the image map and options: parsed and checked before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli
from lab.config import ConfigError, parse_lag
from lab.images import Image, ImageMap, container_argv, container_env, expand, image_name
from lab.lag import Lag
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
    with pytest.raises(ManifestError, match="needs a Deployment, found none"):
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
    # The image map's own cmd stands in for the image's: it expands against the whole
    # environment (the pod's address), a manifest's args against the manifest's env only.
    local = Image(name="calc", cmd=("calc", "serve", "--host", "$(POD_IP)"))
    whole = {"POD_IP": "127.0.0.9", "PORT": "4000"}
    assert container_argv(container(None, None), local, env, whole)[-1] == "127.0.0.9"
    assert container_argv(container(None, ["$(POD_IP)"]), local, env, whole) == ("$(POD_IP)",)


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
    assert parse_lag("1") == Lag.fixed(1.0)
    assert parse_lag("0.5-3") == Lag("uniform", 0.5, 3.0)
    assert parse_lag(" lognormal:1,5 ") == Lag("lognormal", 1.0, 5.0)
    for bad in (
        "fast", "3-1", "-1", "", "nan", "inf", "lognormal:1", "lognormal:0,5",
        "lognormal:5,1", "lognormal:a,b", "normal:1,2",
    ):  # fmt: skip
        with pytest.raises(ConfigError, match="--endpoint-lag: expected SECONDS, MIN-MAX or"):
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


def _team_directory(tmp_path: Path, port: int = 8123) -> Path:
    """A team's directory: the app (Deployment + LoadBalancer Service, env from a
    ConfigMap and a Secret), a cache it depends on (Deployment + ClusterIP Service), and
    InfluxDB (Deployment + Service), in three files as teams keep them."""
    app = tiny_manifest(tmp_path / "app.yml", port=port)
    docs = list(yaml.safe_load_all(app.read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}]
    container["env"] = [
        {"name": "CFG_MODE", "value": "from-env"},  # env wins over envFrom
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "LEVEL"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token"}}},
        {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}},
        {"name": "CACHE_URL", "value": "http://cache:9000/x"},
    ]  # fmt: skip
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app-config"},
        "data": {"LEVEL": "$(NOT_EXPANDED)", "MODE": "cm"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "app-secret"},
        "data": {"token": "czNjcjN0"},  # base64 of "s3cr3t"
    }
    app.write_text(yaml.safe_dump_all([*docs, config_map, secret], sort_keys=False))
    cache = tiny_manifest(tmp_path / "cache.yml", port=port + 1)
    docs = list(yaml.safe_load_all(cache.read_text()))
    docs[0]["metadata"]["name"] = "cache"
    docs[0]["spec"]["selector"]["matchLabels"] = {"app": "cache"}
    docs[0]["spec"]["template"]["metadata"]["labels"] = {"app": "cache"}
    docs[1]["metadata"]["name"] = "cache"
    docs[1]["spec"].update(type="ClusterIP", selector={"app": "cache"})
    docs[1]["spec"]["ports"] = [{"port": 9000, "targetPort": "http"}]
    cache.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    (tmp_path / "influxdb.yml").write_text((REPO_K8S / "influxdb.yml").read_text())
    return tmp_path


REPO_K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def test_directory_with_several_deployments_configmap_secret_and_services(tmp_path: Path) -> None:
    """1. Load a team's directory: three Deployments (app, cache, influxdb), three
    Services, a ConfigMap and a Secret.
    2. The app is under test (the only one behind a LoadBalancer Service); cache runs
    beside it; influxdb is replaced by the lab's own.
    3. env and envFrom take the ConfigMap's and Secret's values, unexpanded, env winning
    over envFrom; an optional reference to a missing ConfigMap sets nothing."""
    manifests = load(_team_directory(tmp_path))
    assert manifests.deployment.name == "tiny"
    assert manifests.service is not None and manifests.service.type == "LoadBalancer"
    supporting = {s.deployment.name: s for s in manifests.supporting}
    assert set(supporting) == {"cache", "influxdb"}
    assert supporting["influxdb"].replaced_by == "influxdb"
    assert supporting["cache"].replaced_by is None
    assert [s.name for s in supporting["cache"].services] == ["cache"]
    container = manifests.deployment.template.container
    env = container_env(
        container, ImageMap.load(TINY_IMAGES).image("tinyapp"), "p", "127.0.0.9", {}
    )
    assert env["CFG_MODE"] == "from-env" and env["CFG_LEVEL"] == "$(NOT_EXPANDED)"
    assert env["LEVEL"] == "$(NOT_EXPANDED)" and env["TOKEN"] == "s3cr3t"
    assert "MAYBE" not in env
    # --deployment picks another one; the app then runs beside it.
    cache = load(tmp_path, deployment="cache")
    assert cache.deployment.name == "cache"
    assert {s.deployment.name for s in cache.supporting} == {"tiny", "influxdb"}
    with pytest.raises(ManifestError, match="--deployment nope: no such Deployment"):
        load(tmp_path, deployment="nope")


def test_several_deployments_without_a_front_service_need_a_name(tmp_path: Path) -> None:
    """1. Turn the app's LoadBalancer Service into a ClusterIP one.
    2. Loading without --deployment fails, naming the Deployments and the option."""
    directory = _team_directory(tmp_path)
    docs = list(yaml.safe_load_all((directory / "app.yml").read_text()))
    docs[1]["spec"]["type"] = "ClusterIP"
    (directory / "app.yml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    with pytest.raises(
        ManifestError, match=r"3 Deployments \(tiny, cache, influxdb\).*--deployment"
    ):
        load(directory)


def _pod_spec(d: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = d["spec"]["template"]["spec"]
    return spec


def _first(d: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod_spec(d)["containers"][0]
    return container


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        (
            lambda d: _pod_spec(d).update(readinessGates=[{"conditionType": "x/y"}]),
            "spec.template.spec.readinessGates",
            "no pod would become Ready",
        ),
        (
            lambda d: _pod_spec(d).update(initContainers=[{"name": "i", "image": "busybox"}]),
            "spec.template.spec.initContainers",
            "init containers",
        ),
        (lambda d: _pod_spec(d).update(hostNetwork=True), "spec.template.spec.hostNetwork", ""),
        (
            lambda d: _pod_spec(d).update(volumes=[{"name": "v", "hostPath": {"path": "/x"}}]),
            "spec.template.spec.volumes[0].hostPath",
            "only emptyDir",
        ),
        (
            lambda d: _first(d).update(restartPolicy="Always"),
            "spec.template.spec.containers[0].restartPolicy",
            "sidecar",
        ),
        (
            lambda d: _first(d).update(volumeMounts=[{"name": "gone", "mountPath": "/x"}]),
            "spec.template.spec.containers[0].volumeMounts[0].name",
            "no volume named",
        ),
        (
            lambda d: _first(d).update(
                env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
            ),
            "spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef.name",
            "ConfigMap 'c' is not in the manifests",
        ),
        (
            lambda d: _first(d).update(lifecycle={"postStart": {"exec": {"cmd": ["x"]}}}),
            "spec.template.spec.containers[0].lifecycle.postStart.exec.cmd",
            "",
        ),
        (
            lambda d: _first(d).update(startupProbe={"httpGet": {"port": "nope"}}),
            "spec.template.spec.containers[0].startupProbe.httpGet.port",
            "no container port",
        ),
        (lambda d: _first(d).update(tty=True), "spec.template.spec.containers[0].tty", ""),
        (
            lambda d: _pod_spec(d).update(volumes=[{"name": "v", "configMap": {"name": "gone"}}]),
            "spec.template.spec.volumes[0].configMap.name",
            "ConfigMap 'gone' is not in the manifests",
        ),
        (
            lambda d: _pod_spec(d).update(volumes=[{"name": "v", "secret": {"secretName": "s"}}]),
            "spec.template.spec.volumes[0].secret.secretName",
            "Secret 's' is not in the manifests",
        ),
        (
            lambda d: (
                _pod_spec(d).update(volumes=[{"name": "v", "emptyDir": {}}]),
                _first(d).update(volumeMounts=[{"name": "v", "mountPath": "data"}]),
            ),
            "spec.template.spec.containers[0].volumeMounts[0].mountPath",
            "must be an absolute path",
        ),
        (
            lambda d: _first(d).update(
                env=[
                    {
                        "name": "X",
                        "valueFrom": {
                            "fieldRef": {"fieldPath": "metadata.name"},
                            "secretKeyRef": {"name": "s", "key": "k"},
                        },
                    }
                ]
            ),
            "spec.template.spec.containers[0].env[0].valueFrom",
            "exactly one of",
        ),
        (lambda d: d["spec"].update(paused=True), "spec.paused", "does not roll out"),
        (
            lambda d: d["spec"]["selector"].update(matchExpressions=[]),
            "spec.selector.matchExpressions",
            "",
        ),
    ],
)
def test_unmodelled_fields_are_refused_naming_file_and_field(
    tmp_path: Path, change: Any, field: str, why: str
) -> None:
    """A manifest with one field the lab does not model (or a dangling reference).
    1. Load it.
    2. The error names the file, the field's full path and why."""
    path = _edit(tiny_manifest(tmp_path / "m.yml", port=8123), change)
    with pytest.raises(ManifestError) as caught:
        load(path)
    message = str(caught.value)
    assert field in message and str(path) in message and why in message


def test_inert_fields_are_accepted_with_a_note_and_startup_post_start_parsed(
    tmp_path: Path,
) -> None:
    """1. A manifest with resources, securityContext, an emptyDir volume, a startupProbe
    and a postStart hook.
    2. It loads; resources and securityContext are listed in the notes; the startup
    probe and the postStart hook are in the container."""

    def change(d: dict[str, Any]) -> None:
        _pod_spec(d).update(volumes=[{"name": "tmp", "emptyDir": {}}])
        _first(d).update(
            resources={"requests": {"cpu": "100m"}},
            securityContext={"readOnlyRootFilesystem": True},
            volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
            startupProbe={"httpGet": {"path": "/health", "port": "http"}, "failureThreshold": 30},
            lifecycle={"postStart": {"exec": {"command": ["true"]}}},
        )

    manifests = load(_edit(tiny_manifest(tmp_path / "m.yml", port=8123), change))
    notes = "\n".join(manifests.notes)
    assert "containers[0].resources: not modelled" in notes
    assert "containers[0].securityContext: not modelled" in notes
    container = manifests.deployment.template.container
    assert container.startup is not None and container.startup.failure_threshold == 30
    assert container.post_start is not None and container.post_start.command == ("true",)


def test_secret_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    """1. A directory with the app and a Secret whose data is not base64.
    2. Loading it fails naming the Secret's file and `data.token`."""
    tiny_manifest(tmp_path / "app.yml", port=8123)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"token": "not base64!"}}  # fmt: skip
    (tmp_path / "secret.yml").write_text(yaml.safe_dump(secret))
    with pytest.raises(ManifestError, match=r"secret.yml: data.token: is not base64"):
        load(tmp_path)


def test_secret_volume_files_are_decoded_and_mount_paths_mapped(tmp_path: Path) -> None:
    """1. A manifest with a Secret volume at /etc/creds and args naming a file in it.
    2. Mounting writes each decoded key as a file in the pod's volumes/creds; the args'
       path and the env value under /etc/creds point there; other paths stay."""
    from lab.images import resolve

    def change(d: dict[str, Any]) -> None:
        _pod_spec(d).update(volumes=[{"name": "creds", "secret": {"secretName": "db"}}])
        _first(d).update(
            volumeMounts=[{"name": "creds", "mountPath": "/etc/creds/"}],
            args=["--token-file", "/etc/creds/token", "/etc/credsx"],
            env=[{"name": "CREDS", "value": "/etc/creds"}],
        )

    path = _edit(tiny_manifest(tmp_path / "m.yml", port=8123), change)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"token": "czNjcjN0"}}  # fmt: skip
    path.write_text(path.read_text() + "---\n" + yaml.safe_dump(secret))
    container = load(path).deployment.template.container
    image = ImageMap.load(TINY_IMAGES).image("tinyapp")
    launch = resolve(container, image, "p", "127.0.0.9", {}, pod_dir=tmp_path / "pod")
    creds = tmp_path / "pod" / "volumes" / "creds"
    assert (creds / "token").read_text() == "s3cr3t"
    assert launch.argv[-3:] == ("--token-file", str(creds / "token"), "/etc/credsx")
    assert launch.env["CREDS"] == str(creds)
    assert launch.mounts == {"/etc/creds": creds}


def test_kustomization_file_is_noted_not_read(tmp_path: Path) -> None:
    """1. A directory with the app and a kustomization.yaml (no kind, as kustomize allows).
    2. It loads; the note says kustomize is not applied."""
    tiny_manifest(tmp_path / "app.yml", port=8123)
    (tmp_path / "kustomization.yaml").write_text("resources: [app.yml]\nnamePrefix: x-\n")
    manifests = load(tmp_path)
    assert manifests.deployment.name == "tiny"
    assert any("kustomization.yaml: kustomize is not applied" in n for n in manifests.notes)


def test_external_name_service_is_noted_not_refused(tmp_path: Path) -> None:
    """1. A directory with the app and an ExternalName Service for a managed database.
    2. It loads; the note names the Service's file."""
    tiny_manifest(tmp_path / "app.yml", port=8123)
    external = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"}}  # fmt: skip
    (tmp_path / "db.yml").write_text(yaml.safe_dump(external))
    manifests = load(tmp_path)
    assert manifests.service is not None and manifests.service.name == "tiny"
    assert any("db.yml: ExternalName Service not modelled" in n for n in manifests.notes)


def test_kubectl_list_output_is_read_item_by_item(tmp_path: Path) -> None:
    """1. The app's Deployment and Service as one `kind: List` (kubectl get -o yaml).
    2. It loads as if they were separate documents."""
    docs = list(yaml.safe_load_all(tiny_manifest(tmp_path / "app.yml", port=8123).read_text()))
    (tmp_path / "app.yml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, sort_keys=False)
    )
    manifests = load(tmp_path)
    assert manifests.deployment.name == "tiny" and manifests.service is not None
