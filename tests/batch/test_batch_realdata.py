"""A manifest mixing real DICOM, real NIfTIs and a missing path (needs ../shared/data)."""

import csv
import json

import pytest

from csttool_nipype.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_mixed_manifest_reports_missing_path_and_processes_the_rest(shared_data, tmp_path, capsys):
    philips = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "dicom" / "601_WIP_dti_ax"
    canon = shared_data / "canon_galan_dti12_b1500" / "nifti"
    manifest = tmp_path / "study_manifest.json"
    manifest.write_text(json.dumps({
        "global_options": {"stages": ["tensor"], "gibbs": False},
        "subjects": [
            {"id": "sub-vand", "dicom": str(philips)},
            {"id": "sub-canax", "nifti": str(canon / "3000_DTI_PA-ortho_cl.nii.gz")},
            {"id": "sub-cansag", "nifti": str(canon / "10000_SAG_DTI_PA-COR_20d_cl.nii.gz")},
            {"id": "sub-gone", "nifti": str(tmp_path / "nowhere" / "dwi.nii.gz")},
        ],
    }))
    out = tmp_path / "OUT"
    code = main(["batch", "--manifest", str(manifest), "--dry-run", "--out", str(out)])
    plan = capsys.readouterr().out
    assert code == 1 and "sub-gone: INVALID" in plan and "nowhere/dwi.nii.gz does not exist" in plan
    assert not out.exists() or not any(out.iterdir()), "a dry run processes nothing"

    code = main(["batch", "--manifest", str(manifest), "--out", str(out), "--nprocs", "2",
                 "--denoise_method", "patch2self", "--preprocessing"])
    assert code == 1
    with open(out / "batch_metrics.csv", newline="") as fh:
        rows = {r["subject"]: r for r in csv.DictReader(fh)}
    assert rows["sub-gone"]["status"] == "FAILED" and rows["sub-gone"]["error_category"] == "invalid input"
    for sub in ("sub-vand", "sub-canax", "sub-cansag"):
        assert rows[sub]["status"] == "SUCCESS", rows[sub]
        assert (out / sub / "dwi" / f"{sub}_space-dwi_model-tensor_param-fa_dwimap.nii.gz").exists()
