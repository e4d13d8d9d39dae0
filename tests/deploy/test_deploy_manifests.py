"""The Kubernetes manifests: schema-valid, one change per version as the talk made them,
and the settings each version's row in DESIGN.md names."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from calc.config import resolve
from calc.service import app_phase_limits, shutdown_config
from graceful import budget_problems
from tests.deploy.deploy_helpers import (
    K8S,
    VERSIONS,
    by_kind,
    calc_container,
    changed_paths,
    env_of,
    load_docs,
    manifest_leaves,
)
from tests.support import REPO

D = "Deployment/calc:"
POD = D + "spec.template.spec"
C = POD + ".containers[calc]"
PROFILE = C + ".env[CALC_PROFILE]"

# What each version changes relative to the one before (DESIGN.md section 1, and issue 3
# for v10). A prefix covers every field below it.
EXPECTED_CHANGES: dict[str, set[str]] = {
    "v2": {D + "spec.strategy", C + ".readinessProbe", C + ".livenessProbe", PROFILE},
    "v3": {C + ".command", PROFILE},
    "v4": {PROFILE},  # drain off lives in the profile
    "v5": {C + ".lifecycle.preStop", PROFILE},
    "v6": {C + ".env[INFLUXDB_BASE_URL]", PROFILE},
    "v7": {PROFILE},
    "v8": {PROFILE},
    "v9": {PROFILE},
    "v10": {
        C + ".readinessProbe.httpGet.path",
        C + ".lifecycle.preStop",
        POD + ".terminationGracePeriodSeconds",
        POD + ".securityContext",
        C + ".securityContext",
        C + ".resources",
        C + ".volumeMounts",
        POD + ".volumes",
        C + ".env[CALC_GRACE_PERIOD]",
        PROFILE,
        "PodDisruptionBudget/calc:",
    },
}

EXPECTED_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "calc", "labels": {"app": "calc"}},
    "spec": {
        "type": "LoadBalancer",
        "selector": {"app": "calc"},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
    },
}

OPLOG = {f"v{n}": "off" for n in range(1, 6)} | {
    "v6": "task",
    "v7": "task-graceful",
    "v8": "batch",
    "v9": "batch-graceful",
    "v10": "batch-graceful",
}


def covers(prefix: str, path: str) -> bool:
    if path == prefix:
        return True
    if not path.startswith(prefix):
        return False
    return prefix.endswith(":") or path[len(prefix)] in ".["


def all_manifests() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in K8S.rglob("*.yml"))


def test_one_directory_per_version_and_nothing_else() -> None:
    """Scenario: 1. list deploy/k8s; 2. it holds exactly v1..v10 (each with calc.yml) and
    influxdb.yml; 3. the Makefile's CALC_VERSIONS names the same versions in order."""
    dirs = sorted((p.name for p in K8S.iterdir() if p.is_dir()), key=lambda v: int(v[1:]))
    assert dirs == VERSIONS
    assert all((K8S / v / "calc.yml").is_file() for v in VERSIONS)
    assert {p.name for p in K8S.iterdir() if p.is_file()} == {"influxdb.yml"}
    makefile = (REPO / "mk" / "deploy.mk").read_text()
    match = re.search(r"^CALC_VERSIONS := (.+)$", makefile, re.MULTILINE)
    assert match is not None
    assert match.group(1).split() == VERSIONS


