"""Import stage on real scans from ../shared/data (Philips classic DICOM, Canon enhanced/classic gz DICOM).

DICOM conversions run once per module (dcm2niix takes about a second per series).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.science.dicom import OUTPUT_DIRNAME, convert_dicom
from csttool_nipype.science.dwi_import import drop_derived_volumes, import_dwi, load_dwi, to_ras
from csttool_nipype.science.dwi_io import DWIData

pytestmark = pytest.mark.realdata

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHILIPS = DATA / "philips_achieva_vanderbilt_dti15_b2000"
CANON = DATA / "canon_galan_dti12_b1500"


@pytest.fixture(scope="module", autouse=True)
def _need_data():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not found: real-data tests need ../shared/data next to the project")


def _world(dwi: DWIData) -> np.ndarray:
    return gradients.voxel_to_world(dwi.bvecs_voxel, dwi.affine)


def assert_same_series(a: DWIData, b: DWIData) -> None:
    """Same voxels, affine, b-values and signed world-space b-vectors (both already in RAS)."""
    assert a.data.shape == b.data.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_allclose(a.data, b.data)
    np.testing.assert_array_equal(a.bvals, b.bvals)
    np.testing.assert_allclose(_world(a), _world(b), atol=1e-6)


@pytest.fixture(scope="module")
def philips(tmp_path_factory):
    work = tmp_path_factory.mktemp("philips")
    return import_dwi(dicom=PHILIPS / "dicom" / "601_WIP_dti_ax", work_dir=work), work


@pytest.fixture(scope="module")
def philips_ref():
    return import_dwi(nifti=PHILIPS / "nifti" / "601_WIP_dti_ax.nii.gz")


def test_philips_dicom_matches_reference_nifti(philips, philips_ref):
    dwi, _ = philips
    assert dwi.data.shape == (80, 80, 40, 16)
    assert nib.aff2axcodes(dwi.affine) == ("R", "A", "S")
    assert_same_series(dwi, philips_ref)
    rec = dwi.metadata["csttool_import"]
    assert rec["original_orientation"] == "LAS" and rec["source_type"] == "dicom"
    # dcm2niix itself takes the isotropic image out of the 4D series (see dcm2niix.log),
    # so nothing is left for drop_derived_volumes.
    assert rec["dcm2niix_removed_volumes"] == 1 and rec["dropped_volumes"] == []
    assert dwi.metadata["SeriesNumber"] == 601


def _public_diffusion_tags(path: Path) -> tuple[float, tuple[float, float, float]]:
    """(0018,9087) b-value and (0018,9089) gradient orientation (patient LPS) from an
    explicit-VR little-endian DICOM header, read without a DICOM library."""
    raw = path.read_bytes()
    raw = raw[: raw.find(b"\xe0\x7f\x10\x00")]  # stop before pixel data
    i = raw.find(b"\x18\x00\x87\x90FD")
    j = raw.find(b"\x18\x00\x89\x90FD")
    assert i >= 0 and j >= 0, path
    return struct.unpack("<d", raw[i + 8:i + 16])[0], struct.unpack("<3d", raw[j + 8:j + 32])


def test_philips_world_bvecs_match_dicom_tags(philips):
    """Independent of dcm2niix: the public DICOM gradient tags, LPS -> RAS, are our world vectors."""
    dwi, _ = philips
    tags = {_public_diffusion_tags(f) for f in sorted((PHILIPS / "dicom" / "601_WIP_dti_ax").glob("*.dcm"))}
    assert (2000.0, (0.0, 0.0, 0.0)) in tags  # the scanner-derived isotropic image
    dicom_ras = np.array([[-g[0], -g[1], g[2]] for b, g in tags if b > 50 and any(g)])
    ours = _world(dwi)[dwi.bvals > 50]
    assert len(dicom_ras) == len(ours) == 15
    # Signed match of each vector to one DICOM gradient. Most agree to <1e-4; one differs by
    # 6e-4 (0.03°) after dcm2niix's 6-digit text and the float32 NIfTI affine, hence 1e-3.
    for v in ours:
        assert np.min(np.linalg.norm(dicom_ras - v, axis=1)) < 1e-3, v


def test_philips_derived_volume_dropped_from_dcm2niix_adc_file(philips, philips_ref):
    """dcm2niix's *_ADC.nii.gz holds the full 17-volume series (isotropic image last): with the
    DICOM's b=2000 / zero-gradient entry for it, drop_derived_volumes gives back the reference."""
    _, work = philips
    adc = work / OUTPUT_DIRNAME / "601_dti_ax_ADC.nii.gz"
    img = nib.load(adc)
    assert img.shape == (80, 80, 40, 17)
    ref = load_dwi(PHILIPS / "nifti" / "601_WIP_dti_ax.nii.gz")  # LAS, like the ADC file
    full = DWIData(img.get_fdata(dtype=np.float32), img.affine, np.append(ref.bvals, 2000.0),
                   np.vstack([ref.bvecs_voxel, [0.0, 0.0, 0.0]]), {}, str(adc))
    out, dropped = drop_derived_volumes(full)
    assert dropped == [16]
    np.testing.assert_allclose(out.data, ref.data)
    np.testing.assert_array_equal(out.bvals, ref.bvals)


