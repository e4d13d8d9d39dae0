"""No silent skips in CI: with CI_NO_SKIPS=1 (set by `make pytest`), a run that skipped any
test not named on the allow-list fails, and says which tests and why they skipped.

A skipped test checks nothing, so a green run with skips can hide a missing tool or a
missing install step; the allow-list (tests/skip-allowlist.txt, or CI_SKIP_ALLOWLIST)
names the few skips we accept, each with a comment saying why. An entry is a test id or
an fnmatch pattern over test ids (`tests/x.py::test_y[*]`); `#` starts a comment.

tests/conftest.py imports the hooks, so pytest finds them there.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

DEFAULT_ALLOWLIST = Path(__file__).resolve().parent / "skip-allowlist.txt"
# test id -> skip reason, for this pytest run (one run per process)
_SKIPPED: dict[str, str] = {}


def read_allowlist(path: Path) -> list[str]:
    """The patterns of an allow-list file; a missing file is an error, not an empty list."""
    patterns = []
    for line in path.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            patterns.append(entry)
    return patterns


def not_allowed(skipped: dict[str, str], patterns: list[str]) -> dict[str, str]:
    return {
        nodeid: reason
        for nodeid, reason in skipped.items()
        if not any(fnmatch.fnmatchcase(nodeid, p) for p in patterns)
    }


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    return str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""


def pytest_sessionstart(session: pytest.Session) -> None:
    _SKIPPED.clear()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at collection
        _SKIPPED[report.nodeid] = _reason(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # An expected failure is reported as skipped too; it ran, so it is not a skip.
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED[report.nodeid] = _reason(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI_NO_SKIPS") != "1":
        return
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller gets every worker's reports and decides
    allowlist = Path(os.environ.get("CI_SKIP_ALLOWLIST") or DEFAULT_ALLOWLIST)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = dict(_SKIPPED)
    try:
        patterns = read_allowlist(allowlist)
    except OSError as exc:
        unexpected = dict(skipped)
        problem = f"CI_NO_SKIPS=1 but the allow-list cannot be read: {exc}"
    else:
        unexpected = not_allowed(skipped, patterns)
        problem = ""
    if not unexpected and not problem:
        return
    lines = [problem] if problem else []
    if unexpected:
        lines.append(f"\nCI_NO_SKIPS=1: {len(unexpected)} test(s) skipped, not on {allowlist}:")
        lines += [f"  {nodeid}: {reason}" for nodeid, reason in sorted(unexpected.items())]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True, bold=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
