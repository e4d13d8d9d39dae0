"""Bad input to `lab run` and `lab matrix`, as the real command: one `lab: error:` line
naming the file or option, exit 2, nothing started, in bounded time and memory."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.influx import free_port
from lab.manifest import ManifestError, load, quoted, read_yaml
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.lab.test_lab_run import _kill_leftovers
from tests.support import REPO, VENV_BIN

ERROR_LINE_LIMIT = 1200  # characters: the longest of these errors, with its paths


def _alias_bomb(path: Path, levels: int) -> Path:
    """A Deployment whose `kind` is the last of `levels` lists of ten aliases of the one
    before: a few hundred bytes that stand for 10**levels strings."""
    words = ", ".join(['"xxxxxxxxxx"'] * 10)
    anchors = [f"  a0: &a0 [{words}]"]
    anchors += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    text = "\n".join(
        [
            "x-anchors:",
            *anchors,
            "apiVersion: apps/v1",
            f"kind: *a{levels - 1}",
            "metadata: {name: x}",
        ]
    )
    path.write_text(text + "\n")
    return path


def _lab(*argv: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / "lab"), *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def _refused(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Exit 2 with one `lab: error:` line that names each of `named`; returns the line."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab: error: "), result.stderr[:3000]
    for name in named:
        assert name in lines[0], lines[0][:3000]
    assert len(lines[0]) < ERROR_LINE_LIMIT, lines[0][:3000]
    return lines[0]


def _run(manifests: Path, out: Path, *options: str, images: Path = TINY_IMAGES) -> Any:
    try:
        result, _ = _lab(
            "run", "--manifests", str(manifests), "--image-map", str(images), "--out", str(out),
            *options,
        )  # fmt: skip
    finally:
        _kill_leftovers(out)  # a run that should have been refused but started
    return result


@pytest.mark.parametrize("levels", [7, 8])
def test_alias_bomb_is_refused_in_bounded_time_and_size(tmp_path: Path, levels: int) -> None:
    """An alias bomb of 7 and 8 levels (10**7 and 10**8 strings from under 800 bytes).
    1. `lab run` on it.
    2. Exit 2 within a few seconds, one short error line naming the file and the line of
       the alias; the output dir was never made."""
    bomb = _alias_bomb(tmp_path / "bomb.yml", levels)
    assert bomb.stat().st_size < 800
    out = tmp_path / "out"
    try:
        result, took = _lab(
            "run", "--manifests", str(bomb), "--image-map", str(TINY_IMAGES), "--out", str(out),
            timeout=30,
        )  # fmt: skip
    finally:
        _kill_leftovers(out)
    line = _refused(result, str(bomb), "alias")
    assert len(line) < 400, line
    assert took < 10, f"{took:.1f} s"
    assert not out.exists()


def test_alias_bomb_in_the_image_map_and_a_recursive_alias(tmp_path: Path) -> None:
    """1. An image map that is an alias bomb: refused naming it.
    2. A manifest whose value contains itself through an alias: refused naming it."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=8123)
    bomb = _alias_bomb(tmp_path / "images.yml", 8)
    _refused(_run(manifest, tmp_path / "out", images=bomb), str(bomb), "alias")
    recursive = tmp_path / "recursive.yml"
    recursive.write_text("apiVersion: apps/v1\nkind: &k [*k]\n")
    _refused(_run(recursive, tmp_path / "out"), str(recursive), "contains itself")
    assert not (tmp_path / "out").exists()


