"""The BIDS App on a BIDS dataset made from the real scans in ../shared/data."""

import csv
import json
import os
from pathlib import Path

import pytest

from csttool_nipype.cli.bids_app import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

FAST = ["--stages", "tensor", "--denoise-method", "none", "--no-gibbs", "--no-motion-correction"]


def _link_run(src_stem: Path, dwi_dir: Path, stem: str) -> None:
    dwi_dir.mkdir(parents=True, exist_ok=True)
    for ext in (".nii.gz", ".bval", ".bvec", ".json"):
        os.symlink(f"{src_stem}{ext}", dwi_dir / f"{stem}{ext}")


@pytest.fixture
def bids_from_shared(shared_data, tmp_path):
    """sub-canon: two runs (acq-ax, acq-sag) of the Canon scanner; sub-philips: one run."""
    raw = tmp_path / "raw"
    canon = shared_data / "canon_galan_dti12_b1500" / "nifti"
    philips = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "nifti"
    _link_run(canon / "3000_DTI_PA-ortho_cl", raw / "sub-canon" / "dwi", "sub-canon_acq-ax_dwi")
    _link_run(canon / "10000_SAG_DTI_PA-COR_20d_cl", raw / "sub-canon" / "dwi", "sub-canon_acq-sag_dwi")
    _link_run(philips / "601_WIP_dti_ax", raw / "sub-philips" / "dwi", "sub-philips_acq-ax_dwi")
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "dcm2niix QA scans",
                                                              "BIDSVersion": "1.10.0"}))
    return raw


def test_participant_labels_filter_file_and_group_on_real_scans(bids_from_shared, tmp_path):
    raw, out = bids_from_shared, tmp_path / "derivatives"
    filters = tmp_path / "sagittal.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "sag"}}))
    # the filter file leaves only the Canon sagittal run: sub-philips has none
    assert main([str(raw), str(out), "participant", "--participant-label", "canon", "philips",
                 "--bids-filter-file", str(filters), *FAST]) == 0
    assert (out / "sub-canon" / "_done.json").exists() and not (out / "sub-philips").exists()
    fa = json.loads((out / "sub-canon" / "dwi" / "sub-canon_space-dwi_model-tensor_param-fa_dwimap.json")
                    .read_text())
    assert [Path(p).name for p in fa["Sources"]] == ["sub-canon_acq-sag_dwi.nii.gz"]

    assert main([str(raw), str(out), "participant", "--participant-label", "philips", *FAST]) == 0
    main([str(raw), str(out), "group"])
    with open(out / "batch_metrics.csv", newline="") as fh:
        rows = {r["subject"]: r["status"] for r in csv.DictReader(fh)}
    assert rows == {"sub-canon": "SUCCESS", "sub-philips": "SUCCESS"}
