"""Bad input: one line naming the file, non-zero exit, no traceback, nothing half-written."""

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.cli.main import main


def _write_series(folder, n_vols=8, shape=(20, 20, 20), bvals=None, write_bval=True, ndim=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.uniform(50, 100, size=(*shape, n_vols) if ndim == 4 else shape).astype(np.float32)
    nifti = folder / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), nifti)
    if bvals is None:
        bvals = [0] + [1000] * (n_vols - 1)
    dirs = rng.normal(size=(len(bvals), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs[np.asarray(bvals) == 0] = 0
    if write_bval:
        (folder / "dwi.bval").write_text(" ".join(str(b) for b in bvals) + "\n")
    (folder / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in dirs.T) + "\n")
    return nifti


def _run(argv, capsys):
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    return code, err


def _cases(tmp_path):
    cases = {}
    cases["missing bval"] = (_write_series(tmp_path / "nobval", write_bval=False), "no b-value file")
    cases["bval count"] = (_write_series(tmp_path / "count", n_vols=8, bvals=[0] + [1000] * 8),
                           "counts must be equal")
    cases["3D image"] = (_write_series(tmp_path / "three", ndim=3), "must be 4D")
    cases["no b0"] = (_write_series(tmp_path / "nob0", bvals=[1000] * 8), "no b=0 volume")
    trunc = _write_series(tmp_path / "trunc", shape=(24, 24, 20))
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (trunc, "truncated or corrupt")
    return cases


@pytest.mark.parametrize("case", ["missing bval", "bval count", "3D image", "no b0", "truncated"])
def test_bad_nifti_inputs_fail_in_one_line(case, tmp_path, capsys):
    nifti, named = _cases(tmp_path)[case]
    out = tmp_path / "out"
    code, err = _run(["run", "--dwi", str(nifti), "--out", str(out), "--no-gibbs",
                      "--no-motion-correction", "--denoise-method", "none"], capsys)
    assert code != 0
    assert len(err) == 1, err
    assert named in err[0] and str(nifti) in err[0]
    assert "Traceback" not in err[0]
    assert not (out / "sub-01").exists()
    assert not (out / "_work").exists(), "a run that computed nothing leaves no work folder"


def test_empty_dicom_folder(tmp_path, capsys):
    empty = tmp_path / "dicoms"
    empty.mkdir()
    code, err = _run(["run", "--dicom", str(empty), "--out", str(tmp_path / "out")], capsys)
    assert code != 0 and len(err) == 1 and str(empty) in err[0]


def test_non_dicom_folder_fails_in_one_line_from_inside_the_workflow(tmp_path):
    folder = tmp_path / "notdicom"
    folder.mkdir()
    for i in range(3):
        (folder / f"notes{i}.txt").write_text("this is not a DICOM file\n")
    proc = subprocess.run(
        [sys.executable, "-m", "csttool_nipype.cli.main", "run", "--dicom", str(folder),
         "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("INFO ")]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert str(folder) in lines[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("crash-*")), "Nipype crash files must not land in the cwd"


def test_gzip_truncation_is_really_detected_by_reading(tmp_path):
    """Guard the fixture: a cut .nii.gz is not readable in full."""
    nifti = _cases(tmp_path)["truncated"][0]
    with pytest.raises((EOFError, OSError, gzip.BadGzipFile)):
        np.asarray(nib.load(nifti).dataobj)


@pytest.mark.parametrize("flag, value", [("--seed-density", "0"), ("--fa-threshold", "1.5"), ("--step-size", "-1")])
def test_option_values_the_config_rejects_are_usage_errors(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dwi", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "out"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("csttool: error:") and "Traceback" not in "".join(err)


def test_tracking_and_cst_flags_reach_the_config_and_its_hash():
    from csttool_nipype.cli.main import build_parser, pipeline_config_from_args
    from csttool_nipype.config import PipelineConfig

    args = build_parser().parse_args(["run", "--dwi", "x.nii.gz", "--out", "o", "--seed-density", "0.2",
                                      "--fa-threshold", "0.15", "--max-angle", "30", "--cst-clip-end", "last",
                                      "--metrics-weighting", "voxel"])
    config = pipeline_config_from_args(args)
    assert (config.seed_density, config.fa_threshold, config.max_angle_deg) == (0.2, 0.15, 30.0)
    assert (config.cst_clip_end, config.metrics_weighting) == ("last", "voxel")
    assert config.config_hash() != PipelineConfig().config_hash()
