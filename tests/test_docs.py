"""The README is a front page and docs/ holds the reference: every page is reachable from the
README, every relative link and anchor resolves, and the prose names no commit or issue a
newcomer could not look up."""

import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
# The front page: what the lab is, the two commands, the URLs, things to try, the API natively
# and the map of docs/. Anything longer belongs in docs/.
README_MAX_LINES = 250
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    return broken


def prose(page: Path) -> str:
    """A page without its code blocks (where a digest or a run id is an example, not a pointer)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move reference into docs/"
    headings = [line for line in lines if line.startswith("## ")]
    for section in ("## Quick start", "## The lab", "## Things to try", "## The API natively", "## Documentation"):
        assert section in headings, section


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    assert PAGES, "docs/ is empty"
    assert [page.name for page in PAGES if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_the_prose_names_no_commit_and_no_issue(page):
    text = prose(page)
    assert re.findall(r"\b[Ii]ssues? \d+\b", text) == []
    # A commit as git abbreviates it: 7 to 40 hex digits with at least one digit and one letter.
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", w) and re.search(r"[a-f]", w)]
    assert hashes == []


def test_the_link_check_catches_a_missing_page_and_a_wrong_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section, with punctuation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-with-punctuation) [gone](missing.md) [bad](other.md#nowhere) [web](https://x.org/a)"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]
