"""Lab test options: the long end-to-end runs (marked `slow`, about a minute each) are
skipped unless asked for with `-m slow` or LAB_SLOW=1 (`make lab-test-slow`)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "slow" in (config.getoption("-m") or "") or os.environ.get("LAB_SLOW") == "1"
    if wanted:
        return
    skip = pytest.mark.skip(reason="long end-to-end run: use -m slow or LAB_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow") is not None and "tests/lab/" in str(item.path):
            item.add_marker(skip)
