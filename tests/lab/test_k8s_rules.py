"""Kubernetes rules the lab's controllers follow, each checked against the rule's source:
RollingUpdate fenceposts, scale-down victims, the probe ticker, terminating endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.manifest import ManifestError, Strategy, load
from tests.lab.labkit import tiny_manifest

# -- RollingUpdate fenceposts (ResolveFenceposts) -----------------------------------------


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "expected"),
    [
        ("28%", "28%", 25, (7, 7)),  # 25 * 28 / 100 = 7 exactly: ceil(7) is 7, not 8
        ("29%", "29%", 25, (8, 7)),  # 7.25: surge up, unavailable down
        ("25%", "25%", 13, (4, 3)),
        ("100%", "100%", 3, (3, 3)),
        ("1%", "1%", 1, (1, 0)),
        (0, "10%", 5, (0, 1)),  # 0.5 rounds down to 0; both 0 would stall: unavailable 1
        ("0%", 2, 4, (0, 2)),
        (3, 0, 13, (3, 0)),
    ],
)
def test_fenceposts_in_integer_arithmetic(
    surge: int | str, unavailable: int | str, replicas: int, expected: tuple[int, int]
) -> None:
    """A RollingUpdate strategy and a replica count.
    1. Resolve maxSurge and maxUnavailable to pod counts.
    2. Surge is the integer ceiling and unavailable the floor of percent * replicas / 100;
       when both come to 0, unavailable is 1."""
    assert Strategy("RollingUpdate", surge, unavailable).resolve(replicas) == expected


def _with_strategy(tmp_path: Path, rolling: dict[str, Any]) -> Path:
    return tiny_manifest(
        tmp_path / "m.yml",
        port=8123,
        replicas=25,
        strategy={"type": "RollingUpdate", "rollingUpdate": rolling},
    )


def test_a_manifest_with_28_percent_of_25_surges_7(tmp_path: Path) -> None:
    """A manifest with 25 replicas, maxSurge and maxUnavailable 28 %.
    1. Load it and resolve the strategy.
    2. 7 and 7: the float product 0.28 * 25 is 7.000000000000001 and must not round to 8."""
    manifests = load(_with_strategy(tmp_path, {"maxSurge": "28%", "maxUnavailable": "28%"}))
    assert manifests.deployment.strategy.resolve(25) == (7, 7)


@pytest.mark.parametrize(
    ("rolling", "field", "message"),
    [
        ({"maxSurge": "12.5%"}, "maxSurge", "whole percentage"),
        ({"maxUnavailable": "12.5%"}, "maxUnavailable", "whole percentage"),
        ({"maxSurge": "-5%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "5"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "1e1%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "٣%"}, "maxSurge", "whole percentage"),  # a non-ASCII digit
        ({"maxUnavailable": "110%"}, "maxUnavailable", "greater than 100%"),
        ({"maxSurge": 0, "maxUnavailable": "0%"}, "maxUnavailable", "may not be 0"),
    ],
)
def test_invalid_rolling_update_is_refused_naming_the_field(
    tmp_path: Path, rolling: dict[str, Any], field: str, message: str
) -> None:
    """A manifest whose rollingUpdate has a value the API server refuses.
    1. Load it.
    2. A ManifestError names the file, the field's full path and the rule."""
    path = _with_strategy(tmp_path, rolling)
    before = path.read_text()
    with pytest.raises(ManifestError) as caught:
        load(path)
    assert f"spec.strategy.rollingUpdate.{field}" in str(caught.value)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert path.read_text() == before  # nothing changed
