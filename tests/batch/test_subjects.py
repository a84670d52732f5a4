"""Manifest validation and BIDS discovery: every bad entry named, the rest kept."""

import json
from pathlib import Path

import pytest

from csttool_nipype.batch.subjects import discover_bids, load_manifest
from csttool_nipype.errors import InputError


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


def test_bids_discovery_include_exclude_labels_and_sessions(tmp_path):
    for sub in ("sub-001", "sub-002", "sub-099", "sub-100"):
        _touch(tmp_path / sub / "dwi" / f"{sub}_dwi.nii.gz")
    _touch(tmp_path / "sub-003" / "ses-a" / "dwi" / "sub-003_ses-a_dwi.nii.gz")
    _touch(tmp_path / "sub-003" / "ses-b" / "dwi" / "sub-003_ses-b_dwi.nii.gz")
    _touch(tmp_path / "sub-004" / "anat" / "sub-004_T1w.nii.gz")  # no DWI: not a subject here
    keys = [s.key for s in discover_bids(tmp_path, include=["sub-0*"], exclude=["sub-099"])]
    assert keys == ["sub-001", "sub-002", "sub-003/ses-a", "sub-003/ses-b"]
    assert [s.key for s in discover_bids(tmp_path, participant_label=["100", "sub-002"])] == ["sub-002", "sub-100"]
    assert [s.key for s in discover_bids(tmp_path, session_label=["b"])] == ["sub-003/ses-b"]


def test_bids_discovery_filters_agree_with_a_pybids_layout(tmp_path):
    """Entity filters select the same runs as pybids' own BIDSLayout query on the same tree."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    names = ["sub-01/dwi/sub-01_acq-ax_dwi.nii.gz", "sub-01/dwi/sub-01_acq-sag_dwi.nii.gz",
             "sub-02/ses-1/dwi/sub-02_ses-1_acq-sag_run-02_dwi.nii.gz", "sub-03/dwi/sub-03_dwi.nii",
             "sub-04/dwi/sub-04_acq-ax_dwi.bval", "derivatives/sub-05/dwi/sub-05_dwi.nii.gz"]
    for name in names:
        _touch(tmp_path / name)
    layout = BIDSLayout(str(tmp_path), validate=False, is_derivative=True,
                        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))
    for filters in ({}, {"acquisition": "sag"}, {"acquisition": ["ax", "sag"]}, {"acquisition": None},
                    {"run": 2}, {"session": "1"}):
        expected = {f.path for f in layout.get(return_type="object", suffix="dwi", datatype="dwi",
                                               extension=[".nii", ".nii.gz"], **filters)}
        # one run per subject/session is kept: compare with a subject's first run in sorted order
        firsts = {}
        for path in sorted(expected):
            key = Path(path).relative_to(tmp_path).parts[0] + ("/ses-1" if "ses-1" in path else "")
            firsts.setdefault(key, path)
        found = {s.inputs["nifti"] for s in discover_bids(tmp_path, bids_filters=filters)}
        assert found == set(firsts.values()), filters
