"""The README and docs/ name tests (the fault matrix) and link files: every one exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_test_the_docs_name_exists():
    missing, count = [], 0
    for page in PAGES:
        for path, name in re.findall(r"`((?:tests/)?[\w/]+\.py)::(\w+)", page.read_text()):
            count += 1
            file = ROOT / (path if path.startswith("tests/") else f"tests/{path}")
            if not file.is_file() or not re.search(rf"^def {name}\(", file.read_text(), re.M):
                missing.append(f"{page.name}: {path}::{name}")
    assert count > 20   # the fault matrix
    assert not missing, f"tests named in the docs that do not exist: {missing}"


def test_every_relative_link_of_the_docs_exists():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"broken links: {broken}"
