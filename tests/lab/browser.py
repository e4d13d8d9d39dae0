"""Debian's Chromium, headless, driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: commands on its fd 3, answers on its fd 4, each a JSON message
ended by a NUL byte). Enough to load a page from a file, ask the page what it rendered,
list every request it made and take a screenshot."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from tests.support import wait_until

WIDTH, HEIGHT = 1400, 1000

# What the page rendered: each picture (decoded, its size and place), each table's rows.
INSPECT = """(() => {
  const shown = el => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none";
  };
  const box = el => {
    const r = el.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
  };
  return {
    title: document.title,
    text: document.body.innerText,
    scripts: document.scripts.length,
    images: [...document.images].map(i => ({
      cls: i.className, complete: i.complete, naturalWidth: i.naturalWidth,
      shown: shown(i), box: box(i)})),
    svgs: [...document.querySelectorAll("svg")].map(s => ({
      cls: s.getAttribute("class"), shown: shown(s), box: box(s),
      bars: s.querySelectorAll("rect").length})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      cls: t.className, rows: t.rows.length, shown: shown(t), text: t.innerText})),
    links: [...document.links].map(a => a.getAttribute("href")),
  };
})()"""


class Chromium:
    def __init__(self, process: subprocess.Popen[bytes], commands: int, answers: int) -> None:
        self.process = process
        self.commands = commands
        self.answers = answers
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []  # every event, in order
        self.session = ""

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.answers], [], [], left)
            if ready:
                chunk = os.read(self.answers, 1 << 20)
                if not chunk:
                    raise EOFError(f"Chromium closed its pipe (exit {self.process.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return dict(json.loads(message))

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))
            if "method" in answer:
                self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        for event in self.events[seen:]:
            if event["method"] == method:
                return event
        while True:
            event = self._read_message(deadline)
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return event

    def open(self, page: Path) -> dict[str, Any]:
        """Load `page` from its file in a new tab; returns what INSPECT found."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.events.clear()
        self.send("Network.enable")
        self.send("Page.enable")
        self.send("Page.navigate", url=page.resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        found = self.send("Runtime.evaluate", expression=INSPECT, returnByValue=True)
        return dict(found["result"]["value"])

    def requested(self) -> list[str]:
        """Every URL the page asked for since it was opened."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def screenshot(self) -> Image.Image:
        """The whole page, beyond the window too, as the browser drew it."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")


def one_colour(image: Image.Image) -> bool:
    """Every pixel the same (an RGB image's extrema: a (low, high) pair per band)."""
    bands: tuple[tuple[int, int], ...] = image.getextrema()  # type: ignore[assignment]
    return all(low == high for low, high in bands)


def crop(image: Image.Image, box: dict[str, float]) -> Image.Image:
    return image.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    )


@contextlib.contextmanager
def chromium() -> Iterator[Chromium]:
    """Headless Chromium with its own profile in a temporary directory; stopped (its whole
    process group, which is its own) when the block ends, also on a failure."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run `make test-deps`"
    commands_r, commands_w = _high(os.pipe())
    answers_r, answers_w = _high(os.pipe())
    profile = tempfile.mkdtemp(prefix="lab-chromium-")
    argv = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
        f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "about:blank",
    ]  # fmt: skip
    # The pipe's ends as fds 3 and 4 in Chromium, where the protocol expects them (bash:
    # dash's redirections take single-digit fds only).
    shell = f'exec "$@" 3<&{commands_r} 4>&{answers_w} {commands_r}<&- {answers_w}>&-'
    process = subprocess.Popen(
        ["bash", "-c", shell, "bash", *argv],
        pass_fds=(commands_r, answers_w),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # Its shared-memory files too (with --disable-dev-shm-usage they go to TMPDIR).
        env={**os.environ, "TMPDIR": profile},
    )
    os.close(commands_r)
    os.close(answers_w)
    browser = Chromium(process, commands_w, answers_r)
    try:
        yield browser
    finally:
        with contextlib.suppress(Exception):
            browser.send("Browser.close", timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        wait_until(lambda: not _group_alive(process.pid), 10, what="Chromium's processes gone")
        os.close(commands_w)
        os.close(answers_r)
        shutil.rmtree(profile, ignore_errors=True)


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to fds 10 and up: never 3 or 4, which the child's
    redirections overwrite."""
    high = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return high[0], high[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_rendered(browser: Chromium, found: dict[str, Any], pictures: int) -> None:
    """Every picture decoded, shown, and not one colour where the browser drew it; every
    table shown; the whole page not blank; nothing asked of any network."""
    shot = browser.screenshot()
    assert not one_colour(shot), "the page's screenshot is one colour"
    shown = [*found["images"], *found["svgs"]]
    assert len(shown) == pictures, shown
    for image in found["images"]:
        assert image["complete"] and image["naturalWidth"] > 0, image
    for picture in shown:
        assert picture["shown"], picture
        assert not one_colour(crop(shot, picture["box"])), f"{picture['cls']} drawn blank"
    for table in found["tables"]:
        if table["cls"] != "events":  # folded in a <details> until opened
            assert table["shown"] and table["rows"] > 0, table
    outside = [u for u in browser.requested() if not u.startswith(("file:", "data:"))]
    assert not outside, f"the page asked the network for {outside}"