def test_values_quoted_in_errors_are_bounded(tmp_path: Path) -> None:
    """A field given a long string, and one given an aliased list well within the
    loader's limit: the error quotes each shortened, with how much more there was."""
    assert quoted("x" * 1000) == repr("x" * 1000)[:200] + "… (802 more characters)"
    nested: list[Any] = ["y" * 50] * 10
    for _ in range(4):
        nested = [nested] * 10  # 10**5 strings, shared: cheap to hold, huge to print
    assert len(quoted(nested)) <= 200 + len("… (9999 more characters)")
    path = tiny_manifest(tmp_path / "m.yml", port=8123)
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0]["spec"]["template"]["spec"]["restartPolicy"] = "z" * 100_000
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(ManifestError, match=r"… \(99802 more characters\)") as caught:
        load(path)
    assert len(str(caught.value)) < 600
    # 1000 strings of 50 characters through two levels of aliases: within the limit.
    words = ", ".join(['"' + "y" * 50 + '"'] * 10)
    level2 = f"[&a1 [{words}], {', '.join(['*a1'] * 9)}]"
    aliased = f"[&a2 {level2}, {', '.join(['*a2'] * 9)}]"
    path.write_text(path.read_text().replace("z" * 100_000, aliased))
    with pytest.raises(ManifestError, match=r"restartPolicy: .*more characters\)") as caught:
        load(path)
    assert len(str(caught.value)) < 600


def _not_utf8(path: Path) -> Path:
    path.write_bytes(b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: caf\xe9}\n")
    return path


def test_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    """A manifest in Latin-1, given as the file, in a directory, and as --update-to:
    each refused naming the file."""
    bad = _not_utf8(tmp_path / "latin1.yml")
    (tmp_path / "good").mkdir()
    good = tiny_manifest(tmp_path / "good" / "m.yml", port=8123)
    out = tmp_path / "out"
    _refused(_run(bad, out), str(bad), "not UTF-8")
    _refused(_run(tmp_path, out), str(bad), "not UTF-8")
    _refused(_run(good, out, "--scenario", "update", "--update-to", str(bad)), str(bad))
    assert not out.exists()


