"""tests/skipcheck.py: with CI_NO_SKIPS=1 a skip not on the allow-list fails the run.
Each test runs pytest on a small test file in a child process, with only that plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

TESTS = """
import pytest

def test_runs():
    pass

def test_skipped_here():
    pytest.skip("no frobnicator")

@pytest.mark.skipif(True, reason="not on this machine")
def test_marked(): pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


def _pytest(
    tmp_path: Path,
    allowlist: str | None,
    tests: str = TESTS,
    no_skips: str = "1",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(tests)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI_NO_SKIPS": no_skips}
    env["CI_SKIP_ALLOWLIST"] = str(tmp_path / "allow.txt")
    if allowlist is not None:
        (tmp_path / "allow.txt").write_text(allowlist)
    argv = [sys.executable, "-m", "pytest", "-p", "tests.skipcheck", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*argv, *extra, "-q", "test_sample.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_skip_not_on_the_list_fails_the_run_and_is_named(tmp_path: Path) -> None:
    """1. Two tests skip (a call to pytest.skip and a skipif mark); one is on the list.
    2. The run fails (exit 1) though no test failed, and names the other with its reason.
    3. The expected failure (xfail) is not taken for a skip."""
    result = _pytest(tmp_path, "# why\ntest_sample.py::test_marked  # not on CI machines\n")
    assert result.returncode == 1, result.stdout
    assert "1 test(s) skipped, not on" in result.stdout
    assert "test_sample.py::test_skipped_here: Skipped: no frobnicator" in result.stdout
    assert "test_sample.py::test_marked:" not in result.stdout
    assert "test_expected_failure:" not in result.stdout


def test_skips_on_workers_are_counted_once_by_the_controller(tmp_path: Path) -> None:
    """`make pytest` runs the suite on several workers (pytest-xdist).
    1. The same file on two workers: one skip on the list, one off it, a module skip.
    2. The run fails, the controller names the test off the list exactly once."""
    result = _pytest(tmp_path, "test_sample.py::test_marked\n", extra=("-n", "2"))
    assert result.returncode == 1, result.stdout
    assert result.stdout.count("test_sample.py::test_skipped_here: Skipped: no frobnicator") == 1
    assert "1 test(s) skipped, not on" in result.stdout
    module_skip = "import pytest\npytest.skip('no engine', allow_module_level=True)\n"
    result = _pytest(tmp_path, "", tests=module_skip, extra=("-n", "2"))
    assert result.returncode != 0, result.stdout
    assert result.stdout.count("test_sample.py: Skipped: no engine") == 1, result.stdout
    passing = _pytest(tmp_path, "*::test_*\n", extra=("-n", "2"))
    assert passing.returncode == 0, passing.stdout


@pytest.mark.parametrize(
    "allowlist", ["test_sample.py::test_skipped_here\ntest_sample.py::test_marked\n", "*::test_*"]
)
def test_skips_on_the_list_pass(tmp_path: Path, allowlist: str) -> None:
    """1. Every skip is on the list, by id or by pattern. 2. The run passes."""
    result = _pytest(tmp_path, allowlist)
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout


def test_without_ci_no_skips_skips_are_only_reported(tmp_path: Path) -> None:
    """1. CI_NO_SKIPS unset (a developer's partial run), an empty list. 2. The run passes."""
    result = _pytest(tmp_path, "", no_skips="0")
    assert result.returncode == 0, result.stdout


def test_a_missing_allowlist_fails_the_run(tmp_path: Path) -> None:
    """1. CI_NO_SKIPS=1 and the list's file does not exist. 2. The run fails, saying so,
    rather than taking every skip (or none) as allowed."""
    result = _pytest(tmp_path, None)
    assert result.returncode == 1
    assert "the allow-list cannot be read" in result.stdout


def test_a_module_skipped_at_collection_counts(tmp_path: Path) -> None:
    """1. A whole module skips at import (pytest.skip(allow_module_level=True)).
    2. The run fails and names the module."""
    module_skip = "import pytest\npytest.skip('no engine', allow_module_level=True)\n"
    result = _pytest(tmp_path, "", tests=module_skip)
    assert result.returncode != 0, result.stdout  # 5 here: no test left to run
    assert "test_sample.py: Skipped: no engine" in result.stdout


def test_a_failure_keeps_its_exit_code(tmp_path: Path) -> None:
    """1. A test fails and another skips off the list. 2. Exit 1, the failure's code."""
    result = _pytest(tmp_path, "", tests="import pytest\ndef test_f(): assert False\n"
                     "def test_s(): pytest.skip('x')\n")  # fmt: skip
    assert result.returncode == 1 and "1 failed" in result.stdout


def test_the_project_allowlist_is_short_and_every_entry_says_why() -> None:
    """The allow-list stays an exception: a few entries, each with a comment."""
    lines = (REPO / "tests" / "skip-allowlist.txt").read_text().splitlines()
    entries = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert len(entries) <= 5
    for i in entries:
        assert "#" in lines[i] or lines[i - 1].startswith("#"), lines[i]
