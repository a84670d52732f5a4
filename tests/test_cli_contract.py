"""What the entry points promise about their arguments (issue #16).

* Every invalid value stops with one line and exit code 2, before anything is written.
* Relative paths work (resolved against the current folder, once, at the entry point).
* ``--b0-threshold`` reaches the import: a b0 acquired at b=80 imports with 100.
* ``--stages import`` runs the import only.
* A volume too thin for the pipeline is INVALID INPUT before the workflow starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.cli.options import DEFAULT_TIMEOUT_MINUTES, resolve_timeout
from csttool_nipype.science.dwi_import import MIN_AXIS_EXTENT_MM, MIN_AXIS_VOXELS
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.phantom import make_phantom
from csttool_nipype.sims.writer import write_phantom

BIN = Path(sys.executable).parent
FAST = ["--denoise-method", "none", "--no-gibbs", "--no-motion-correction", "--nprocs", "1"]


def _cli(*argv, cwd=None, timeout=600):
    """Run an entry point as a user would; (exit code, stdout, stderr lines that are not INFO)."""
    proc = subprocess.run([str(BIN / argv[0]), *map(str, argv[1:])], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
    return proc.returncode, proc.stdout, errors


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom subject (3 mm, 12 directions) in its own folder."""
    tmp = tmp_path_factory.mktemp("contract")
    ph = make_phantom(PhantomSpec(voxel_size=3.0, n_directions=12, seed=3))
    paths = write_phantom(ph, tmp / "raw", subject="sub-01")
    return tmp, paths


def _bids(tmp: Path, paths) -> Path:
    bids = tmp / "bids"
    if not bids.exists():
        dwi = bids / "sub-01" / "dwi"
        dwi.mkdir(parents=True)
        for key in ("dwi", "bval", "bvec", "json"):
            (dwi / Path(paths[key]).name).write_bytes(Path(paths[key]).read_bytes())
        (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    return bids


# ------------------------------------------------------------------ invalid values


def _bad_value_cases(tmp: Path, paths):
    dwi = paths["dwi"]
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"global_options": {"preprocessing": True},
                                    "subjects": [{"id": "sub-01", "nifti": str(dwi)}]}))
    bad_global = tmp / "bad_global.json"
    bad_global.write_text(json.dumps({"global_options": {"fa_threshold": 1.5},
                                      "subjects": [{"id": "sub-01", "nifti": str(dwi)}]}))
    bad_subject = tmp / "bad_subject.json"
    bad_subject.write_text(json.dumps({"subjects": [{"id": "sub-01", "nifti": str(dwi), "options": {"gibbs": "no"}},
                                                    {"id": "sub-02", "nifti": str(dwi)}]}))
    bad_switch = tmp / "bad_switch.json"
    bad_switch.write_text(json.dumps({"global_options": {"preprocessing": "yes"},
                                      "subjects": [{"id": "sub-01", "nifti": str(dwi)}]}))
    bids = _bids(tmp, paths)
    return {
        "run --fa-threshold 1.5": ["csttool", "run", "--dwi", dwi, "--out", "{out}", "--fa-threshold", "1.5"],
        "run --nprocs 0": ["csttool", "run", "--dwi", dwi, "--out", "{out}", "--nprocs", "0"],
        "batch --nprocs 0": ["csttool", "batch", "--manifest", manifest, "--out", "{out}", "--nprocs", "0"],
        "batch --nprocs -1": ["csttool", "batch", "--manifest", manifest, "--out", "{out}", "--nprocs", "-1"],
        "batch --timeout-minutes -1": ["csttool", "batch", "--manifest", manifest, "--out", "{out}",
                                       "--timeout-minutes", "-1"],
        "batch --max-angle 0": ["csttool", "batch", "--manifest", manifest, "--out", "{out}", "--max-angle", "0"],
        "manifest global_options": ["csttool", "batch", "--manifest", bad_global, "--out", "{out}"],
        "manifest subject options": ["csttool", "batch", "--manifest", bad_subject, "--out", "{out}"],
        "manifest preprocessing switch": ["csttool", "batch", "--manifest", bad_switch, "--out", "{out}"],
        "bids-app --fa-threshold 1.5": ["csttool-nipype", bids, "{out}", "participant", "--fa-threshold", "1.5"],
        "bids-app --timeout-minutes -1": ["csttool-nipype", bids, "{out}", "participant", "--timeout-minutes", "-1"],
        "bids-app --nprocs 0": ["csttool-nipype", bids, "{out}", "participant", "--nprocs", "0"],
    }


