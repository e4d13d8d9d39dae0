"""As in tests/lab: the runs through the lab (marked `slow`) are skipped unless asked for
with `-m slow` or LAB_SLOW=1 (`make test` sets it)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or "") or os.environ.get("LAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="long end-to-end run: use -m slow or LAB_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow") is not None and "tests/examples/" in str(item.path):
            item.add_marker(skip)
