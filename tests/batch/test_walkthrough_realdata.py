"""The walkthrough's manifest mode, verbatim but for the paths, on two real subjects (needs ../shared/data):

    csttool batch --manifest study_manifest.json --out OUT --preprocessing --denoise_method patch2self

with one ``"nifti"`` subject (the Philips scan) and one ``"dicom"`` folder (the Canon series 4000 as
gzipped classic DICOM). Both succeed and the console is the walkthrough's, line by line.
"""

import json

import pytest

from csttool_nipype.cli.main import main

from walkthrough import check_console

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

#: The walkthrough's "Manifest Example (study_manifest.json)", verbatim; only the two paths change.
MANIFEST = """\
{
  "global_options": {
    "preprocessing": true
  },
  "subjects": [
    {
      "id": "sub-001",
      "nifti": "/raw/sub-001/dwi.nii.gz"
    },
    {
      "id": "sub-002",
      "dicom": "/raw/sub-002/dicoms/"
    }
  ]
}
"""


def test_walkthrough_manifest_runs_both_real_subjects_and_prints_the_walkthrough(shared_data, tmp_path, capsys):
    nifti = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax.nii.gz"
    dicoms = shared_data / "canon_galan_dti12_b1500" / "dicom_classic_gz" / "4000_DTI_AP-ortho"
    manifest = tmp_path / "study_manifest.json"
    manifest.write_text(MANIFEST.replace("/raw/sub-001/dwi.nii.gz", str(nifti))
                        .replace("/raw/sub-002/dicoms/", f"{dicoms}/"))
    assert json.loads(manifest.read_text())["global_options"] == {"preprocessing": True}
    out = tmp_path / "study_results"

    code = main(["batch", "--manifest", str(manifest), "--out", str(out), "--preprocessing",
                 "--denoise_method", "patch2self"])

    printed = capsys.readouterr().out
    assert code == 0, printed
    subjects = check_console(printed, out)
    assert sorted(subjects) == ["sub-001", "sub-002"]   # printed as they finish (in parallel by default)
    assert all(m.group("success") for m in subjects.values()), printed
    for sub in subjects:
        assert (out / sub / "_done.json").exists()
        assert list((out / sub / "dwi").glob(f"{sub}_desc-summary_metrics.tsv"))