CASES = ["run --fa-threshold 1.5", "run --nprocs 0", "batch --nprocs 0", "batch --nprocs -1",
         "batch --timeout-minutes -1", "batch --max-angle 0", "manifest global_options", "manifest subject options",
         "manifest preprocessing switch", "bids-app --fa-threshold 1.5", "bids-app --timeout-minutes -1",
         "bids-app --nprocs 0"]


@pytest.mark.parametrize("case", CASES)
def test_an_invalid_value_is_one_line_exit_2_and_writes_nothing(case, phantom, tmp_path):
    tmp, paths = phantom
    out = tmp_path / "out"
    argv = [str(out) if a == "{out}" else a for a in _bad_value_cases(tmp, paths)[case]]
    started = time.monotonic()
    code, _, errors = _cli(*argv, timeout=120)
    assert code == 2, (case, errors)
    assert len(errors) == 1 and "Traceback" not in errors[0], errors
    assert not out.exists(), f"{case}: {sorted(p.name for p in out.iterdir())}"
    assert time.monotonic() - started < 60   # returns at once (--nprocs 0 used to spin for ever)


def test_timeout_means_the_same_everywhere():
    assert resolve_timeout(None) == DEFAULT_TIMEOUT_MINUTES
    assert resolve_timeout(None, slurm=True) == float("inf")
    assert resolve_timeout(0) == float("inf") and resolve_timeout(0, slurm=True) == float("inf")
    assert resolve_timeout(30) == 30


# ------------------------------------------------------------------ paths, b0 threshold, stages


def test_relative_paths_work(phantom, tmp_path):
    """The README's first example, typed in the folder of the data."""
    _, paths = phantom
    folder = Path(paths["dwi"]).parent
    out = tmp_path / "deriv"
    code, _, errors = _cli("csttool", "run", "--dwi", Path(paths["dwi"]).name, "--out",
                           os.path.relpath(out, folder), "--subject-id", "sub-01", "--stages", "import",
                           cwd=folder)
    assert code == 0, errors
    assert (out / "sub-01" / "dwi" / "sub-01_space-dwi_desc-import_dwi.nii.gz").is_file()


def test_manifest_relative_paths_are_relative_to_the_manifest(phantom, tmp_path):
    _, paths = phantom
    raw = Path(paths["dwi"]).parent
    manifest = raw.parent / "relative_manifest.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-01", "nifti": f"{raw.name}/{Path(paths['dwi']).name}"}]}))
    code, stdout, errors = _cli("csttool", "batch", "--manifest", manifest.name, "--out",
                                os.path.relpath(tmp_path / "out", raw.parent), "--stages", "import",
                                cwd=raw.parent)
    assert code == 0, (stdout, errors)
    assert (tmp_path / "out" / "sub-01" / "dwi" / "sub-01_space-dwi_desc-import_dwi.nii.gz").is_file()


def test_stages_import_runs_the_import_only(phantom, tmp_path):
    _, paths = phantom
    out = tmp_path / "out"
    code, _, errors = _cli("csttool", "run", "--dwi", paths["dwi"], "--out", out, "--stages", "import",
                           "--nprocs", "1")
    assert code == 0, errors
    written = sorted(p.name for p in (out / "sub-01" / "dwi").iterdir())
    assert written == [f"sub-01_space-dwi_desc-import_dwi.{ext}" for ext in ("bval", "bvec", "json", "nii.gz")]
    nodes = {p.name for p in (out / "_work" / "sub-01").rglob("*") if p.is_dir()}
    assert "dwi_import" in nodes
    assert not nodes & {"denoise", "gibbs_unring", "motion_correct", "brain_mask", "fit_tensor"}, nodes
    # the imported series is the input, reoriented: same voxels, same b-values
    src, got = nib.load(paths["dwi"]), nib.load(out / "sub-01" / "dwi" / "sub-01_space-dwi_desc-import_dwi.nii.gz")
    assert got.shape == src.shape
    assert np.allclose(np.sort(np.asarray(got.dataobj).ravel()), np.sort(np.asarray(src.dataobj, np.float32).ravel()))


