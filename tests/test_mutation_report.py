"""`make mutation`'s score: mutmut's result files read against an equivalents file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.mutation_report import main


def results(tmp_path: Path, codes: dict[str, dict[str, int | None]]) -> Path:
    """mutmut's mutants/ dir with one .meta file per source file of part `p`."""
    mutants = tmp_path / "mutants"
    for source, by_name in codes.items():
        meta = mutants / "src" / "p" / f"{source}.py.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": by_name, "durations_by_key": {}}))
    return mutants


CODES: dict[str, dict[str, int | None]] = {
    "a": {"p.a.f__mutmut_1": 1, "p.a.f__mutmut_2": 0, "p.a.f__mutmut_3": 33},
    "b": {"p.b.g__mutmut_1": 1, "p.b.g__mutmut_2": 0, "p.b.g__mutmut_3": 36},
}


def run(tmp_path: Path, equivalents: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    listed = tmp_path / "equivalents.txt"
    listed.write_text(equivalents)
    code = main(
        [
            "--part",
            "p",
            "--mutants",
            str(results(tmp_path, CODES)),
            "--equivalents",
            str(listed),
            "--seconds",
            "61.4",
        ]
    )
    return code, capsys.readouterr().out


def test_the_score_counts_killed_listed_and_neither(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. Six mutants in two files: 2 killed, 2 survived, 1 with no test, 1 timed out;
    one survivor listed as equivalent (with a comment line and a blank line around).
    2. The report says 2 of 6 killed, 1 listed, 2 neither (1 survived, 1 with no test),
    the timeout apart, the seconds, a row per module, and names each of the 2 left;
    exit 0."""
    code, out = run(
        tmp_path, "# why each is equivalent\n\np.a.f__mutmut_2: same output either way\n", capsys
    )
    assert code == 0
    assert out.splitlines() == [
        "p: 2 of 6 mutants killed (33.3 %); 1 survivors listed as equivalent; 2 neither "
        "killed nor listed (1 survived, 1 with no in-process test); 1 timeout; 61 s",
        "  module       mutants  killed  listed neither   other",
        "  a                  3       1       1       1       0",
        "  b                  3       1       0       1       1",
        "  neither: p.a.f__mutmut_3 (no tests)",
        "  neither: p.b.g__mutmut_2 (survived)",
    ]


@pytest.mark.parametrize(
    ("equivalents", "error"),
    [
        ("p.a.f__mutmut_9: gone\n", "p.a.f__mutmut_9 is no mutant of this run (stale entry)"),
        ("p.a.f__mutmut_1: was thought equivalent\n", "p.a.f__mutmut_1 is killed by a test"),
        ("p.a.f__mutmut_2\n", "expected '<mutant name>: <why>', got 'p.a.f__mutmut_2'"),
        ("p.a.f__mutmut_2:   \n", "expected '<mutant name>: <why>'"),
        ("p.a.f__mutmut_2: x\np.a.f__mutmut_2: y\n", "p.a.f__mutmut_2 is listed twice"),
    ],
)
def test_a_wrong_equivalents_file_fails_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], equivalents: str, error: str
) -> None:
    """1. An equivalents file with a stale name, a killed mutant, an entry without a
    reason, or a name twice. 2. The report still prints the score, names the fault with
    the file, and exits 1."""
    code, out = run(tmp_path, equivalents, capsys)
    assert code == 1
    assert out.startswith("p: 2 of 6 mutants killed")
    assert any(line.startswith("  error: ") and error in line for line in out.splitlines()), out


def test_no_results_is_an_error_not_a_score_of_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A mutants/ dir without mutmut's result files. 2. Exit 2, saying where it looked."""
    code = main(["--part", "p", "--mutants", str(tmp_path), "--equivalents", "none.txt"])
    assert code == 2
    assert f"no mutmut results under {tmp_path}/src/p" in capsys.readouterr().err
