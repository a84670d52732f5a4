"""Import stage on small synthetic NIfTIs: loading, validation errors, reorientation, writing."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.config import B0_THRESHOLD
from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.science.dicom import convert_dicom, find_dcm2niix
from csttool_nipype.science.dwi_import import drop_derived_volumes, import_dwi, load_dwi, to_ras, validate_dwi
from csttool_nipype.science.dwi_io import DWIData, find_sidecars, save_dwi

SHAPE = (6, 7, 5)
# b0 + 6 non-collinear directions (world-agnostic: these are FSL-frame rows).
DIRS = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
     [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=float)
DIRS[4:] /= np.sqrt(2)
BVALS = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000], dtype=float)
# LAS storage with 2 mm voxels and a small rotation about z, so frames really differ.
_c, _s = np.cos(0.2), np.sin(0.2)
AFFINE_LAS = np.array([[-2 * _c, -2 * _s, 0, 10], [-2 * _s, 2 * _c, 0, -20], [0, 0, 2, 5], [0, 0, 0, 1]])
# Sagittal-like storage: axes point P, S, R.
AFFINE_PSR = np.array([[0, 0, 2, -5], [-2, 0, 0, 8], [0, 2, 0, -3], [0, 0, 0, 1]], dtype=float)


def _write_table(path, rows):
    path.write_text("".join(" ".join(f"{v:.10g}" for v in np.atleast_1d(r)) + "\n" for r in rows))


def write_dwi(tmp_path, name="dwi", *, data=None, affine=AFFINE_LAS, bvals=BVALS, bvecs_fsl=DIRS,
              meta=None, ext=".nii.gz"):
    """Write a NIfTI with FSL bval/bvec (and optional JSON) files; return the NIfTI path."""
    if data is None:
        rng = np.random.default_rng(0)
        data = rng.uniform(50, 100, SHAPE + (len(bvals),)).astype(np.float32)
        data[..., np.asarray(bvals) <= B0_THRESHOLD] *= 10
    nii = tmp_path / f"{name}{ext}"
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(nii))
    _write_table(tmp_path / f"{name}.bval", [np.asarray(bvals, float)])
    _write_table(tmp_path / f"{name}.bvec", np.asarray(bvecs_fsl, float).T)
    if meta is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    return nii


def check_error(excinfo, *fragments):
    """The InputError message is one line and contains each fragment."""
    msg = str(excinfo.value)
    assert "\n" not in msg
    for frag in fragments:
        assert str(frag) in msg, (frag, msg)
    return msg


# ----------------------------------------------------------------------- loading


def test_valid_file_loads(tmp_path):
    nii = write_dwi(tmp_path, meta={"PhaseEncodingDirection": "j-", "RepetitionTime": 3.0})
    dwi = load_dwi(nii)
    assert dwi.data.shape == SHAPE + (7,) and dwi.data.dtype == np.float32
    np.testing.assert_allclose(dwi.affine, AFFINE_LAS)
    np.testing.assert_array_equal(dwi.bvals, BVALS)
    # LAS (det < 0): the FSL frame equals the voxel frame.
    np.testing.assert_allclose(dwi.bvecs_voxel, gradients.fsl_to_voxel(DIRS, AFFINE_LAS), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs_voxel[1:], axis=1), 1)
    assert dwi.metadata["RepetitionTime"] == 3.0
    assert dwi.source == str(nii)


def test_explicit_paths_and_uncompressed_nifti(tmp_path):
    nii = write_dwi(tmp_path, name="a", ext=".nii")
    (tmp_path / "grads").mkdir()
    bval = (tmp_path / "a.bval").rename(tmp_path / "grads" / "b.txt")
    bvec = (tmp_path / "a.bvec").rename(tmp_path / "grads" / "v.txt")
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "a.nii", "a.bval")
    assert load_dwi(nii, bval=bval, bvec=bvec).data.shape[3] == 7


def test_find_sidecars(tmp_path):
    nii = write_dwi(tmp_path, name="sub-01_dwi", meta={})
    assert find_sidecars(nii) == (tmp_path / "sub-01_dwi.bval", tmp_path / "sub-01_dwi.bvec",
                                  tmp_path / "sub-01_dwi.json")
    assert find_sidecars(tmp_path / "other.nii") == (None, None, None)


def test_bvecs_as_n_by_3_accepted(tmp_path):
    nii = write_dwi(tmp_path)
    _write_table(tmp_path / "dwi.bvec", DIRS)  # one vector per row
    np.testing.assert_allclose(load_dwi(nii).bvecs_voxel, DIRS, atol=1e-9)


def test_nearly_unit_bvecs_normalised(tmp_path):
    nii = write_dwi(tmp_path, bvecs_fsl=DIRS * 1.05)
    np.testing.assert_allclose(np.linalg.norm(load_dwi(nii).bvecs_voxel[1:], axis=1), 1)


# ------------------------------------------------------------------ input errors


def test_missing_bval(tmp_path):
    nii = write_dwi(tmp_path)
    (tmp_path / "dwi.bval").unlink()
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "dwi.bval")


def test_bval_count_differs_from_volumes(tmp_path):
    nii = write_dwi(tmp_path)
    _write_table(tmp_path / "dwi.bval", [BVALS[:-1]])
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "6 b-values", "7 b-vectors", "7 volumes")


def test_bvec_wrong_shape(tmp_path):
    nii = write_dwi(tmp_path)
    _write_table(tmp_path / "dwi.bvec", np.ones((4, 7)))
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.bvec", "3×N or N×3", "4×7")


def test_unparseable_bval(tmp_path):
    nii = write_dwi(tmp_path)
    (tmp_path / "dwi.bval").write_text("0 1000 abc\n")
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.bval", "not numeric")


def test_3d_image(tmp_path):
    nii = write_dwi(tmp_path, data=np.ones(SHAPE, np.float32), bvals=[0], bvecs_fsl=[[0, 0, 0]])
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "3D", "4D")


def test_no_b0(tmp_path):
    nii = write_dwi(tmp_path, bvals=np.full(7, 1000.0), bvecs_fsl=np.vstack([DIRS[1:], DIRS[1]]))
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "no b=0", "1000")


def test_fewer_than_6_directions(tmp_path):
    axes = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, 1, 0], [0, 0, -1]], float)
    nii = write_dwi(tmp_path, bvecs_fsl=axes)
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "only 3 distinct", "6 non-collinear")


def test_non_finite_voxels(tmp_path):
    data = np.ones(SHAPE + (7,), np.float32)
    data[1, 2, 3, 4] = np.nan
    data[0, 0, 0, 5] = np.inf
    nii = write_dwi(tmp_path, data=data)
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "2 voxel(s)", "volume 4")


def test_truncated_nifti_gz(tmp_path):
    nii = write_dwi(tmp_path)
    raw = nii.read_bytes()
    nii.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "truncated or corrupt")


def test_zero_bvec_for_dw_volume_rejected_by_load(tmp_path):
    dirs = np.vstack([DIRS, [0, 0, 0]])
    nii = write_dwi(tmp_path, bvals=np.append(BVALS, 1000), bvecs_fsl=dirs)
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "volume(s) 7", "zero b-vector")


def test_bvec_far_from_unit(tmp_path):
    nii = write_dwi(tmp_path, bvecs_fsl=DIRS * 0.5)
    with pytest.raises(InputError) as ei:
        load_dwi(nii)
    check_error(ei, "dwi.nii.gz", "length 0.5")


@pytest.mark.parametrize(
    "affine, fragment",
    [(np.diag([0.01, 0.01, 0.01, 1.0]), "outside 0.1–20 mm"),
     (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "singular")],
)
def test_bad_affine(tmp_path, affine, fragment):
    dwi = load_dwi(write_dwi(tmp_path))
    dwi.affine = affine
    with pytest.raises(InputError) as ei:
        validate_dwi(dwi)
    check_error(ei, "dwi.nii.gz", fragment)


def test_import_needs_exactly_one_input(tmp_path):
    with pytest.raises(InputError):
        import_dwi()
    with pytest.raises(InputError):
        import_dwi(nifti=tmp_path / "a.nii.gz", dicom=tmp_path)


# ----------------------------------------------------------------------- DICOM


def test_dcm2niix_is_found():
    assert find_dcm2niix()


def test_convert_dicom_empty_folder(tmp_path):
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    with pytest.raises(InputError) as ei:
        convert_dicom(empty, tmp_path / "work")
    check_error(ei, "empty_dicom", "empty")


def test_convert_dicom_text_files(tmp_path):
    folder = tmp_path / "not_dicom"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello\n")
    (folder / "sub" / "IM0001.dcm").write_text("not a dicom file either\n")
    with pytest.raises(InputError) as ei:
        convert_dicom(folder, tmp_path / "work")
    check_error(ei, "not_dicom", "no DICOM files found")
    assert (tmp_path / "work" / "dcm2niix.log").is_file()


def test_convert_dicom_missing_and_corrupt_gz(tmp_path):
    with pytest.raises(InputError) as ei:
        convert_dicom(tmp_path / "nowhere", tmp_path / "work")
    check_error(ei, "nowhere", "not found")
    bad = tmp_path / "scan.dcm.gz"
    bad.write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(InputError) as ei:
        convert_dicom(bad, tmp_path / "work")
    check_error(ei, "scan.dcm.gz", "decompress")


# ------------------------------------------------------------- transformations


def _world_points(affine, shape):
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk, ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("affine, pe_in, pe_out", [(AFFINE_LAS, "j-", "j-"), (AFFINE_PSR, "i-", "j")])
def test_to_ras_keeps_world_vectors_and_values(tmp_path, affine, pe_in, pe_out):
    dwi = load_dwi(write_dwi(tmp_path, affine=affine, meta={"PhaseEncodingDirection": pe_in}))
    ras = to_ras(dwi)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    np.testing.assert_allclose(gradients.voxel_to_world(ras.bvecs_voxel, ras.affine),
                               gradients.voxel_to_world(dwi.bvecs_voxel, dwi.affine), atol=1e-12)
    # Every RAS voxel holds the value of the original voxel at the same world point.
    ijk_new, world = _world_points(ras.affine, ras.data.shape[:3])
    ijk_old = np.rint((world - dwi.affine[:3, 3]) @ np.linalg.inv(dwi.affine[:3, :3]).T).astype(int)
    np.testing.assert_array_equal(ras.data[tuple(ijk_new.T)], dwi.data[tuple(ijk_old.T)])
    assert ras.metadata["PhaseEncodingDirection"] == pe_out
    assert dwi.metadata["PhaseEncodingDirection"] == pe_in  # input untouched


def test_drop_derived_volumes(tmp_path):
    dirs = np.vstack([DIRS[:3], [0, 0, 0], DIRS[3:]])
    bvals = np.insert(BVALS, 3, 1000)
    dwi = DWIData(np.zeros(SHAPE + (8,), np.float32), AFFINE_LAS, bvals, dirs, {}, "x")
    dwi.data[..., 3] = 7
    out, dropped = drop_derived_volumes(dwi)
    assert dropped == [3]
    assert out.data.shape[3] == 7 and not np.any(out.data == 7)
    np.testing.assert_array_equal(out.bvals, BVALS)
    np.testing.assert_array_equal(out.bvecs_voxel, DIRS)
    assert dwi.data.shape[3] == 8  # input untouched
    # b0 volumes (zero vector, b ≤ threshold) are never dropped.
    assert drop_derived_volumes(out)[1] == []


def test_import_dwi_from_nifti_records_steps(tmp_path):
    dirs = np.vstack([DIRS, [0, 0, 0]])
    nii = write_dwi(tmp_path, bvals=np.append(BVALS, 1000), bvecs_fsl=dirs, meta={"SeriesNumber": 5})
    dwi = import_dwi(nifti=nii)
    rec = dwi.metadata["csttool_import"]
    assert rec["source"] == str(nii) and rec["source_type"] == "nifti"
    assert rec["dropped_volumes"] == [7]
    assert rec["original_orientation"] == "LAS" and rec["orientation"] == "RAS"
    assert dwi.data.shape == SHAPE + (7,) and dwi.metadata["SeriesNumber"] == 5
    json.dumps(dwi.metadata)  # serialisable


def test_save_and_reload_roundtrip(tmp_path):
    dwi = import_dwi(nifti=write_dwi(tmp_path, meta={"EchoTime": 0.08}))
    paths = save_dwi(dwi, tmp_path / "out" / "sub-01_dwi")
    assert set(paths) == {"nifti", "bval", "bvec", "json"} and all(p.is_file() for p in paths.values())
    again = load_dwi(paths["nifti"])
    np.testing.assert_array_equal(again.data, dwi.data)
    np.testing.assert_allclose(again.affine, dwi.affine, atol=1e-5)
    np.testing.assert_array_equal(again.bvals, dwi.bvals)
    np.testing.assert_allclose(again.bvecs_world, dwi.bvecs_world, atol=1e-7)
    # RAS storage (det > 0): the file's x components are negated relative to voxel axes.
    on_disk = np.loadtxt(paths["bvec"]).T
    np.testing.assert_allclose(on_disk[:, 0], -dwi.bvecs_voxel[:, 0], atol=1e-7)
    assert again.metadata["EchoTime"] == 0.08
    assert again.metadata["csttool_import"]["original_orientation"] == "LAS"


def test_missing_nifti(tmp_path):
    with pytest.raises(InputError) as ei:
        load_dwi(tmp_path / "absent_dwi.nii.gz")
    check_error(ei, "absent_dwi.nii.gz", "not found")


@pytest.mark.parametrize("zooms, outcome", [
    ((4.0, 4.0, 4.0), "ok"),
    ((1.8, 1.8, 5.0), "thick"),          # a clinical axial protocol
    ((5.0, 1.8, 1.8), "thick"),          # the same, sliced sagittally
    ((2.0, 2.0, 6.0), "thick"),
    ((5.0, 5.0, 5.0), "in-plane voxels above 4 mm"),
    ((4.5, 4.5, 2.0), "in-plane voxels above 4 mm"),
    ((2.0, 2.0, 7.0), "slices thicker than 6 mm"),
])
def test_voxel_size_rule_for_tracking(tmp_path, caplog, zooms, outcome):
    """In-plane edges (the two finest) up to 4 mm and slices up to 6 mm are tracked; thicker
    slices than 4 mm are said in the log (README: the rule and why)."""
    nii = write_dwi(tmp_path, affine=np.diag([*zooms, 1.0]))
    if outcome in ("ok", "thick"):
        with caplog.at_level("WARNING"):
            import_dwi(nii)
        said = [r.getMessage() for r in caplog.records if "thick slices" in r.getMessage()]
        assert bool(said) == (outcome == "thick"), said
    else:
        with pytest.raises(InputError) as excinfo:
            import_dwi(nii)
        check_error(excinfo, nii.name, outcome, "too coarse to track")
