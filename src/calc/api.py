"""Parsing and summing the body of POST /sum; every bad input maps to one client error."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_BODY_BYTES = 1 << 20
MAX_ITEMS = 100_000


class BadInput(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def parse_numbers(body: bytes) -> list[Any]:
    """The `numbers` list of a JSON body, or BadInput with the status to answer."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except _NonFinite as exc:
        raise BadInput(422, f"{exc} is not a number we can sum") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(400, "malformed JSON") from None
    except RecursionError:
        raise BadInput(422, "JSON nested too deeply") from None
    except ValueError:
        # e.g. an integer literal longer than Python's int conversion limit
        raise BadInput(422, "a number is too large to parse") from None
    if not isinstance(data, dict):
        raise BadInput(422, "body must be a JSON object")
    if "numbers" not in data:
        raise BadInput(422, "field 'numbers' is missing")
    numbers = data["numbers"]
    if not isinstance(numbers, list):
        raise BadInput(422, "field 'numbers' must be a list")
    if len(numbers) > MAX_ITEMS:
        raise BadInput(413, f"more than {MAX_ITEMS} items")
    return numbers


def sum_numbers(items: list[Any]) -> tuple[int | float, int]:
    """The sum of the items that are numbers (booleans are not), and how many there were.

    Integer sums stay integers. A sum that cannot be written as a finite float (the
    operation log's type for `result`) is rejected rather than logged wrong.
    """
    int_total = 0
    floats: list[float] = []
    count = 0
    for item in items:
        kind = type(item)
        if kind is int:
            int_total += item
            count += 1
        elif kind is float:
            if not math.isfinite(item):  # a literal like 1e999 parses to inf
                raise BadInput(422, f"{item} is not a number we can sum")
            floats.append(item)
            count += 1
    try:
        as_float = float(int_total)
        result: int | float = int_total
        if floats:
            result = as_float + math.fsum(floats)
            as_float = result
    except OverflowError:
        raise BadInput(422, "the sum is too large to log") from None
    if not math.isfinite(as_float):
        raise BadInput(422, "the sum is too large to log")
    return result, count
