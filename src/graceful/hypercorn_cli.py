"""The `graceful-hypercorn` command: graceful.hypercorn's main, after a check that
hypercorn is there at all. graceful-asgi installs hypercorn only with its `hypercorn`
extra, and graceful.hypercorn imports it at once: without this, a missing extra is a
traceback instead of the fix."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

MISSING = (
    "graceful-hypercorn: error: hypercorn is not installed: "
    "pip install 'graceful-asgi[hypercorn]' (or 'graceful-calc[hypercorn]')"
)


def main(argv: Sequence[str] | None = None) -> int:
    if importlib.util.find_spec("hypercorn") is None:
        print(MISSING, file=sys.stderr)
        return 2
    from graceful.hypercorn_compat import unsupported

    if (problem := unsupported()) is not None:
        print(f"graceful-hypercorn: error: {problem}", file=sys.stderr)
        return 2
    from graceful.hypercorn import main as run

    return run(argv)
