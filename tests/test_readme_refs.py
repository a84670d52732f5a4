"""The README names tests (the fault matrix): every test it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_readme_names_exists():
    text = (ROOT / "README.md").read_text()
    refs = re.findall(r"`((?:tests/)?[\w/]+\.py)::(\w+)", text)
    assert len(refs) > 20   # the fault matrix
    missing = []
    for path, name in refs:
        file = ROOT / (path if path.startswith("tests/") else f"tests/{path}")
        if not file.is_file() or not re.search(rf"^def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"the README names tests that do not exist: {missing}"
