"""The README and docs/ARCHITECTURE.md point only at what exists: every
repository path they name is there, nothing refers to a design file outside
the repository, and the README's sections come in the order a newcomer reads
them (issue #14)."""

from __future__ import annotations

import re

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "docs" / "ARCHITECTURE.md", REPO / "benches" / "RESULTS.md"]
TOP = ("src", "benches", "deploy", "docs", "scripts", "tests", "python", "fuzz", "uring", "http")
# Made when something runs (benchmark output, the conformance suite's npm
# install), so named before they exist.
GENERATED = ("benches/results", "tests/conformance/node_modules")


def named_paths(text: str) -> set[str]:
    out = set()
    for m in re.finditer(r"`([^`\s]+)`|\]\(([^)\s]+)\)", text):
        p = (m.group(1) or m.group(2)).rstrip(".,:;")
        p = p.split("#", 1)[0]
        if any(c in p for c in "<>*{}$|") or "://" in p:
            continue
        if (p.split("/", 1)[0] in TOP and "/" in p) or (m.group(2) and p):
            # A repository path in code quotes, or any relative link.
            out.add(p)
    return out


def test_every_named_path_exists():
    missing = []
    for doc in DOCS:
        for p in sorted(named_paths(doc.read_text())):
            if p.startswith(GENERATED):
                continue
            # A path is from the repository's root, or (RESULTS.md's links)
            # from the document's own directory.
            if not ((REPO / p).exists() or (doc.parent / p).exists()):
                missing.append(f"{doc.relative_to(REPO)}: {p}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)
    assert len(named_paths((REPO / "README.md").read_text())) > 20, "the check found almost nothing to check"


def test_no_pointer_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "DESIGN.md" not in text and "shared design" not in text, doc
        assert not re.search(r"DESIGN §\d", text), doc


def test_readme_sections_in_reading_order():
    heads = [h for h in re.findall(r"(?m)^## (.+)$", (REPO / "README.md").read_text())]
    want = ["The two commands", "Using it with your own tool server", "Flags", "Behaviour", "Deployment",
            "Architecture", "Status and limits"]
    assert heads == want, heads
