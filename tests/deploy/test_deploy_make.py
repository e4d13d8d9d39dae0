"""The Makefile targets of the original demo, run as a user runs them: `make <target>`
against real servers (calc, influxd, k6) on loopback, and the failure messages of the
targets whose tools or arguments are missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from lab.influx import free_port
from tests.deploy.deploy_helpers import (
    alive,
    descendants,
    kill_pids,
    make_command,
    make_env,
    run_make,
    scratch_copy,
)
from tests.support import REPO, Processes, http_ok, wait_until

# Every target of the original Makefile (and the issue), plus the ones we add.
ORIGINAL_TARGETS = [
    "help",
    "set-calc-url",
    "local-server",
    "local-test",
    "docker-local-server",
    "docker-push-image",
    "do-create-registry",
    "do-create-k8s-cluster",
    "do-add-registry-to-k8s-cluster",
    "do-create-cert",
    "do-create-load-test-vm",
    "do-load-test",
    "do-delete",
    "k8s-deploy",
    "k8s-redeploy",
    "k8s-scale",
    "k8s-test",
    "k8s-logs",
    "k8s-delete",
    "influxdb-local",
    "influxdb-k8s-deploy",
    "influxdb-k8s-port-forward",
    "influxdb-count",
    "influxdb-clear",
    "load-test",
]
DEPLOY_MK = REPO / "mk" / "deploy.mk"


def start_make(
    processes: Processes, *args: str, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A long-running target in its own session; the fixture kills its group at the end."""
    return processes.start(make_command(*args), env=make_env(env), name=name, cwd=REPO)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    """Ctrl-C as in a terminal: the signal goes to the whole process group."""
    os.killpg(process.pid, sig)
    return process.wait(20)