def test_canon_enhanced_gz_matches_reference_nifti(tmp_path):
    dwi = import_dwi(dicom=CANON / "dicom_enhanced" / "3000.dcm.gz", work_dir=tmp_path)
    ref = import_dwi(nifti=CANON / "nifti" / "3000_DTI_PA-ortho_cl.nii.gz")
    assert dwi.data.shape == (80, 80, 40, 13)
    assert_same_series(dwi, ref)
    assert dwi.metadata["csttool_import"]["dropped_volumes"] == []
    assert (tmp_path / "csttool_dicom_input" / "3000.dcm").is_file()  # gunzipped into work_dir


def test_canon_classic_gz_folder_matches_reference_bval_bvec(tmp_path):
    dwi = import_dwi(dicom=CANON / "dicom_classic_gz" / "4000_DTI_AP-ortho", work_dir=tmp_path)
    assert dwi.data.shape == (80, 80, 40, 13)
    rec = dwi.metadata["csttool_import"]
    ref_bval = np.loadtxt(CANON / "dicom_classic_gz" / "4000_DTI_AP-ortho_cl.bval")
    ref_bvec_fsl = np.loadtxt(CANON / "dicom_classic_gz" / "4000_DTI_AP-ortho_cl.bvec").T
    np.testing.assert_array_equal(dwi.bvals, ref_bval)
    # The reference has no NIfTI, so no affine of its own. Its .bvec is in the FSL frame of
    # dcm2niix's output grid, which is the grid we converted before reorienting to RAS
    # (recorded as original_affine). Check that grid against the reference JSON's
    # ImageOrientationPatientDICOM (LPS row/column cosines; dcm2niix flips the rows, so the
    # NIfTI j axis is minus the column cosine), then compare signed world-space vectors.
    original = np.asarray(rec["original_affine"])
    assert rec["original_orientation"] == "LAS"
    iop = np.array(json.loads((CANON / "dicom_classic_gz" / "4000_DTI_AP-ortho_cl.json").read_text())
                   ["ImageOrientationPatientDICOM"])
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    rot = original[:3, :3] / np.linalg.norm(original[:3, :3], axis=0)
    np.testing.assert_allclose(rot[:, 0], iop[:3] * lps_to_ras, atol=1e-4)
    np.testing.assert_allclose(rot[:, 1], -iop[3:] * lps_to_ras, atol=1e-4)
    ref_world = gradients.voxel_to_world(gradients.fsl_to_voxel(ref_bvec_fsl, original), original)
    np.testing.assert_allclose(_world(dwi), ref_world, atol=1e-5)


def test_canon_axial_and_sagittal_niftis_load_and_become_ras():
    axial = load_dwi(CANON / "nifti" / "3000_DTI_PA-ortho_cl.nii.gz")
    sag = load_dwi(CANON / "nifti" / "10000_SAG_DTI_PA-COR_20d_cl.nii.gz")
    assert nib.aff2axcodes(axial.affine) == ("L", "A", "S")
    assert nib.aff2axcodes(sag.affine) == ("P", "S", "R")
    for dwi in (axial, sag):
        ras = to_ras(dwi)
        assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
        assert ras.data.shape[3] == 13
        np.testing.assert_allclose(_world(ras), _world(dwi), atol=1e-12)
        # Both series use posterior-anterior phase encoding: in RAS voxel axes that is j.
        assert ras.metadata["PhaseEncodingAxis"] == "j"
    assert sag.metadata["PhaseEncodingAxis"] == "i"  # the loaded object is not modified


def test_several_diffusion_series_need_series(tmp_path):
    """Philips 601 (classic) + Canon 3000 (enhanced, gz) in one folder tree: both are listed,
    then one is picked by SeriesNumber or by a SeriesDescription substring."""
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    (mixed / "b" / "deeper").mkdir(parents=True)
    for f in (PHILIPS / "dicom" / "601_WIP_dti_ax").iterdir():
        (mixed / "a" / f.name).symlink_to(f)
    (mixed / "b" / "deeper" / "3000.dcm.gz").symlink_to(CANON / "dicom_enhanced" / "3000.dcm.gz")
    with pytest.raises(InputError) as ei:
        convert_dicom(mixed, tmp_path / "w1")
    msg = str(ei.value)
    assert "\n" not in msg and "mixed" in msg and "--series" in msg
    assert "601 'dti_ax'" in msg and "3000 'DTI_PA-ortho'" in msg
    nii, bval, bvec, js = convert_dicom(mixed, tmp_path / "w2", series="pa-ORTHO")
    assert nib.load(nii).shape == (80, 80, 40, 13) and js.is_file()
    assert np.loadtxt(bval).shape == (13,) and np.loadtxt(bvec).shape == (3, 13)
    nii, *_ = convert_dicom(mixed, tmp_path / "w3", series=601)
    assert nib.load(nii).shape == (80, 80, 40, 16)
