"""A damaged spool segment: a real `calc serve` replays only the lines that are points;
the others (binary garbage, half lines, text) are counted, logged and kept aside in
`rejected-<segment>`, never written to the sink."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from calc.points import point_problem
from tests.calc.test_oplog_faults import post_sum
from tests.calc_support import StartCalc

GARBAGE = [
    b"\x00\xff\xfe\x89PNG\r\x1a binary",
    b'operation,name=sum,pod=test-pod id="half",numbers=1.0,res',
    b"\xc3\x28\x00\x01\x02",
    b"hello world",
]


def test_garbage_lines_in_a_segment_are_set_aside_not_written(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v10 accepts 3 sums (spooled, not yet written: 30 s interval); SIGKILL. 2. The
    segment is damaged: two binary lines, a half line and a line of text between the 3
    points. 3. The pod's next container writes the 3 points and nothing else; it logs
    the 4 lines set aside and where, and `rejected-<segment>` holds their bytes as found.
    4. At its SIGTERM the segment is settled and gone; the rejected file stays."""
    first = start_calc("v10", CALC_QUIET_PERIOD="0", CALC_SLOW_MATH="0")
    for i in range(3):
        assert post_sum(first, f"kept-{i}").status_code == 200
    os.killpg(first.process.pid, signal.SIGKILL)
    first.wait_exit(5)
    spool = tmp_path / "spool" / f"test-pod-{first.port}"
    (segment,) = spool.glob("*.spool")
    points = segment.read_bytes().split(b"\n")[:-1]
    assert len(points) == 3
    damaged = [points[0], *GARBAGE[:2], points[1], *GARBAGE[2:], points[2]]
    segment.write_bytes(b"".join(line + b"\n" for line in damaged))

    second = start_calc("v10", port=first.port, CALC_QUIET_PERIOD="0")
    second.terminate()
    assert second.wait_exit(15) == 0

    written = (tmp_path / "operations.lp").read_text().splitlines()
    assert sorted(re.findall(r'id="(kept-\d)"', "\n".join(written))) == [
        f"kept-{i}" for i in range(3)
    ]
    assert len(written) == 3 and all(point_problem(line) is None for line in written), written
    rejected = spool / f"rejected-{segment.name}"
    assert rejected.read_bytes() == b"".join(line + b"\n" for line in GARBAGE)
    log = second.log
    assert "Recovered 3 spooled lines" in log, log
    assert (
        f"Set aside 4 spooled line(s) of {segment.name} that are not usable (first: not "
        f"UTF-8), never written: kept in {rejected}"
    ) in log, log
    assert "3 written" in log, log
    assert not segment.exists()
    assert sorted(p.name for p in spool.iterdir()) == [rejected.name]
