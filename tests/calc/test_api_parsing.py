"""Parsing and summing a /sum body in the pytest process: every bad input's status and
message, and sums at the edges of int and float."""

from __future__ import annotations

import json

import pytest

from calc.api import MAX_BODY_BYTES, MAX_ITEMS, BadInput, parse_numbers, sum_numbers


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"numbers": [1, 2', 400, "malformed JSON"),
        (b"", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'{"numbers": [NaN]}', 422, "NaN is not a number we can sum"),
        (b'{"numbers": [-Infinity]}', 422, "-Infinity is not a number we can sum"),
        (b'{"numbers": [' + b"9" * 5000 + b"]}", 422, "a number is too large to parse"),
        (b'{"numbers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "JSON nested too deeply"),
        (b"[1]", 422, "body must be a JSON object"),
        (b'"numbers"', 422, "body must be a JSON object"),
        (b'{"number": [1]}', 422, "field 'numbers' is missing"),
        (b'{"numbers": {"a": 1}}', 422, "field 'numbers' must be a list"),
        (b'{"numbers": null}', 422, "field 'numbers' must be a list"),
    ],
)
def test_each_bad_body_gets_its_status_and_message(body: bytes, status: int, error: str) -> None:
    with pytest.raises(BadInput) as raised:
        parse_numbers(body)
    assert (raised.value.status, raised.value.error, str(raised.value)) == (status, error, error)


def test_the_item_limit_is_inclusive() -> None:
    """100,000 items are taken; 100,001 get 413."""
    assert len(parse_numbers(json.dumps({"numbers": [1] * MAX_ITEMS}).encode())) == MAX_ITEMS
    with pytest.raises(BadInput) as raised:
        parse_numbers(json.dumps({"numbers": [1] * (MAX_ITEMS + 1)}).encode())
    assert (raised.value.status, raised.value.error) == (413, "more than 100000 items")
    assert (MAX_ITEMS, MAX_BODY_BYTES) == (100_000, 1 << 20)


def test_a_good_body_gives_its_list_as_is() -> None:
    assert parse_numbers(b'{"numbers": [1, "x", 2.5, true], "other": 1}') == [1, "x", 2.5, True]


@pytest.mark.parametrize(
    ("items", "result", "count"),
    [
        ([1, 2, 3, 4], 10, 4),
        ([], 0, 0),
        ([1, 2.5], 3.5, 2),
        ([1, True, False, "7", None, {"a": 1}, [2], 3], 4, 2),
        ([10**20, 1], 10**20 + 1, 2),
        ([-1.5, 1.5], 0.0, 2),
        ([0.1] * 10, 1.0, 10),  # fsum: exactly 1.0, where a plain sum gives 0.999...
        ([10**308, 0.5], 1e308, 2),
        ([1.5], 1.5, 1),
    ],
)
def test_only_numbers_are_summed_ints_stay_ints(
    items: list[object], result: float, count: int
) -> None:
    """Booleans are not numbers; an all-int sum is an int; any float makes a float,
    summed exactly (fsum); the count is of the numbers summed."""
    got, got_count = sum_numbers(items)
    assert (got, got_count) == (result, count)
    assert type(got) is type(result)


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([float("inf")], "inf is not a number we can sum"),
        ([1, float("nan")], "nan is not a number we can sum"),
        ([1.7e308, 1.7e308], "the sum is too large to log"),
        ([10**400], "the sum is too large to log"),
        ([10**308, 10**308], "the sum is too large to log"),
        ([10**400, 1.0], "the sum is too large to log"),
        ([10**308, 1.7e308], "the sum is too large to log"),
    ],
)
def test_sums_that_cannot_be_logged_as_a_float_are_refused(items: list[object], error: str) -> None:
    """A non-finite float, or a sum too large for a float (InfluxDB's type for
    `result`): 422 rather than a wrong point."""
    with pytest.raises(BadInput) as raised:
        sum_numbers(items)
    assert (raised.value.status, raised.value.error) == (422, error)


def test_a_large_int_sum_that_fits_a_float_stays_exact() -> None:
    """An int sum up to the float range is kept exact (the point gets its float)."""
    big = 10**300
    assert sum_numbers([big, 1]) == (big + 1, 2)