@pytest.fixture
def local_calc(processes: Processes, tmp_path: Path) -> Iterator[str]:
    """`make local-server` on a free port; yields its URL once /health answers. The
    default profile logs operations to a file in the working dir: send it to tmp_path."""
    port = free_port()
    make = start_make(
        processes,
        "local-server",
        f"PORT={port}",
        name="local-server",
        env={"CALC_OPLOG_FILE": str(tmp_path / "operations.lp")},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/health"), 30, what="make local-server")
    yield url
    stop(make)
    assert not http_ok(f"{url}/health")


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """The Makefiles and manifests in a scratch dir, so .calc-url is the test's own."""
    return scratch_copy(tmp_path / "repo")


def test_help_lists_every_target() -> None:
    """Scenario: 1. `make help`; 2. every target of the original demo is listed, each
    with a description."""
    result = run_make("help")
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    listed = {}
    for line in plain.splitlines():
        target, _, description = line.strip().partition(" ")
        listed[target] = description.strip()
    missing = [t for t in ORIGINAL_TARGETS if not listed.get(t)]
    assert missing == []


def test_every_deploy_target_has_a_description() -> None:
    """Scenario: 1. read every rule in mk/deploy.mk; 2. each names a `## description` on
    its rule line (what `make help` shows); 3. each is declared .PHONY."""
    text = DEPLOY_MK.read_text()
    rules = re.findall(r"^([a-z0-9][a-z0-9-]*):(?!=)(.*)$", text, re.MULTILINE)
    assert rules
    undocumented = [name for name, rest in rules if "## " not in rest]
    assert undocumented == []
    phony = set(" ".join(re.findall(r"^\.PHONY:((?:.*\\\n)*.*)$", text, re.M)).split()) - {"\\"}
    assert {name for name, _ in rules} <= phony


def test_local_server_and_local_test(local_calc: str) -> None:
    """Scenario: 1. `make local-server PORT=p` (fixture); 2. `make local-test` against it;
    3. the answer is {"result": 10}; 4. Ctrl-C stops the server."""
    result = run_make("local-test", f"CALC_URL={local_calc}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"result": 10}


def test_set_calc_url_feeds_k8s_test(scratch_repo: Path, local_calc: str) -> None:
    """Scenario: 1. in a scratch copy of the Makefiles (so the repo's .calc-url is left
    alone) `make k8s-test` fails: no URL yet; 2. `make set-calc-url url=<local calc>`
    writes .calc-url; 3. `make k8s-test` now reads it and gets {"result": 10}."""
    before = run_make("k8s-test", cwd=scratch_repo)
    assert before.returncode != 0
    assert "make set-calc-url" in before.stderr
    assert run_make("set-calc-url", f"url={local_calc}", cwd=scratch_repo).returncode == 0
    assert (scratch_repo / ".calc-url").read_text().strip() == local_calc
    result = run_make("k8s-test", cwd=scratch_repo)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"result": 10}


def test_influxdb_local_count_and_clear(processes: Processes, tmp_path: Path) -> None:
    """Scenario: 1. `make influxdb-local` on a free port and a scratch data dir; 2. wait
    for /ping; 3. write 3 operation points into database calc; 4. `make influxdb-count`
    prints 3; 5. `make influxdb-clear`, then `make influxdb-count` prints 0; 6. Ctrl-C
    stops make and its influxd."""
    port = free_port()
    data_dir = tmp_path / "influx"
    make = start_make(
        processes,
        "influxdb-local",
        f"INFLUX_PORT={port}",
        f"INFLUX_DATA_DIR={data_dir}",
        name="influxdb-local",
    )
    url = f"http://127.0.0.1:{port}"
    # influxd runs in a session of its own (lab.influx starts it so): remember it, so it
    # is stopped even if this test fails before the Ctrl-C below.
    influxd: list[int] = []
    try:
        wait_until(
            lambda: httpx.get(f"{url}/ping", timeout=0.5).status_code == 204,
            30,
            what="influxd /ping",
        )
        influxd = [
            p for p in descendants(make.pid) if "influxd" in Path(f"/proc/{p}/comm").read_text()
        ]
        assert influxd
        # lab.influx creates the database right after /ping answers.
        wait_until(lambda: "calc" in json.dumps(query(url, "SHOW DATABASES")), 10, what="db")
        lines = "\n".join(
            f'operation,name=sum,pod=test id="r{i}",numbers=4.0,result=10.0 {1_000_000_000 + i}'
            for i in range(3)
        )
        write = httpx.post(f"{url}/write", params={"db": "calc"}, content=lines, timeout=5)
        assert write.status_code == 204, write.text

        def count() -> int:
            result = run_make("influxdb-count", f"INFLUX_PORT={port}")
            assert result.returncode == 0, result.stderr
            return int(result.stdout.strip().splitlines()[-1])

        assert count() == 3
        cleared = run_make("influxdb-clear", f"INFLUX_PORT={port}")
        assert cleared.returncode == 0, cleared.stderr
        assert count() == 0

        stop(make)
        wait_until(lambda: not any(alive(p) for p in influxd), 15, what="influxd to stop")
    finally:
        kill_pids(influxd, "influxd")


def query(url: str, q: str) -> object:
    return httpx.post(f"{url}/query", params={"q": q}, timeout=5).json()


def test_influxdb_count_names_the_unreachable_server() -> None:
    """Scenario: 1. `make influxdb-count` against a port nothing listens on; 2. it fails
    and the message names the InfluxDB URL it tried."""
    port = free_port()
    result = run_make("influxdb-count", f"INFLUX_PORT={port}")
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr


def test_load_test_against_local_server(local_calc: str, tmp_path: Path) -> None:
    """Scenario: 1. `make local-server` (fixture); 2. `make load-test VUS=5
    DURATION=3s` against it; 3. k6 exits 0, made requests, and none failed."""
    summary = tmp_path / "summary.json"
    result = run_make(
        "load-test",
        f"CALC_URL={local_calc}",
        "VUS=5",
        "DURATION=3s",
        f"K6_ARGS=--summary-export={summary}",
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["http_reqs"]["count"] > 0
    # A rate metric: "passes" counts the requests that failed.
    assert metrics["http_req_failed"]["passes"] == 0


@pytest.mark.parametrize(
    ("args", "tool"),
    [
        (["k8s-deploy", "v=0.1.0", "version=v3"], "kubectl"),
        (["k8s-redeploy"], "kubectl"),
        (["k8s-scale", "replicas=5"], "kubectl"),
        (["k8s-logs"], "kubectl"),
        (["k8s-delete"], "kubectl"),
        (["influxdb-k8s-deploy"], "kubectl"),
        (["influxdb-k8s-port-forward"], "kubectl"),
        (["docker-local-server"], "docker"),
        (["docker-push-image", "v=0.1.0", "REGISTRY=registry.example.com/me"], "docker"),
        (["do-create-registry", "name=my-registry"], "doctl"),
        (["do-create-k8s-cluster"], "doctl"),
        (["do-create-cert", "domain=calc.example.com"], "doctl"),
        (["do-create-load-test-vm"], "doctl"),
        (["do-delete"], "doctl"),
        (["load-test", "K6=k6"], "k6"),
        (["influxdb-local"], "influxd"),
        (["k8s-test", "CALC_URL=http://127.0.0.1:9"], "curl"),
    ],
)
def test_missing_tool_is_named(args: list[str], tool: str) -> None:
    """Scenario: 1. run the target with a PATH where no tool is found; 2. it fails before
    doing anything, with a message that names the missing tool."""
    result = run_make(*args, env={"PATH": "/nonexistent"})
    assert result.returncode != 0
    assert f"error: {tool} not found" in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_without_a_cluster_is_named(tmp_path: Path) -> None:
    """Scenario: 1. kubectl installed but its kubeconfig names no cluster; 2. `make
    k8s-deploy` fails and says kubectl must be pointed at a cluster."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = run_make("k8s-deploy", "v=0.1.0", "version=v5", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode != 0
    assert "kubectl has no current context" in result.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker client not installed")
def test_docker_without_an_engine_is_named(tmp_path: Path) -> None:
    """Scenario: 1. docker client installed, pointed at a socket where no engine runs;
    2. `make docker-push-image` fails and says docker cannot reach an engine."""
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = run_make("docker-push-image", "v=0.1.0", "REGISTRY=registry.example.com/me", env=env)
    assert result.returncode != 0
    assert "docker cannot reach a Docker engine" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["k8s-deploy", "v=0.1.0", "version=v99"], "unknown version 'v99'"),
        (["k8s-deploy", "version=v3"], "Specify the image tag"),
        (["k8s-manifest", "v=0.1.0", "version=latest"], "unknown version 'latest'"),
        (["k8s-scale"], "Specify the number of replicas"),
        (["k8s-scale", "replicas=five"], "Specify the number of replicas"),
        (["docker-push-image"], "Specify the image tag"),
        (["docker-push-image", "v=0.1.0", "REGISTRY="], "No registry"),
        (["do-create-registry"], "Specify a unique registry name"),
        (["do-create-cert"], "Specify the domain"),
        (["set-calc-url"], "Specify url"),
        (["load-test", "K6_SCRIPT=deploy/k6/missing.js"], "no k6 script"),
    ],
)
def test_bad_input_fails_clearly(args: list[str], message: str) -> None:
    """Scenario: 1. run the target with a missing or wrong argument (PATH without
    kubectl/docker/doctl, so nothing could reach a real cluster); 2. it fails with a
    message saying what to pass."""
    result = run_make(*args, env={"PATH": "/nonexistent"})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("version", ["v1", "v10"])
def test_k8s_manifest_renders_the_image_tag(version: str) -> None:
    """Scenario: 1. `make k8s-manifest version=vN v=0.2.0 REGISTRY=...` (what k8s-deploy
    pipes into kubectl apply); 2. the output is the version's manifest with the image
    swapped for REGISTRY/calc:0.2.0 and nothing else changed."""
    result = run_make(
        "k8s-manifest", f"version={version}", "v=0.2.0", "REGISTRY=registry.example.com/me"
    )
    assert result.returncode == 0, result.stderr
    rendered = result.stdout
    original = (REPO / "deploy" / "k8s" / version / "calc.yml").read_text()
    expected = original.replace("image: calc:latest", "image: registry.example.com/me/calc:0.2.0")
    assert rendered == "---\n" + expected
    for doc in yaml.safe_load_all(rendered):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


FAKE_KUBECTL = """\
#!{python}
# A recording stand-in for kubectl: no cluster runs here. It logs each call (and what
# `apply -f -` reads) and answers the two questions the targets ask a cluster.
import json, os, sys
args = sys.argv[1:]
entry = {{"args": args}}
if args[:3] == ["apply", "-f", "-"]:
    entry["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if args[:2] == ["config", "current-context"]:
    print("fake-cluster")
elif args[:2] == ["get", "service/calc"]:
    print("203.0.113.7", end="")
"""


def test_k8s_targets_drive_kubectl(scratch_repo: Path, tmp_path: Path) -> None:
    """Scenario (no cluster here, so kubectl is a recording stand-in): 1. `make
    k8s-deploy v=0.3.0 version=v5` pipes the version's manifests, image swapped, into
    `kubectl apply -f -`, waits for the rollout, and saves the load balancer's address in
    .calc-url; 2. `k8s-redeploy` restarts the rollout; 3. `k8s-scale replicas=5` scales;
    4. `k8s-delete` deletes calc's objects and forgets .calc-url."""
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    log = tmp_path / "kubectl.log"
    env = {"FAKE_KUBECTL_LOG": str(log)}
    common = [f"KUBECTL={kubectl}", "REGISTRY=registry.example.com/me"]

    def calls() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("")
        # Drop the reachability checks every target makes first.
        return [e for e in entries if e["args"][:1] not in (["config"], ["version"])]

    deploy = run_make("k8s-deploy", "v=0.3.0", "version=v5", *common, cwd=scratch_repo, env=env)
    assert deploy.returncode == 0, deploy.stderr
    applied, rollout, service = calls()
    manifest = run_make("k8s-manifest", "v=0.3.0", "version=v5", *common, cwd=scratch_repo)
    assert applied == {"args": ["apply", "-f", "-"], "stdin": manifest.stdout}
    assert "image: registry.example.com/me/calc:0.3.0" in manifest.stdout
    assert rollout["args"][:3] == ["rollout", "status", "deployment/calc"]
    assert service["args"][:2] == ["get", "service/calc"]
    assert (scratch_repo / ".calc-url").read_text().strip() == "http://203.0.113.7"

    assert run_make("k8s-redeploy", *common, cwd=scratch_repo, env=env).returncode == 0
    assert [c["args"][:2] for c in calls()] == [["rollout", "restart"], ["rollout", "status"]]

    assert run_make("k8s-scale", "replicas=5", *common, cwd=scratch_repo, env=env).returncode == 0
    assert calls()[0]["args"] == ["scale", "deployment/calc", "--replicas=5"]

    assert run_make("k8s-delete", *common, cwd=scratch_repo, env=env).returncode == 0
    (delete,) = calls()
    assert delete["args"][:4] == [
        "delete",
        "deployment/calc",
        "service/calc",
        "poddisruptionbudget/calc",
    ]
    assert not (scratch_repo / ".calc-url").exists()
