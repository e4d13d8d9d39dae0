"""Every relative link in the README, docs/ and the packages' READMEs leads somewhere: the
file or directory exists, and a `#anchor` into a markdown file names one of its headings
(GitHub's rule: lower case, punctuation other than '-' and '_' dropped, spaces to '-',
a repeated heading gets -1, -2, ...). Links inside code are not links and are skipped."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target); the target ends at whitespace (a title follows) or ')'.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def documentation_files(repo: Path = REPO) -> list[Path]:
    """The markdown a reader follows links through."""
    files = [repo / "README.md", repo / "src" / "lab" / "README.md"]
    files += sorted((repo / "docs").glob("*.md"))
    files += sorted((repo / "packages").glob("*/README.md"))
    return [f for f in files if f.is_file()]


def _outside_fences(text: str) -> Iterable[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        yield number, line


def prose_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks, inline code removed."""
    previous_blank = True
    for number, line in _outside_fences(text):
        stripped = line.lstrip()
        indented_code = (
            previous_blank and line.startswith("    ") and stripped[:2] not in ("- ", "* ")
        )
        previous_blank = not line.strip()
        if indented_code:
            previous_blank = True  # an indented block goes on until a line that is not
            continue
        yield number, INLINE_CODE.sub("", line)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _lines_with_code(markdown.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _lines_with_code(text: str) -> Iterable[tuple[int, str]]:
    """Lines outside fenced code, inline code kept (headings keep their code's text)."""
    for number, line in _outside_fences(text):
        yield number, line.replace("`", "")


def broken_links(files: Iterable[Path], repo: Path = REPO) -> list[str]:
    """'file:line: link (why)' for every relative link that leads nowhere."""
    problems: list[str] = []
    anchor_cache: dict[Path, set[str]] = {}
    for source in files:
        for number, line in prose_lines(source.read_text(encoding="utf-8")):
            for match in LINK.finditer(line):
                target = match.group(1)
                if EXTERNAL.match(target):
                    continue
                path_part, _, fragment = target.partition("#")
                destination = (source.parent / path_part).resolve() if path_part else source
                where = f"{source.relative_to(repo)}:{number}: {target}"
                if not destination.exists():
                    problems.append(f"{where} (no such file or directory)")
                    continue
                if not fragment or destination.suffix != ".md":
                    continue
                if destination not in anchor_cache:
                    anchor_cache[destination] = anchors(destination)
                if fragment not in anchor_cache[destination]:
                    problems.append(f"{where} (no heading with the anchor #{fragment})")
    return problems


def test_every_relative_link_in_the_documentation_leads_somewhere() -> None:
    files = documentation_files()
    assert REPO / "README.md" in files and any(f.parent.name == "docs" for f in files)
    problems = broken_links(files)
    assert not problems, "\n".join(problems)


def test_a_broken_file_link_or_anchor_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page: `with code`\n\n## Twice\n\n## Twice\n")
    (tmp_path / "README.md").write_text(
        "# Front\n"
        "[good](docs/page.md#a-page-with-code) [also](docs/page.md#twice-1) [self](#front)\n"
        "[gone](docs/missing.md) and [bad anchor](docs/page.md#nowhere)\n"
        "```\n[in code](not/a/link.md)\n```\n"
        "`[inline](not/a/link.md)` [web](https://example.invalid/x)\n"
    )
    problems = broken_links([tmp_path / "README.md"], repo=tmp_path)
    assert problems == [
        "README.md:3: docs/missing.md (no such file or directory)",
        "README.md:3: docs/page.md#nowhere (no heading with the anchor #nowhere)",
    ]


def test_github_anchor_rules() -> None:
    assert anchor("Pods as containers: --runtime docker") == "pods-as-containers---runtime-docker"
    assert anchor("Throughput: calc v10 against plain FastAPI + uvicorn") == (
        "throughput-calc-v10-against-plain-fastapi--uvicorn"
    )
    assert anchor("SIGKILL, and one run per --out") == "sigkill-and-one-run-per---out"
    assert anchor("snake_case [a link](x.md)") == "snake_case-a-link"
