"""A thick-slice clinical protocol (3×3×6 mm) is tracked, not rejected (README: the voxel rule).

The scan is derived from the axial Canon PA scan in ``../shared/data`` by averaging each pair
of adjacent 3 mm slices into one 6 mm slice (what a thicker slice profile acquires), with the
affine's slice axis doubled and its origin moved to the pair's centre. ``csttool run`` with
the default options must warn about the slices and find both CSTs with a plausible FA.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SCAN = "canon_galan_dti12_b1500/nifti/3000_DTI_PA-ortho_cl"


def _thick_slices(source: Path, target: Path) -> Path:
    """Write ``target``.nii.gz (+ bval/bvec/json) with pairs of slices averaged (slice axis 2)."""
    img = nib.load(f"{source}.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    n = data.shape[2] // 2 * 2
    thick = (data[:, :, 0:n:2] + data[:, :, 1:n:2]) / 2
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 2] / 2          # the centre of the first pair
    affine[:3, 2] *= 2
    nib.save(nib.Nifti1Image(thick, affine), f"{target}.nii.gz")
    for ext in ("bval", "bvec", "json"):
        shutil.copy(f"{source}.{ext}", f"{target}.{ext}")
    return Path(f"{target}.nii.gz")


def test_six_mm_slices_are_tracked_with_a_warning(shared_data, tmp_path):
    dwi = _thick_slices(shared_data / SCAN, tmp_path / "thick_dwi")
    assert np.allclose(nib.load(dwi).header.get_zooms()[:3], (3, 3, 6), atol=1e-3)
    proc = subprocess.run([str(Path(sys.executable).parent / "csttool"), "run", "--dwi", str(dwi), "--out",
                           str(tmp_path / "out"), "--subject-id", "sub-01", "--nprocs", "2"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 mm slices (voxel size 3×3×6 mm)" in proc.stderr, "the thick slices are said"
    with open(tmp_path / "out" / "sub-01" / "dwi" / "sub-01_desc-summary_metrics.tsv", newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    for side in ("left", "right"):
        assert int(row[f"streamline_count_{side}"]) >= 50, row
        assert 0.4 <= float(row[f"fa_mean_{side}"]) <= 0.7, row
    assert "cst_not_covered" not in row["flags"]
