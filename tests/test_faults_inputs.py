"""Fault matrix, input rows not covered elsewhere: `csttool run` on a copy of the small phantom
(``tests/conftest.py``) with one real defect written into its files; what the user sees is one
line naming the file, exit code 2, and nothing in OUT."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.cli.main import main


def _copy(phantom: Path, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    for f in phantom.iterdir():
        shutil.copy(f, folder / f.name)
    stem = folder / "sub-01_dwi"
    return {"nii": folder / "sub-01_dwi.nii.gz", "bval": Path(f"{stem}.bval"), "bvec": Path(f"{stem}.bvec")}


def _run(files, out, capsys, *extra):
    code = main(["run", "--dwi", str(files["nii"]), "--out", str(out), "--stages", "import", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in f" {line}" or "Traceback" in line]
    return code, err


def _rescale_affine(nii: Path, matrix: np.ndarray) -> None:
    img = nib.load(nii)
    affine = img.affine.copy()
    affine[:3, :3] = matrix @ affine[:3, :3]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), nii)


def _bvals_ms(files):
    files["bval"].write_text(" ".join(f"{float(b) / 1000:g}" for b in files["bval"].read_text().split()) + "\n")


def _voxels_5mm(files):
    _rescale_affine(files["nii"], np.eye(3) * 1.25)          # 4 mm -> 5 mm, same voxels


def _one_direction(files):
    bvecs = np.loadtxt(files["bvec"])
    bvecs[:, np.linalg.norm(bvecs, axis=0) > 0] = np.array([[0.6], [0.8], [0.0]])
    np.savetxt(files["bvec"], bvecs, fmt="%.6f")


def _zero_bvecs(files):
    np.savetxt(files["bvec"], np.zeros_like(np.loadtxt(files["bvec"])), fmt="%.1f")


def _long_bvecs(files):
    np.savetxt(files["bvec"], 2.0 * np.loadtxt(files["bvec"]), fmt="%.6f")


CASES = {
    "b-values in ms/µm²": (_bvals_ms, "b-values look like ms/µm²"),
    "voxels larger than 4 mm": (_voxels_5mm, "too coarse to track"),
    "a single direction": (_one_direction, "only 1 distinct gradient direction"),
    "b-vectors all zero": (_zero_bvecs, "holds no gradient directions"),
    "b-vectors not unit length": (_long_bvecs, "expected 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, small_phantom, tmp_path, capsys):
    spoil, expected = CASES[case]
    files = _copy(small_phantom, tmp_path / "raw")
    spoil(files)
    out = tmp_path / "out"
    code, err = _run(files, out, capsys)
    assert code == 2, err
    assert len(err) == 1 and expected in err[0] and str(files["nii"]) in err[0], err
    assert not (out / "sub-01").exists()


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def test_extreme_oblique_affine_is_imported_without_resampling(small_phantom, tmp_path, capsys):
    """Row "extreme oblique affine": 40° about x then 40° about z (no axis is near a world axis
    by less than 40°): the import works, reorients to the closest RAS+ axes without resampling,
    and keeps every voxel's world position and the b-vectors' world directions."""
    files = _copy(small_phantom, tmp_path / "raw")
    _rescale_affine(files["nii"], _rotation(2, 40.0) @ _rotation(0, 40.0))
    source = nib.load(files["nii"])
    out = tmp_path / "out"
    code, err = _run(files, out, capsys)
    assert code == 0 and not err, err
    imported = next((out / "sub-01" / "dwi").glob("*_dwi.nii.gz"))
    result = nib.load(imported)
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")
    assert sorted(result.shape) == sorted(source.shape)
    centre_src = source.affine @ np.r_[(np.array(source.shape[:3]) - 1) / 2, 1]
    centre_out = result.affine @ np.r_[(np.array(result.shape[:3]) - 1) / 2, 1]
    np.testing.assert_allclose(centre_out, centre_src, atol=1e-4)
    np.testing.assert_allclose(np.sort(np.asarray(result.dataobj).ravel()),
                               np.sort(np.asarray(source.dataobj).ravel()), rtol=1e-3)


def test_non_diffusion_dicom_series_is_one_line(shared_data, tmp_path, capsys):
    """Row "non-diffusion DICOM series": the b=0 volume of the Philips series alone (the files
    of one volume, a T2-weighted series without diffusion weighting) is refused in one line."""
    series = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "dicom" / "601_WIP_dti_ax"
    folder = tmp_path / "t2"
    folder.mkdir()
    files = sorted(series.iterdir())
    for f in files[::17]:                     # 17 volumes (16 + a derived trace) per slice
        (folder / f.name).symlink_to(f)
    out = tmp_path / "out"
    code = main(["run", "--dicom", str(folder), "--out", str(out), "--stages", "import"])
    err = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in f" {line}" or "Traceback" in line]
    assert code == 2 and len(err) == 1, err
    assert str(folder) in err[0] or "t2" in err[0], err
    assert not (out / "sub-01").exists()
