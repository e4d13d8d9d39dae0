"""`make image`: build deploy/Dockerfile with the Docker Engine, through its API.

The Dockerfile's base is `python:3.11-slim-bookworm` (its `ARG PYTHON_IMAGE`). Where that
image is present or can be pulled, it is used unchanged. Where it cannot (no route to
Docker Hub), a stand-in is made once from Debian's own packages: `debootstrap
--variant=minbase bookworm` with python3, pip, venv and passwd, imported into the engine
as STANDIN_BASE and passed as PYTHON_IMAGE. The stand-in is cached: an engine that holds
it never rebuilds it (--rebuild-base does).

The stand-in trusts what this machine trusts: extra CA certificates of the host
(/usr/local/share/ca-certificates, e.g. of an egress proxy) are added to its bundle, and
PIP_CERT points pip at that bundle, so `pip install` in the build stage reaches the index
the host reaches.

The build uses the engine's own builder (no `# syntax=` line, no frontend image) with the
repository root as context, filtered by .dockerignore.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors

from lab import engine_setup

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
IMAGE_TAG = "calc:latest"
STANDIN_BASE = "graceful-calc/python-base:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python3-venv: the Dockerfile's build stage makes a venv; ca-certificates: pip's TLS.
STANDIN_PACKAGES = ("python3", "python3-pip", "python3-venv", "passwd", "ca-certificates")
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")
# Seconds any one Engine API call may stay silent (a build step can be quiet for long).
API_TIMEOUT = 900

Log = Callable[[str], None]


class ImageBuildError(Exception):
    """The image (or its stand-in base) could not be built; the message says which step."""


def default_base() -> str:
    """The Dockerfile's own `ARG PYTHON_IMAGE=` default, so it is written down once."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    if not match:
        raise ImageBuildError(f"{DOCKERFILE}: no `ARG PYTHON_IMAGE=<default>` line")
    return match.group(1)


def client(timeout: float = API_TIMEOUT) -> docker.DockerClient:
    """A client for the engine at DOCKER_HOST (or the default socket), checked to answer."""
    # The standard library's ping first: it closes its socket when nothing listens.
    if not engine_setup.ping():
        raise ImageBuildError(
            "no Docker engine answers: run `make system-deps` (root or sudo) to start one"
        )
    try:
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"cannot use the Docker engine: {exc}") from exc


def has_image(engine: docker.DockerClient, name: str) -> bool:
    try:
        engine.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


@contextmanager
def _step(log: Log, what: str) -> Iterator[None]:
    start = time.monotonic()
    log(f"{what} ...")
    yield
    log(f"{what}: {time.monotonic() - start:.1f} s")


def choose_base(engine: docker.DockerClient, log: Log, rebuild_base: bool = False) -> str:
    """The default base when the engine has it or can pull it, else the stand-in."""
    base = default_base()
    if has_image(engine, base):
        log(f"base {base}: present")
        return base
    repository, _, tag = base.partition(":")
    try:
        with _step(log, f"pull {base}"):
            engine.images.pull(repository, tag=tag or "latest")
    except docker.errors.APIError as exc:
        log(f"cannot pull {base} ({exc.explanation or exc}): using the stand-in {STANDIN_BASE}")
    else:
        return base
    ensure_standin(engine, log, rebuild=rebuild_base)
    return STANDIN_BASE


def ensure_standin(engine: docker.DockerClient, log: Log, rebuild: bool = False) -> None:
    """Make STANDIN_BASE unless the engine holds it (and no rebuild is asked for)."""
    if not rebuild and has_image(engine, STANDIN_BASE):
        log(f"stand-in base {STANDIN_BASE}: present (cached)")
        return
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ImageBuildError(
            "debootstrap not found: run `make system-deps` (installs it with apt-get)"
        )
    with tempfile.TemporaryDirectory(prefix="calc-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        with _step(log, f"debootstrap {SUITE} ({', '.join(STANDIN_PACKAGES)})"):
            _run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(STANDIN_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    MIRROR,
                ],
                "debootstrap",
            )
        _trust_host_cas(rootfs, log)
        _slim(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        with _step(log, f"import {STANDIN_BASE}"):
            _run(
                ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
                "tar of the stand-in root",
            )
            repository, _, tag = STANDIN_BASE.partition(":")
            engine.api.import_image_from_file(
                str(tarball),
                repository=repository,
                tag=tag,
                changes=[
                    "ENV LANG=C.UTF-8",
                    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                    'CMD ["python3"]',
                ],
            )
    if not has_image(engine, STANDIN_BASE):
        raise ImageBuildError(f"the engine has no {STANDIN_BASE} after the import")


def _trust_host_cas(rootfs: Path, log: Log) -> None:
    extra = sorted(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []
    if not extra:
        return
    target = rootfs / HOST_EXTRA_CAS.relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    for cert in extra:
        shutil.copy2(cert, target / cert.name)
    _run(["chroot", str(rootfs), "update-ca-certificates"], "update-ca-certificates")
    log(f"stand-in trusts the host's extra CAs: {', '.join(c.name for c in extra)}")


def _slim(rootfs: Path) -> None:
    """Drop what only the bootstrap needed: downloaded packages and the apt lists."""
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def build(engine: docker.DockerClient, base: str, tag: str, log: Log) -> str:
    """Build deploy/Dockerfile as `tag` on `base`; returns the image id."""
    with _step(log, f"build {tag} on {base}"):
        chunks: Iterator[dict[str, Any]] = engine.api.build(
            path=str(REPO),
            dockerfile=str(DOCKERFILE.relative_to(REPO)),
            tag=tag,
            buildargs={"PYTHON_IMAGE": base},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in chunks:
            if "error" in chunk:
                raise ImageBuildError(f"build of {tag} failed: {chunk['error'].strip()}")
            text = chunk.get("stream", "").rstrip()
            if text:
                log(text)
    image_id = engine.images.get(tag).id
    if image_id is None:
        raise ImageBuildError(f"the engine has no {tag} after the build")
    return image_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.image_build",
        description="Build deploy/Dockerfile with the Docker Engine (its API). The base is "
        "the Dockerfile's default when present or pullable, else a stand-in made with "
        f"debootstrap from Debian's packages ({STANDIN_BASE}, made once and cached).",
    )
    parser.add_argument("--tag", default=IMAGE_TAG, help=f"image tag (default {IMAGE_TAG})")
    parser.add_argument(
        "--python-image", help="base image to build on (default: as above), e.g. a local one"
    )
    parser.add_argument(
        "--rebuild-base", action="store_true", help="remake the stand-in base even if present"
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        engine = client()
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        base = args.python_image or choose_base(engine, log, rebuild_base=args.rebuild_base)
        image_id = build(engine, base, args.tag, log)
    except (ImageBuildError, docker.errors.DockerException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    log(f"built {args.tag} ({image_id[:19]}) on {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
