"""The score of a `make mutation` run of one part, against its list of equivalent mutants.

    python -m tests.mutation_report --part graceful --mutants out/mutation/graceful/mutants \
        --equivalents tests/graceful/mutation-equivalents.txt [--seconds 1234]

Reads the results mutmut 3 keeps next to each mutated file (`<file>.py.meta`, JSON with
`exit_code_by_key`) and prints: killed / total, the survivors listed as equivalent, and
the survivors that are neither killed nor listed (each by name). Exits 1 when the
equivalents file is wrong: an entry without a reason, a name listed twice, a name that is
no mutant of this run (stale: the code changed under it), or a listed mutant that a test
now kills (it was not equivalent).

The equivalents file: one `<mutant name>: <why it is equivalent>` a line; `#` starts a
comment line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: mutmut 3's exit codes (mutmut.__main__.status_by_exit_code); any other is suspicious.
STATUS_BY_EXIT_CODE: Mapping[int | None, str] = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    2: "interrupted",
    None: "not checked",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    37: "caught by type check",
    -11: "segfault",
    -9: "segfault",
}
#: What a test should have killed: these need a test or an entry in the equivalents file.
SURVIVING = ("survived", "no tests")


class ReportError(Exception):
    """The equivalents file or the results cannot be used."""


@dataclass
class Score:
    part: str
    statuses: dict[str, str]  # mutant name -> status
    equivalents: dict[str, str]  # mutant name -> why
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.statuses)

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def listed(self) -> list[str]:
        return sorted(
            n for n, s in self.statuses.items() if s in SURVIVING and n in self.equivalents
        )

    @property
    def neither(self) -> list[str]:
        return sorted(
            n for n, s in self.statuses.items() if s in SURVIVING and n not in self.equivalents
        )

    def render(self, seconds: float | None = None) -> str:
        killed, total = self.count("killed"), self.total
        percent = 100 * killed / total if total else 0.0
        neither = self.neither
        by_status = Counter(self.statuses[n] for n in neither)
        other = Counter(s for s in self.statuses.values() if s not in ("killed", *SURVIVING))
        line = (
            f"{self.part}: {killed} of {total} mutants killed ({percent:.1f} %); "
            f"{len(self.listed)} survivors listed as equivalent; {len(neither)} neither "
            f"killed nor listed ({by_status['survived']} survived, "
            f"{by_status['no tests']} with no in-process test)"
        )
        if other:
            line += "; " + ", ".join(f"{n} {status}" for status, n in sorted(other.items()))
        if seconds is not None:
            line += f"; {seconds:.0f} s"
        lines = [line, *self.by_module()]
        lines += [f"  neither: {name} ({self.statuses[name]})" for name in neither]
        lines += [f"  error: {problem}" for problem in self.problems]
        return "\n".join(lines)

    def by_module(self) -> list[str]:
        """One row per module: mutants, killed, listed as equivalent, neither, and every
        other status (timeout, not checked, ...) together."""
        rows: dict[str, Counter[str]] = {}
        for name, status in self.statuses.items():
            module = name.split(".")[1] if name.count(".") >= 2 else "?"
            column = status if status == "killed" else "other"
            if status in SURVIVING:
                column = "listed" if name in self.equivalents else "neither"
            rows.setdefault(module, Counter())[column] += 1
        header = f"  {'module':<12} {'mutants':>7} {'killed':>7} {'listed':>7} {'neither':>7} {'other':>7}"
        lines = [header]
        for module, row in sorted(rows.items(), key=lambda item: (-item[1].total(), item[0])):
            counts = (row[c] for c in ("killed", "listed", "neither", "other"))
            lines.append(f"  {module:<12} {row.total():>7} " + " ".join(f"{n:>7}" for n in counts))
        return lines


def read_statuses(mutants: Path, part: str) -> dict[str, str]:
    """Every mutant of `part` and its status, from mutmut's .meta files."""
    root = mutants / "src" / part
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        raise ReportError(f"no mutmut results under {root} (did `mutmut run` run there?)")
    statuses: dict[str, str] = {}
    for meta in metas:
        try:
            codes = json.loads(meta.read_text())["exit_code_by_key"]
        except (OSError, ValueError, KeyError) as exc:
            raise ReportError(f"{meta}: not a mutmut result file ({exc!r})") from exc
        for name, code in codes.items():
            statuses[name] = STATUS_BY_EXIT_CODE.get(code, "suspicious")
    return statuses


def read_equivalents(path: Path) -> tuple[dict[str, str], list[str]]:
    """The entries of an equivalents file, and what is wrong with it (a missing file is
    an empty list)."""
    if not path.exists():
        return {}, []
    entries: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, why = line.partition(":")
        name, why = name.strip(), why.strip()
        if not colon or not why or not name:
            problems.append(f"{path}:{number}: expected '<mutant name>: <why>', got {line!r}")
        elif name in entries:
            problems.append(f"{path}:{number}: {name} is listed twice")
        else:
            entries[name] = why
    return entries, problems


def score(part: str, mutants: Path, equivalents: Path) -> Score:
    statuses = read_statuses(mutants, part)
    entries, problems = read_equivalents(equivalents)
    for name in sorted(entries):
        status = statuses.get(name)
        if status is None:
            problems.append(f"{equivalents}: {name} is no mutant of this run (stale entry)")
        elif status == "killed":
            problems.append(f"{equivalents}: {name} is killed by a test: not equivalent")
    return Score(part, statuses, entries, problems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation_report",
        description="Score one part's mutmut run against its equivalents file.",
    )
    parser.add_argument("--part", required=True, help="graceful or calc")
    parser.add_argument("--mutants", required=True, type=Path, help="mutmut's mutants/ dir")
    parser.add_argument("--equivalents", required=True, type=Path)
    parser.add_argument("--seconds", type=float, help="how long the run took")
    args = parser.parse_args(argv)
    try:
        result = score(args.part, args.mutants, args.equivalents)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.render(args.seconds))
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