def test_image_map_that_is_not_utf8_or_a_directory(tmp_path: Path) -> None:
    """An image map in Latin-1, and a directory given as the image map: refused naming it."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=8123)
    images = tmp_path / "images.yml"
    images.write_bytes(b"images:\n  tinyapp: {cmd: [caf\xe9]}\n")
    out = tmp_path / "out"
    _refused(_run(manifest, out, images=images), str(images), "not UTF-8")
    folder = tmp_path / "folder.yml"
    folder.mkdir()
    _refused(_run(manifest, out, images=folder), str(folder), "directory")
    assert not out.exists()


def test_directory_named_like_a_manifest(tmp_path: Path) -> None:
    """A manifest directory holding a directory `extra.yml`: refused naming it."""
    directory = tmp_path / "k8s"
    directory.mkdir()
    tiny_manifest(directory / "app.yml", port=8123)
    (directory / "extra.yml").mkdir()
    out = tmp_path / "out"
    _refused(_run(directory, out), str(directory / "extra.yml"), "directory")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("kind: Deployment\nspec: {replicas: " + "9" * 5000 + "}\n", "cannot be read"),
        ("kind: Deployment\nmetadata: {creationTimestamp: 2020-13-45}\n", "cannot be read"),
        ("kind: " + "[" * 500 + "]" * 500 + "\n", "nested more than"),
        ("kind: [unclosed\n", "line 2"),
    ],
)
def test_yaml_the_loader_cannot_build(tmp_path: Path, text: str, what: str) -> None:
    """Values PyYAML's constructors fail on with plain Python errors, nesting past the
    limit, and a syntax error: each one line naming the file."""
    path = tmp_path / "m.yml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=what) as caught:
        read_yaml(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def _with_memory(path: Path, memory: str) -> Path:
    docs = list(yaml.safe_load_all(path.read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"memory": memory}}
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_replicas_past_the_pod_addresses_are_refused(tmp_path: Path) -> None:
    """1. `replicas: 10000` in the manifest (rollout-restart): refused naming the file,
       the pods a rollout holds at once, the 253 addresses and the most that fit (126).
    2. `--scenario scale --to 10000`: refused naming --to.
    3. `--replicas 200`: a rollout of 200 holds 400 pods: refused.
    Nothing started: no output dir."""
    out = tmp_path / "out"
    big = tiny_manifest(tmp_path / "big.yml", port=8123, replicas=10000)
    line = _refused(_run(big, out), str(big), "spec.replicas 10000", "20000 pods", "253")
    assert "at most 126 replicas fit" in line
    small = tiny_manifest(tmp_path / "small.yml", port=8123, replicas=2)
    _refused(_run(small, out, "--scenario", "scale", "--to", "10000"), "--to 10000", "253")
    _refused(_run(small, out, "--replicas", "200"), "--replicas 200", "400 pods")
    assert not out.exists()


def test_replicas_past_this_machines_memory_are_refused(tmp_path: Path) -> None:
    """A Deployment of 2 replicas whose container requests 100 TiB of memory each.
    1. `lab run` and `lab run --scenario scale --to 3`.
    2. Each refused naming the requested memory and MemAvailable; nothing started."""
    out = tmp_path / "out"
    huge = _with_memory(tiny_manifest(tmp_path / "m.yml", port=8123, replicas=2), "100Ti")
    line = _refused(_run(huge, out), str(huge), "requests.memory", "MemAvailable")
    assert "at most 0 replicas fit" in line
    _refused(_run(huge, out, "--scenario", "scale", "--to", "3"), "--to 3", "MemAvailable")
    assert not out.exists()


def test_update_to_a_template_that_needs_more_memory(tmp_path: Path) -> None:
    """--scenario update whose new template requests 100 TiB: the new pods' memory is
    counted (the old template requests nothing): refused before anything starts."""
    out = tmp_path / "out"
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    old = tiny_manifest(tmp_path / "v1" / "m.yml", port=8123, replicas=1)
    new = _with_memory(tiny_manifest(tmp_path / "v2" / "m.yml", port=8123), "100Ti")
    result = _run(old, out, "--scenario", "update", "--update-to", str(new.parent))
    _refused(result, "MemAvailable", "requests.memory")
    assert not out.exists()


def test_matrix_refuses_replicas_past_the_memory_before_the_first_run(tmp_path: Path) -> None:
    """`lab matrix --manifests-dir D --versions v1` where v1's container requests
    100 TiB: refused before any experiment starts (no output dir)."""
    root = tmp_path / "k8s"
    (root / "v1").mkdir(parents=True)
    _with_memory(tiny_manifest(root / "v1" / "m.yml", port=8123), "100Ti")
    out = tmp_path / "out"
    result, _ = _lab(
        "matrix", "--manifests-dir", str(root), "--versions", "v1", "--scenarios",
        "scale-up", "--image-map", str(TINY_IMAGES), "--out", str(out), "--quiet",
    )  # fmt: skip
    _refused(result, "MemAvailable")
    assert not out.exists()


def test_matrix_refuses_a_version_that_is_not_utf8(tmp_path: Path) -> None:
    """`lab matrix` whose v1 manifest is Latin-1: refused naming it before anything runs."""
    root = tmp_path / "k8s"
    (root / "v1").mkdir(parents=True)
    bad = _not_utf8(root / "v1" / "m.yml")
    out = tmp_path / "out"
    result, _ = _lab(
        "matrix", "--manifests-dir", str(root), "--versions", "v1", "--quick",
        "--image-map", str(TINY_IMAGES), "--out", str(out), "--quiet",
    )  # fmt: skip
    _refused(result, str(bad), "not UTF-8")
    assert not out.exists()


def test_an_out_on_a_full_disk_is_refused(tmp_path: Path) -> None:
    """1. --out on a 64 KiB tmpfs filled to the last block. 2. One `lab: error:` line
    naming --out and the full disk, exit 2, no traceback, nothing started."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "out"
        out.mkdir()
        with contextlib.suppress(OSError), (disk / "fill").open("wb") as fill:
            while True:
                fill.write(b"\0" * 4096)
                fill.flush()
        manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=READY_PROBE)
        line = _refused(_run(manifest, out), "--out", "No space left on device")
        assert str(out) in line
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