@pytest.mark.parametrize("path", all_manifests())
def test_manifest_validates_against_the_kubernetes_schema(path: str) -> None:
    """Scenario: 1. load every document of the file; 2. validate each, strictly (unknown
    fields are errors), against the newest schema bundled with kubernetes-validate
    (offline: the schemas ship with the package)."""
    docs = load_docs(REPO / path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_validation_needs_no_network() -> None:
    """Scenario: 1. in a new network namespace with no interfaces up (`unshare -rn`; skipped,
    with unshare's reason, where namespaces are not allowed: a container without
    CAP_SYS_ADMIN or with user namespaces off; `make test` then fails, as the skip is not
    on tests/skip-allowlist.txt); 2. the kubernetes-validate CLI validates every manifest
    strictly from its bundled schemas."""
    unshare = shutil.which("unshare") or "unshare"
    try:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("unshare not installed (util-linux; `make test-deps`)")
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [unshare, "-rn", str(cli), "--strict", "--quiet", *all_manifests()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_rejects_a_wrong_field() -> None:
    """Scenario: 1. take v10's Deployment; 2. misspell a field; 3. strict validation fails
    (so the test above would catch drift from the schema, not pass vacuously)."""
    deployment = by_kind(load_docs(K8S / "v10" / "calc.yml"))["Deployment"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("version", VERSIONS[1:])
def test_each_version_changes_exactly_what_its_row_names(version: str) -> None:
    """Scenario: 1. flatten this version's and the previous version's manifests into
    field paths; 2. collect the paths whose values differ; 3. every changed path falls
    under a field the version's row names, and every named field did change."""
    previous = VERSIONS[VERSIONS.index(version) - 1]
    changed = changed_paths(
        manifest_leaves(K8S / previous / "calc.yml"), manifest_leaves(K8S / version / "calc.yml")
    )
    expected = EXPECTED_CHANGES[version]
    unexpected = sorted(p for p in changed if not any(covers(e, p) for e in expected))
    missing = sorted(e for e in expected if not any(covers(e, p) for p in changed))
    assert (unexpected, missing) == ([], []), f"{previous} -> {version}"


@pytest.mark.parametrize("version", VERSIONS)
def test_common_settings_of_every_version(version: str) -> None:
    """Scenario: 1. load the version's manifest; 2. the Deployment runs 13 replicas of
    image calc:latest (the Makefile swaps the tag in) with port 4000 named http and
    CALC_PROFILE set to the version; 3. the Service is the original's LoadBalancer."""
    docs = load_docs(K8S / version / "calc.yml")
    kinds = by_kind(docs)
    deployment = kinds["Deployment"]
    assert deployment["metadata"]["name"] == "calc"
    assert deployment["spec"]["replicas"] == 13
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "calc"}}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "calc"}
    container = calc_container(docs)
    assert container["image"] == "calc:latest"
    assert container["ports"] == [{"name": "http", "containerPort": 4000, "protocol": "TCP"}]
    assert env_of(container)["CALC_PROFILE"] == version
    assert kinds["Service"] == EXPECTED_SERVICE
    # k8s-deploy substitutes the image with sed: exactly one line may match.
    text = (K8S / version / "calc.yml").read_text()
    assert len(re.findall(r"^\s*image: calc:latest$", text, re.MULTILINE)) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_the_service_reads_the_version_the_talk_describes(version: str) -> None:
    """Scenario: 1. resolve calc's config from the container's environment, as the
    service does at start; 2. the operation log mode, drain and readiness flip are the
    ones the version's row describes."""
    config = resolve(None, env_of(calc_container(load_docs(K8S / version / "calc.yml"))), {})
    assert config.profile == version
    assert config.oplog == OPLOG[version]
    assert config.drain is (version != "v4")
    assert config.readiness_flip is (version == "v10")
    if OPLOG[version] != "off":
        assert config.influxdb_base_url == "http://influxdb:8086"


def probe(path: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": 20,
        "periodSeconds": 5,
    }


def test_v1_and_v2_start_through_the_shell_wrapper_and_v3_on_exec() -> None:
    """Scenario: 1. v1 and v2 run /app/start.sh (the shell stays PID 1); 2. from v3 on no
    command or args: the image's exec-form CMD runs, so SIGTERM reaches calc."""
    for version in VERSIONS:
        container = calc_container(load_docs(K8S / version / "calc.yml"))
        if version in ("v1", "v2"):
            assert container["command"] == ["/app/start.sh"]
        else:
            assert "command" not in container
        assert "args" not in container


