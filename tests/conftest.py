"""Shared fixtures: the real-data folder next to the project, skipping cleanly without it."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data tests need ../shared/data next to the project ({SHARED_DATA} not found)")
    return SHARED_DATA
