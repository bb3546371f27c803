"""The README and the docs/ pages hold together: every relative link reaches a file (and its heading,
when it names one), and every comment, docstring or page that cites a section by name
(`docs/install.md "Versions"`, `README: "The two commands"`) cites one that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITATION = re.compile(r"""(README|docs/[\w-]+\.md)(?:'s)?[:,]?\s+"([^"]+)\"""")
CITING = (".py", ".md", ".yaml", ".toml", ".sh", "Makefile")
SKIPPED = {".git", ".venv", "node_modules"}


def prose(page: Path) -> str:
    """The page without its fenced code blocks, where a # is a comment, not a heading."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def headings(page: Path) -> list[str]:
    if not page.is_file():
        return []
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", prose(page), flags=re.M)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(page):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_the_anchor_rule_matches_githubs():
    assert anchors(ROOT / "docs" / "evaluation.md") >= {"evaluation-prift-eval", "measured-cpu-2-cores",
                                                       "math-scoring-the-papers-protocol-strict-and-flexible"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this repository's
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def citing_files() -> list[Path]:
    return [p for p in ROOT.rglob("*") if p.is_file() and p.name.endswith(CITING)
            and not any(part in SKIPPED or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]


def test_every_cited_section_exists():
    citations = [(p, doc, name) for p in citing_files() if p.name != Path(__file__).name
                 for doc, name in CITATION.findall(p.read_text(errors="ignore"))]
    assert len(citations) >= 8
    missing = [f"{p.relative_to(ROOT)}: {doc} \"{name}\"" for p, doc, name in citations
               if not any(h.startswith(name) for h in headings(ROOT / doc.replace("README", "README.md")))]
    assert not missing