def test_v1_is_minimal() -> None:
    """Scenario: 1. load v1; 2. no strategy, probes, lifecycle or grace period set."""
    docs = load_docs(K8S / "v1" / "calc.yml")
    assert "strategy" not in by_kind(docs)["Deployment"]["spec"]
    container = calc_container(docs)
    assert not {"readinessProbe", "livenessProbe", "lifecycle"} & container.keys()
    assert "terminationGracePeriodSeconds" not in docs[0]["spec"]["template"]["spec"]


def test_v2_probes_and_rolling_update() -> None:
    """Scenario: 1. load v2; 2. readiness /health after 20 s every 5 s, liveness /health;
    3. RollingUpdate with maxSurge 3 and maxUnavailable 0."""
    docs = load_docs(K8S / "v2" / "calc.yml")
    assert by_kind(docs)["Deployment"]["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0},
    }
    container = calc_container(docs)
    assert container["readinessProbe"] == probe("/health")
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_v5_to_v9_sleep_5_s_in_pre_stop() -> None:
    """Scenario: 1. load v5..v9; 2. each has preStop exec `sleep 5` (works on any
    Kubernetes version; needs a sleep binary in the image, which the slim base has)."""
    for version in ("v5", "v6", "v7", "v8", "v9"):
        container = calc_container(load_docs(K8S / version / "calc.yml"))
        assert container["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}


def test_v10_goes_beyond_the_talk() -> None:
    """Scenario: 1. load v10; 2. readiness on /ready, preStop sleep action of 5 s;
    3. terminationGracePeriodSeconds = preStop sleep + CALC_GRACE_PERIOD (the time the
    service budgets from SIGTERM); 4. requests and a memory limit; 5. non-root,
    read-only root filesystem, no privilege escalation; 6. a PodDisruptionBudget for calc."""
    docs = load_docs(K8S / "v10" / "calc.yml")
    kinds = by_kind(docs)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = calc_container(docs)
    assert container["readinessProbe"] == probe("/ready")
    assert container["livenessProbe"] == probe("/health")
    pre_stop = container["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": 5}}
    grace = float(env_of(container)["CALC_GRACE_PERIOD"])
    assert pod["terminationGracePeriodSeconds"] == pre_stop["sleep"]["seconds"] + grace
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["metadata"]["name"] == "calc"
    assert pdb["spec"]["selector"] == {"matchLabels": {"app": "calc"}}


def test_v10_grace_period_is_sized_from_the_shutdown_budget() -> None:
    """Scenario: 1. resolve calc's config from v10's container environment; 2. the
    service's own budget check finds that every shutdown phase (delay, drain, flush) fits
    in CALC_GRACE_PERIOD minus its safety margin; 3. with less than 5 s to spare, so a
    change of the service's limits shows up here as a manifest to resize."""
    container = calc_container(load_docs(K8S / "v10" / "calc.yml"))
    config = resolve(None, env_of(container), {})
    assert config.budget_check is True
    shutdown = shutdown_config(config)
    phases = app_phase_limits(config)
    assert budget_problems(shutdown, phases) == []
    assert shutdown.drain_timeout is not None
    needed = shutdown.delay_limit() + shutdown.drain_timeout + sum(phases.values())
    spare = config.grace_period - shutdown.safety_margin - needed
    assert 0 <= spare < 5, f"phases need {needed} s of {config.grace_period} s"


def test_influxdb_manifest() -> None:
    """Scenario: 1. load influxdb.yml; 2. a Deployment whose image creates database calc
    (INFLUXDB_DB) and a Service `influxdb` on 8086, the URL the v6+ manifests use."""
    kinds = by_kind(load_docs(K8S / "influxdb.yml"))
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("influxdb:1.")
    assert env_of(container)["INFLUXDB_DB"] == "calc"
    service = kinds["Service"]
    assert service["metadata"]["name"] == "influxdb"
    assert service["spec"]["ports"][0]["port"] == 8086
    assert service["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
