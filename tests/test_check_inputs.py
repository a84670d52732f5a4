"""``check_inputs``: an existence check before the workflow is built; the import node
reads and validates the series (once)."""

from __future__ import annotations

import os

import pytest

from csttool_nipype.errors import InputError
from csttool_nipype.run import check_inputs
from csttool_nipype.workflows.base import DWIInputs


@pytest.fixture
def truncated(tmp_path):
    """A NIfTI series whose image is not a NIfTI file (e.g. an interrupted copy)."""
    nifti = tmp_path / "dwi.nii.gz"
    nifti.write_bytes(b"\x1f\x8b truncated")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    (tmp_path / "dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    return DWIInputs(nifti=str(nifti), bval=str(tmp_path / "dwi.bval"), bvec=str(tmp_path / "dwi.bvec"))


def test_existence_check_leaves_reading_to_the_import_node(truncated):
    check_inputs(truncated)   # no error: the workflow's import node reports it (test_cli_errors)


@pytest.mark.parametrize("missing", ["bval", "bvec", "nifti"])
def test_existence_check_names_a_missing_file(truncated, missing):
    gone = getattr(truncated, missing)
    os.remove(gone)
    with pytest.raises(InputError, match="does not exist") as info:
        check_inputs(truncated)
    assert str(gone) in str(info.value)
