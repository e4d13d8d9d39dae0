"""Progress on a terminal only: `lab matrix`'s experiment of how many, elapsed and left,
and the running experiment's phase, on one status line rewritten in place; in a pipe
(a log, CI) only the event lines. Real pseudo-terminals (os.openpty), real `lab`."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from lab.events import EventLog
from lab.progress import CLEAR, StatusLine, duration, seconds_left, status_line
from tests.lab.test_html_report import tiny_matrix
from tests.lab.test_lab_run import _kill_leftovers
from tests.support import REPO, wait_until

EVENT_LINE = re.compile(r"^\[\s*\d+\.\ds\] ")
# What a lab's start swept of a dead lab (lab.leftovers), printed before anything starts.
SWEPT = ("lab: removed leftover ", "lab: killed leftover ")


def _terminal(columns: int = 200) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) `columns` wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    return master, slave


def _read_all(master: int) -> bytes:
    data = b""
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


def test_times_read_as_a_clock_and_the_estimate_comes_from_the_finished_ones() -> None:
    """1. Durations: seconds, minutes and seconds, hours and minutes. 2. The time left:
    none before one experiment is done; then the mean of the done ones for each not
    started, plus what the mean leaves of the running one (never below nothing)."""
    assert [duration(s) for s in (0.4, 45, 130, 120, 3900)] == [
        "0 s",
        "45 s",
        "2 min 10 s",
        "2 min",
        "1 h 5 min",
    ]
    assert seconds_left([], 18, 5.0) is None
    # 2 done (60 s, 80 s: mean 70), the 3rd of 18 running for 30 s: 15 * 70 + 40.
    assert seconds_left([60.0, 80.0], 18, 30.0) == 15 * 70 + 40
    assert seconds_left([60.0, 80.0], 18, 100.0) == 15 * 70
    assert seconds_left([60.0, 80.0, 70.0], 3, 0.0) == 0


def test_status_line_on_a_terminal_is_rewritten_and_lines_go_above_it() -> None:
    """1. The status line of a pseudo-terminal: a part whose text changes, redrawn by
    its ticker; an event line printed through it; the part dropped. 2. Each drawing
    starts with \\r and an erase; the event line comes after an erase, on its own line,
    and the status is drawn again under it; dropping erases it. 3. A pipe has none."""
    master, slave = _terminal(columns=40)
    stream = os.fdopen(slave, "w")
    try:
        line = StatusLine(stream, tick=0.05)
        count = iter(range(1_000_000))
        line.set("work", lambda: f"step {next(count)}")
        seen = bytearray()

        def redrawn() -> bool:
            seen.extend(_read_all(master))
            return b"step 3" in seen

        wait_until(redrawn, 5, what="the ticker redrawing the status line")
        line.print("an event")
        line.set("more", lambda: "x" * 100)  # wider than the terminal: cut, not wrapped
        line.drop("work")
        line.drop("more")
        assert line.ticker is None
        seen.extend(_read_all(master))
        text = seen.decode()
        assert text.startswith(CLEAR + "step 0")
        assert CLEAR + "an event\r\n" + CLEAR + "step " in text
        assert CLEAR + "x" * 36 + "..." + CLEAR in text
        assert text.endswith(CLEAR)
    finally:
        stream.close()
        os.close(master)
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as reader, os.fdopen(write_end, "w") as pipe:
        assert status_line(pipe) is None
        events = EventLog(progress=pipe)
        events.phase("warm-up", "4 VUs for 1 s")
        events.close()
        assert events.status is None
        pipe.close()
        written = reader.read()
    assert "phase: warm-up" in written and "\r" not in written and "\x1b" not in written


def test_event_log_on_a_terminal_shows_the_phase_and_in_a_file_only_lines() -> None:
    """1. An event log whose progress goes to a pseudo-terminal: two phases and an event,
    then closed. 2. The terminal shows the status "lab run: phase ..., N s elapsed" with
    the current phase, the event lines above it, and the status erased at the close.
    3. The same events to a file (a log): their lines only, no \\r, no escape codes."""
    master, slave = _terminal()
    stream = os.fdopen(slave, "w")
    try:
        events = EventLog(progress=stream)
        events.phase("warm-up", "4 VUs for 1 s")
        events.add("pod-a", "ready")
        events.phase("action", "rollout-restart")
        text = _read_all(master).decode()
        events.close()
        text += _read_all(master).decode()
    finally:
        stream.close()
        os.close(master)
    assert CLEAR + "lab run: phase warm-up 4 VUs for 1 s, 0 s elapsed" in text
    assert CLEAR + "lab run: phase action rollout-restart, 0 s elapsed" in text
    assert "pod-a" in text and "ready" in text and text.endswith(CLEAR)
    log = io.StringIO()
    events = EventLog(progress=log)
    events.phase("warm-up", "4 VUs for 1 s")
    events.add("pod-a", "ready")
    events.close()
    written = log.getvalue()
    assert "phase: warm-up 4 VUs for 1 s" in written and "pod-a" in written
    assert "\r" not in written and "\x1b" not in written and "lab run: phase" not in written


def _run_on_terminal(argv: list[str], out: Path, timeout: float) -> str:
    """Run `argv` with stdout and stderr on a pseudo-terminal to its end; its output."""
    master, slave = _terminal()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready = select.select([master], [], [], 0.5)[0]
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer is gone
                    break
                if not chunk:
                    break
                output.extend(chunk)
            elif process.poll() is not None:
                break  # exited, and nothing more to read
        assert process.wait(5) == 0, output.decode(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)
        for cell in out.glob("v*-rollout-restart-tcp"):
            _kill_leftovers(cell)
    return output.decode(errors="replace")


def test_matrix_on_a_terminal_says_which_experiment_and_what_is_left(tmp_path: Path) -> None:
    """1. `lab matrix` over two versions of the tiny app, on a pseudo-terminal (as `make
    demo` runs on one). 2. A line as each experiment starts: "experiment 1 of 2: v1
    rollout-restart tcp, ... elapsed", the time left estimated from the first once it is
    done; the status line, rewritten with \\r, shows the experiment and the running
    phase. 3. The status line is erased before the table is printed."""
    out = tmp_path / "out"
    text = _run_on_terminal(tiny_matrix(tmp_path, out, ("v1", "v2")), out, 150)
    assert "experiment 1 of 2: v1 rollout-restart tcp, 0 s elapsed, the time left is " in text
    second = text[text.index("experiment 2 of 2: v2 rollout-restart tcp, ") :]
    assert " elapsed, about " in second.splitlines()[0] and " left" in second.splitlines()[0]
    assert CLEAR + "experiment 2 of 2: v2 rollout-restart tcp, " in text
    assert " | lab run: phase warm-up " in text and " | lab run: phase action " in text
    table = text.index("| v1 |")
    assert CLEAR in text[:table] and "elapsed" not in text[table:]


def test_matrix_in_a_pipe_writes_no_progress(tmp_path: Path) -> None:
    """1. `lab matrix` over one version of the tiny app with its output in a pipe (a log,
    CI). 2. The experiment's event lines are there; no experiment-of-how-many line, no
    status line, no \\r or escape codes."""
    out = tmp_path / "out"
    try:
        done = subprocess.run(
            tiny_matrix(tmp_path, out, ("v2",)), capture_output=True, text=True, cwd=REPO,
            timeout=120,
        )  # fmt: skip
    finally:
        for cell in out.glob("v*-rollout-restart-tcp"):
            _kill_leftovers(cell)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "phase: warm-up" in done.stderr and "phase: action" in done.stderr
    for text in (done.stdout, done.stderr):
        assert "experiment 1 of 1" not in text and "lab run: phase" not in text
        assert "\r" not in text and "\x1b" not in text
    # stderr holds the events' lines ("[   1.2s] pod  kind: detail") and nothing else, but
    # for what the start swept of a dead lab (another test's, on this machine).
    others = [
        line
        for line in done.stderr.splitlines()
        if not EVENT_LINE.match(line) and not line.startswith(SWEPT)
    ]
    assert not others, others
