"""The operation point's line protocol, its clock, and calc's log line format, in the
pytest process."""

from __future__ import annotations

import logging
import re

import pytest

from calc.logs import RequestIdFilter, request_id_var, setup_logging
from calc.points import (
    MEASUREMENT,
    NanoClock,
    PointFormatter,
    escape_string_field,
    escape_tag,
    float_field,
)
from tests.calc.logging_support import restored_logging


def test_a_point_has_the_documented_shape() -> None:
    """1. A formatter for pod-a, port 4000, on a clock at 1,000 ns. 2. Its point is
    `operation,name=sum,pod=pod-a,port=4000 id="r1",numbers=4.0,result=10.0 1000`; without
    a port there is no port tag."""
    clock = NanoClock(source=lambda: 1_000)
    assert PointFormatter("pod-a", 4000, clock).sum_point("r1", 4, 10) == (
        'operation,name=sum,pod=pod-a,port=4000 id="r1",numbers=4.0,result=10.0 1000'
    )
    assert PointFormatter("pod-a", clock=NanoClock(lambda: 5)).sum_point("r", 0, -2.5) == (
        'operation,name=sum,pod=pod-a id="r",numbers=0.0,result=-2.5 5'
    )
    assert MEASUREMENT == "operation"


def test_tags_and_strings_are_escaped_per_the_line_protocol() -> None:
    """Tag values: backslash, comma, '=' and space escaped; string fields: backslash and
    double quote; each exactly once."""
    assert escape_tag("a b,c=d\\e") == "a\\ b\\,c\\=d\\\\e"
    assert escape_tag("plain") == "plain"
    assert escape_string_field('say "hi" \\o/, x=y') == 'say \\"hi\\" \\\\o/, x=y'
    clock = NanoClock(lambda: 7)
    assert PointFormatter("p q", 1, clock).sum_point('i"d', 1, 1.0) == (
        'operation,name=sum,pod=p\\ q,port=1 id="i\\"d",numbers=1.0,result=1.0 7'
    )


@pytest.mark.parametrize("bad", ["a\nb", "a\rb"])
def test_a_newline_is_refused_in_tags_and_strings(bad: str) -> None:
    """A newline (or carriage return) would end the point: refused with the value named."""
    with pytest.raises(ValueError) as tag:
        escape_tag(bad)
    assert str(tag.value) == f"tag value {bad!r} has a newline, which line protocol cannot carry"
    with pytest.raises(ValueError) as field:
        escape_string_field(bad)
    assert str(field.value) == (
        f"string field {bad!r} has a newline, which line protocol cannot carry"
    )


def test_an_empty_pod_tag_is_refused() -> None:
    with pytest.raises(ValueError) as error:
        PointFormatter("")
    assert str(error.value) == "the pod tag must not be empty"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10, "10.0"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (-0.0, "-0.0"),
        (3, "3.0"),
        (2**53, "9007199254740992.0"),
    ],
)
def test_numbers_are_always_written_as_floats(value: float, text: str) -> None:
    """A field keeps one type per shard: ints are written as floats too."""
    assert float_field(value) == text


def test_the_clock_never_repeats_and_never_goes_back() -> None:
    """1. A source that repeats, steps back, then jumps ahead. 2. Each reading is one
    past the last while the source lags, the source's own once it is ahead."""
    readings = iter([100, 100, 50, 102, 102, 500])
    clock = NanoClock(source=lambda: next(readings))
    assert [clock.next() for _ in range(6)] == [100, 101, 102, 103, 104, 500]
    early = iter([1, 1, 0])
    from_one = NanoClock(source=lambda: next(early))
    assert [from_one.next() for _ in range(3)] == [1, 2, 3]


def test_the_default_clock_is_the_wall_clock_in_nanoseconds() -> None:
    import time

    before = time.time_ns()
    first, second = NanoClock().next(), NanoClock().next()
    after = time.time_ns()
    assert before <= first <= second <= after + 1


def test_log_lines_carry_time_level_request_id_and_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1. setup_logging("warning") replaces whatever handlers the root logger had.
    2. An info line is dropped; a warning line reads
    `<date>T<time>.<ms> WARNING request_id=- calc: <message>`, and inside a request
    carries its id. 3. uvicorn's loggers hand their lines to ours; httpx says only
    warnings."""
    with restored_logging():
        old = logging.StreamHandler()
        logging.getLogger().addHandler(old)
        logging.getLogger("uvicorn").addHandler(logging.NullHandler())
        logging.getLogger("uvicorn.error").propagate = False
        setup_logging("warning")
        root = logging.getLogger()
        assert old not in root.handlers and len(root.handlers) == 1
        assert root.level == logging.WARNING
        assert logging.getLogger("uvicorn").handlers == []
        assert logging.getLogger("uvicorn.error").propagate is True
        assert logging.getLogger("httpx").level == logging.WARNING
        log = logging.getLogger("calc")
        log.info("not shown")
        log.warning("shown %d", 1)
        token = request_id_var.set("req-9")
        try:
            logging.getLogger("uvicorn.error").error("from uvicorn")
        finally:
            request_id_var.reset(token)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"
    assert re.fullmatch(stamp + r" WARNING request_id=- calc: shown 1", lines[0]), lines
    assert re.fullmatch(stamp + r" ERROR request_id=req-9 uvicorn\.error: from uvicorn", lines[1])


def test_the_request_id_filter_stamps_every_record() -> None:
    """The filter lets every record through, stamped with the current request id."""
    record = logging.LogRecord("calc", logging.INFO, __file__, 1, "m", None, None)
    token = request_id_var.set("abc")
    try:
        assert RequestIdFilter().filter(record) is True
    finally:
        request_id_var.reset(token)
    assert record.__dict__["request_id"] == "abc"
