"""Shared fixtures: the real-data folder next to the project, skipping cleanly without it."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data tests need ../shared/data next to the project ({SHARED_DATA} not found)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _session_array_cache():
    """Prepared templates/atlases (``csttool_nipype.array_cache``) go to a folder of this test
    session, removed at its end, not to the user's cache - unless CSTTOOL_CACHE_DIR is set."""
    if "CSTTOOL_CACHE_DIR" in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="csttool-test-cache-")
    os.environ["CSTTOOL_CACHE_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("CSTTOOL_CACHE_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """Folder with one small phantom subject (4 mm, 8 directions, SNR 30):
    ``sub-01_dwi.{nii.gz,bval,bvec,json}``; the fault tests copy and spoil it."""
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.writer import write_bids_dataset

    root = tmp_path_factory.mktemp("small_phantom")
    write_bids_dataset(root, 1, spec=PhantomSpec(voxel_size=4.0, n_directions=8, snr=30.0), seed=3)
    return root / "sub-01" / "dwi"
