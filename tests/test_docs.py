"""The docs hold together: every relative link resolves, every bench command is documented."""

from __future__ import annotations

import re
from pathlib import Path

from mmsparse.cli.bench import BENCH_COMMANDS
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def test_relative_links_resolve_to_files_and_headings():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            file, _, anchor = target.partition("#")
            if re.match(r"[a-z]+:", target) or file.startswith("../"):
                continue  # a web address, or the shared folder beside the repository
            path = doc.parent / file if file else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_benchmarks_doc_has_every_bench_command():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for name in BENCH_COMMANDS:
        assert f"## `bench {name}`" in text, name  # its own section
        assert f"[`bench {name}`](#bench-{name})" in text, name  # and a row of the table
    assert "## The machine record" in text
