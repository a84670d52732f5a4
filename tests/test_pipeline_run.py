"""`csttool run` end to end: a phantom with known truth and real scans, through Nipype."""

import json

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.cli.main import main
from csttool_nipype.science import gradients
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.phantom import make_phantom, on_truth_grid
from csttool_nipype.sims.writer import write_phantom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A 3 mm LPS-stored phantom with pose and motion, processed by `csttool run`."""
    tmp = tmp_path_factory.mktemp("run")
    ph = make_phantom(PhantomSpec(voxel_size=3.0, n_directions=20, snr=30.0, rotation_deg=10.0,
                                  translation_mm=5.0, orientation="LPS", motion_deg=2.0, seed=3))
    paths = write_phantom(ph, tmp / "raw", subject="sub-01")
    out = tmp / "out"
    code = main(["run", "--dwi", str(paths["dwi"]), "--out", str(out),
                 "--subject-id", "sub-01", "--no-gibbs"])
    assert code == 0
    return ph, out / "sub-01"


def test_outputs_have_bids_derivative_names_and_sidecars(phantom_run):
    _, sub = phantom_run
    dwi = sub / "dwi"
    for param in ("fa", "md", "rd", "ad", "colorfa"):
        assert (dwi / f"sub-01_space-dwi_model-tensor_param-{param}_dwimap.nii.gz").exists()
    side = json.loads((dwi / "sub-01_space-dwi_model-tensor_param-md_dwimap.json").read_text())
    assert side["Units"] == "mm^2/s"
    prep = json.loads((dwi / "sub-01_space-dwi_desc-preproc_dwi.json").read_text())
    steps = prep["CsttoolPreprocessing"]
    assert steps["options"]["motion_correction"] is True and steps["max_fd_mm"] > 0
    assert prep["Manufacturer"]  # acquisition metadata carried through from the import
    assert (sub / "figures" / "sub-01_desc-tensor_qc.png").stat().st_size > 10_000
    img = nib.load(dwi / "sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_fa_matches_truth_in_world_space(phantom_run):
    """FA from the full pipeline (LPS input, moved head) equals the truth where the tract is pure."""
    ph, sub = phantom_run
    fa_img = nib.load(sub / "dwi" / "sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz")
    fa_on_truth_grid = on_truth_grid(fa_img, ph)
    for structure in ("cst_left", "cst_right", "callosum"):
        core = ph.truth[structure] & (ph.truth[f"f_{structure}"] > 0.9)
        assert core.sum() > 20, structure
        error = fa_on_truth_grid[core].mean() - ph.truth["fa"][core].mean()
        assert abs(error) < 0.05, f"{structure}: mean FA error {error:+.3f}"


def test_principal_direction_points_along_the_cst(phantom_run):
    """b-vector conventions end to end: the CST's eigenvector matches the true direction in world space."""
    ph, sub = phantom_run
    v1_img = nib.load(sub / "dwi" / "sub-01_space-dwi_model-tensor_param-v1_dwimap.nii.gz")
    v1_world = gradients.voxel_to_world(np.asarray(v1_img.dataobj).reshape(-1, 3), v1_img.affine)
    v1_world = v1_world.reshape(v1_img.shape)
    v1_on_truth = on_truth_grid(nib.Nifti1Image(v1_world, v1_img.affine), ph)   # 4D: the vector axis is kept
    core = ph.truth["cst_left"] | ph.truth["cst_right"]
    cosine = np.abs(np.sum(v1_on_truth[core] * ph.truth["v1_world"][core], axis=-1))
    assert np.median(cosine) > 0.9
