"""How `make pytest` splits the suite: the `alone` modules (run by themselves, after the rest)
are named in tests/conftest.py; a renamed module must not silently leave that list."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ALONE_MODULES
from tests.support import REPO


def test_every_alone_module_is_there() -> None:
    missing = sorted(m for m in ALONE_MODULES if not (REPO / m).is_file())
    assert missing == []


def test_the_alone_tests_are_marked_and_only_they() -> None:
    """The mark comes from the list: a test of a listed module has it, one of another
    module (this one) has not."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "alone",
         "tests/graceful/test_signals.py", "tests/test_suite_layout.py"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert ids and all(i.startswith("tests/graceful/test_signals.py::") for i in ids), result.stdout