def test_b0_threshold_reaches_the_import(phantom, tmp_path):
    """A b0 acquired at b=80: rejected with the default threshold (50), imported and run with 100."""
    _, paths = phantom
    raw = tmp_path / "b80"
    raw.mkdir()
    for key in ("dwi", "bvec", "json"):
        (raw / Path(paths[key]).name).write_bytes(Path(paths[key]).read_bytes())
    bvals = np.loadtxt(paths["bval"])
    assert bvals[0] == 0
    bvals[bvals == 0] = 80
    (raw / Path(paths["bval"]).name).write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    dwi = raw / Path(paths["dwi"]).name

    code, _, errors = _cli("csttool", "run", "--dwi", dwi, "--out", tmp_path / "default", *FAST, "--stages", "tensor")
    # (a warning first says the b=80 volumes, with zero b-vectors, were dropped as scanner-derived images)
    errors = [e for e in errors if e.startswith("ERROR")]
    assert code == 2 and len(errors) == 1 and "no b=0 volume" in errors[0] and "b ≤ 50" in errors[0], errors

    out = tmp_path / "b100"
    code, _, errors = _cli("csttool", "run", "--dwi", dwi, "--out", out, *FAST, "--stages", "tensor",
                           "--b0-threshold", "100")
    assert code == 0, errors
    record = json.loads((out / "sub-01" / "dwi" / "sub-01_space-dwi_desc-preproc_dwi.json").read_text())
    assert record["csttool_import"]["b0_threshold"] == 100
    fa = np.asarray(nib.load(next((out / "sub-01" / "dwi").glob("*_param-fa_dwimap.nii.gz"))).dataobj)
    assert np.nanmax(fa) > 0.5   # the tensor fit used the b=80 volumes as its b0


def test_a_volume_too_thin_is_invalid_input_before_the_workflow(phantom, tmp_path):
    """Two slices of the phantom (as a 2-slice clinical acquisition): one line saying the minimum."""
    _, paths = phantom
    img = nib.load(paths["dwi"])
    k = img.shape[2] // 2
    thin = tmp_path / "thin"
    thin.mkdir()
    nib.save(img.slicer[:, :, k:k + 2], thin / "dwi.nii.gz")
    (thin / "dwi.bval").write_bytes(Path(paths["bval"]).read_bytes())
    (thin / "dwi.bvec").write_bytes(Path(paths["bvec"]).read_bytes())
    out = tmp_path / "out"
    code, _, errors = _cli("csttool", "run", "--dwi", thin / "dwi.nii.gz", "--out", out, "--nprocs", "1")
    assert code == 2 and len(errors) == 1, errors
    assert "too thin" in errors[0] and f"at least {MIN_AXIS_VOXELS} voxels" in errors[0]
    assert str(thin / "dwi.nii.gz") in errors[0]
    assert not (out / "_work").exists()   # stopped before the workflow was built

    # the same series in a batch: that subject is INVALID INPUT, in one line
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-thin", "nifti": str(thin / "dwi.nii.gz")}]}))
    code, stdout, errors = _cli("csttool", "batch", "--manifest", manifest, "--out", tmp_path / "bout")
    assert code == 1
    line = next(x for x in stdout.splitlines() if "sub-thin:" in x)
    assert "Failed (INVALID INPUT)" in line and "too thin" in line, stdout


def test_a_small_field_of_view_is_invalid_input(phantom, tmp_path):
    """Enough voxels but less than the minimum extent in mm along one axis."""
    _, paths = phantom
    img = nib.load(paths["dwi"])
    n = int(MIN_AXIS_EXTENT_MM // 3) - 1   # 3 mm voxels: just under the minimum
    assert n >= MIN_AXIS_VOXELS
    small = tmp_path / "small"
    small.mkdir()
    k = img.shape[2] // 2
    nib.save(img.slicer[:, :, k:k + n], small / "dwi.nii.gz")
    (small / "dwi.bval").write_bytes(Path(paths["bval"]).read_bytes())
    (small / "dwi.bvec").write_bytes(Path(paths["bvec"]).read_bytes())
    code, _, errors = _cli("csttool", "run", "--dwi", small / "dwi.nii.gz", "--out", tmp_path / "out")
    assert code == 2 and len(errors) == 1, errors
    assert f"at least {MIN_AXIS_EXTENT_MM:g} mm" in errors[0]
