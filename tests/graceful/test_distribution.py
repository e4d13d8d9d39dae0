"""graceful on its own: packages/graceful-asgi builds a wheel of src/graceful that installs
in a clean virtual environment with only what graceful imports, and serves an app there
through `graceful-serve`. The wheel's dependencies come from the package index, held to
the versions in requirements/dev.lock (the tested ones)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from graceful.hypercorn_cli import MISSING
from tests.support import REPO, Processes, wait_until

PACKAGE = REPO / "packages" / "graceful-asgi"

# What graceful imports besides the standard library and itself, and what those need.
ALLOWED = {"graceful-asgi", "uvicorn", "httptools", "click", "h11", "pip", "setuptools"}

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served alone"})
"""


@dataclass
class CleanEnv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
        )


def build_wheel(tmp: Path) -> Path:
    """The wheel, built from a copy of the package and the sources it points at (the
    build writes its litter beside the pyproject), with the dev venv's setuptools."""
    tree = tmp / "tree"
    shutil.copytree(PACKAGE, tree / "packages" / "graceful-asgi")
    shutil.copytree(
        REPO / "src" / "graceful",
        tree / "src" / "graceful",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = tmp / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            ".",
        ],
        cwd=tree / "packages" / "graceful-asgi",
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("graceful_asgi-*.whl")
    return wheel


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CleanEnv]:
    tmp = tmp_path_factory.mktemp("graceful-asgi")
    wheel = build_wheel(tmp)
    env = CleanEnv(tmp / "venv")
    venv.create(env.root, with_pip=True)
    # The lock's versions as constraints (without hashes: pip's hash mode would also want
    # one for the wheel just built).
    pins = re.findall(
        r"^([A-Za-z0-9_.-]+==\S+)", (REPO / "requirements/dev.lock").read_text(), re.M
    )
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    installed = env.run("pip", "install", "--quiet", "-c", str(constraints), str(wheel))
    assert installed.returncode == 0, installed.stderr
    yield env


def test_the_wheel_brings_only_what_graceful_imports(clean_env: CleanEnv) -> None:
    """Scenario: 1. the clean venv with the wheel installed; 2. its packages are graceful-asgi,
    uvicorn and their own dependencies only; 3. graceful imports from the venv, and neither
    calc, the lab nor starlette is there."""
    listed = clean_env.run("pip", "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert names == ALLOWED, names ^ ALLOWED
    probe = clean_env.run(
        "python",
        "-c",
        "import graceful, importlib.util as u; print(graceful.__file__); "
        "print([m for m in ('calc', 'lab', 'starlette') if u.find_spec(m)])",
    )
    where, missing = probe.stdout.splitlines()
    assert where.startswith(str(clean_env.root)), where
    assert missing == "[]"


def test_graceful_serve_from_the_wheel_serves_and_stops(
    clean_env: CleanEnv, processes: Processes, port: int, tmp_path: Path
) -> None:
    """Scenario: 1. a bare ASGI app in an empty directory; 2. the wheel's `graceful-serve`
    serves it: 200 and its body; 3. SIGTERM: exit 0 after the shutdown phases."""
    (tmp_path / "alone.py").write_text(APP)
    process = processes.start(
        [
            str(clean_env.bin / "graceful-serve"),
            "alone:app",
            "--port",
            str(port),
            "--pre-close-delay",
            "0",
            "--quiet-period",
            "0",
        ],
        cwd=tmp_path,
        name="graceful-serve",
    )
    url = f"http://127.0.0.1:{port}/"
    response = wait_until(
        lambda: httpx.get(url, timeout=1), 20, what="the wheel's graceful-serve to answer"
    )
    assert (response.status_code, response.text) == (200, "served alone")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0, processes.output(process)
    assert "Shutdown finished" in processes.output(process)


def test_graceful_hypercorn_without_its_extra_names_the_fix(clean_env: CleanEnv) -> None:
    """Scenario: 1. the clean venv has no hypercorn (the extra was not asked for);
    2. `graceful-hypercorn` exits 2 with one line naming the extra to install, no
    traceback."""
    result = clean_env.run("graceful-hypercorn", "app:app")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [MISSING], result.stderr


def test_the_package_keeps_the_roots_version_ranges() -> None:
    """Scenario: 1. read both pyproject files; 2. uvicorn's range and the gunicorn and
    hypercorn extras are the same in graceful-asgi as in graceful-calc, the distribution
    the tests run."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    alone = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]

    def uvicorn_range(deps: list[str]) -> str:
        (dep,) = [d for d in deps if d.startswith("uvicorn")]
        return dep.split(">", 1)[1]

    assert uvicorn_range(alone["dependencies"]) == uvicorn_range(root["dependencies"])
    for extra in ("gunicorn", "hypercorn"):
        assert alone["optional-dependencies"][extra] == root["optional-dependencies"][extra]
    assert alone["version"] == root["version"]
