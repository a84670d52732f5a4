"""Manifest validation: every bad entry named, the rest kept (BIDS discovery: tests/test_bids.py)."""

import json

import pytest

from csttool_nipype.errors import InputError
from csttool_nipype.subjects import load_manifest


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_manifest_entries_are_validated_one_by_one(tmp_path):
    good = _touch(tmp_path / "raw" / "a.nii.gz")
    dicoms = tmp_path / "raw" / "dicoms"
    dicoms.mkdir()
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({
        "global_options": {"denoise_method": "none"},
        "subjects": [
            {"id": "sub-001", "nifti": "raw/a.nii.gz"},
            {"id": "sub-002", "dicom": str(dicoms), "series": 601},
            {"id": "sub-001", "nifti": str(good)},
            {"id": "../etc", "nifti": str(good)},
            {"id": "sub-005", "nifti": "raw/missing.nii.gz"},
            {"id": "sub-006", "nifti": str(good), "colour": "blue"},
            {"id": "sub-007"},
        ],
    }))
    options, specs = load_manifest(manifest)
    assert options == {"denoise_method": "none"}
    errors = {s.subject: s.error for s in specs[3:]}
    assert specs[0].error is None and specs[0].inputs["nifti"] == str(good)
    assert specs[1].error is None and specs[1].inputs == {"dicom": str(dicoms), "series": "601"}
    assert "duplicate id" in specs[2].error
    assert "safe folder name" in specs[3].error
    assert "missing.nii.gz does not exist" in errors["sub-005"] and "subjects[5]" in errors["sub-005"]
    assert "unknown key(s) colour" in errors["sub-006"]
    assert "exactly one of" in errors["sub-007"]


def test_broken_manifest_is_one_error(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="m.json: not a readable JSON manifest"):
        load_manifest(bad)
