"""Registration to MNI and CST ROIs on real scans from ../shared/data (skipped when absent).

A quick tensor fit (dipy TensorModel on a median_otsu mask) gives the FA that is
registered. The thresholds on the quality numbers come from measurements on these scans
(see each test): the registered result, the same result displaced by 3 mm, and chance
(uniform noise in the mask scored against the registered template).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from csttool_nipype.reports.figures import registration_qc_png
from csttool_nipype.science import gradients
from csttool_nipype.science import registration as reg
from csttool_nipype.science import templates, transforms
from csttool_nipype.science import rois as roi_mod

pytestmark = pytest.mark.realdata

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHILIPS = SHARED / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax"
CANON_SAG = SHARED / "canon_galan_dti12_b1500" / "nifti" / "10000_SAG_DTI_PA-COR_20d_cl"

if not SHARED.is_dir():
    pytest.skip(f"real test data folder {SHARED} is absent", allow_module_level=True)


def _fit(base: Path):
    """FA, mask, affine of a dcm2niix NIfTI + .bval/.bvec (FSL convention), as stored on disk."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.segment.mask import median_otsu

    nii = base.with_name(base.name + ".nii.gz")
    if not nii.is_file():
        pytest.skip(f"{nii} is absent")
    img = nib.load(nii)
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals = np.loadtxt(base.with_name(base.name + ".bval"))
    bvecs = gradients.fsl_to_voxel(np.loadtxt(base.with_name(base.name + ".bvec")).T, img.affine)
    b0 = data[..., bvals < 50].mean(axis=-1)
    _, mask = median_otsu(b0, median_radius=2, numpass=1)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=50)).fit(data, mask=mask)
    fa = np.clip(np.nan_to_num(fit.fa), 0, 1).astype(np.float32)
    return fa, mask, img.affine, b0


def _centroid(roi, affine):
    return nib.affines.apply_affine(affine, ndimage.center_of_mass(roi))


def _register_and_check(base, qc_png, min_wm_dice):
    fa, mask, affine, b0 = _fit(base)
    result = reg.register_to_mni(fa, mask, affine, b0=b0)
    tpl = templates.load_template(result.template_resolution_mm)
    wm = transforms.warp_to_subject(tpl.wm, tpl.affine, result, fa.shape, affine)
    out = registration_qc_png(fa, affine, wm, qc_png, title=f"{base.name}: {result.quality}")
    assert out.is_file() and out.stat().st_size > 10_000

    q = result.quality
    assert q["wm_dice"] >= min_wm_dice, q
    assert q["wm_dice"] > q["affine_wm_dice"]  # SyN improves on the affine stage
    assert q["brain_dice"] >= 0.9, q
    assert q["acceptable"]

    rois = roi_mod.cst_rois(result, fa.shape, affine, mask=mask)
    c = {name: _centroid(roi, affine) for name, roi in rois.items()}
    # brainstem below the motor cortex (world S), by several centimetres
    assert c["brainstem"][2] < c["precentral_left"][2] - 40
    assert c["brainstem"][2] < c["precentral_right"][2] - 40
    # left of the midline is the subject's left: world x (RAS+) smaller
    for stem in ("precentral", "capsule", "peduncle"):
        assert c[f"{stem}_left"][0] < c["midline"][0] < c[f"{stem}_right"][0], stem
    # waypoints ordered along the tract: peduncle below capsule below cortex
    for side in ("left", "right"):
        assert c[f"peduncle_{side}"][2] < c[f"capsule_{side}"][2] < c[f"precentral_{side}"][2]
    cov = roi_mod.coverage(rois, mask)
    assert cov["cst_covered"], cov["missing"]
    return result


def test_philips_las_registration_and_rois(tmp_path):
    """Philips b=2000, 15 directions, LAS, 3 mm.

    Measured: wm_dice 0.74 (affine stage alone 0.62); the same result displaced by 3 mm
    along z scores 0.65, by 6 mm 0.54, chance 0.30. The threshold 0.68 therefore fails a
    registration that is off by about 3 mm or more.
    """
    _register_and_check(PHILIPS, tmp_path / "qc_philips.png", min_wm_dice=0.68)


def test_canon_oblique_sagittal_psr_registration_and_rois(tmp_path):
    """Canon b=1500, 12 directions, sagittal slices tilted by 20 degrees, PSR voxel order.

    A noisier FA (12 directions) gives lower Dice numbers: measured wm_dice 0.57 (affine
    0.50); displaced by 3 mm 0.51, by 6 mm 0.42, chance 0.31. Threshold 0.52.
    """
    nii = CANON_SAG.with_name(CANON_SAG.name + ".nii.gz")
    if not nii.is_file():
        pytest.skip(f"{nii} is absent")
    assert nib.aff2axcodes(nib.load(nii).affine) == ("P", "S", "R")
    _register_and_check(CANON_SAG, tmp_path / "qc_canon_sag.png", min_wm_dice=0.52)
