"""CST extraction end to end on the digital phantom: ``csttool run`` against the ground truth.

Each fixture writes a 3 mm phantom (20 directions, SNR 30, random pose up to 15 degrees
and 10 mm, stored LPS, PSR (sagittal slices) or LIP (coronal slices); the slab case RAS; ``test_offline.py`` runs one stored LAS) with :func:`write_phantom` and runs it through the
command line (``csttool_nipype.cli.main.main``). The outputs lie on the RAS-reoriented
grid, the truth on the stored grid, so masks are compared in world space (nearest voxel
of the output at each truth voxel centre).

Acceptance numbers (from the project's issue), all measured against the truth:

* Dice >= 0.6 between each extracted CST (its density map > 0) and the true CST mask of
  that side, and no voxel on the true CST of the other side;
* the extracted CST's mean FA (summary table) within 0.05 of the mean of the true FA
  over the true CST mask;
* a left CST lesion (FA -30 % over 10 mm at MNI z = 10 mm) is the minimum of the left FA
  profile, within a few nodes of the node nearest the lesion, and gives a negative FA
  laterality index (L - R)/(L + R);
* two runs of the same input with the same seed give byte-identical outputs (every file but the
  report's and the registration record's time stamps), and the files are the golden list
  ``tests/data/golden_outputs_phantom.txt``.

Gibbs unringing and motion correction are skipped (``--no-gibbs --no-motion-correction``):
the phantoms have neither ringing nor motion, and both are tested elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from csttool_nipype.cli.main import main
from csttool_nipype.sims.model import LesionSpec, PhantomSpec
from csttool_nipype.sims.phantom import make_phantom, on_truth_grid
from csttool_nipype.sims.writer import write_phantom
from csttool_nipype.science.profiles import resample_between_levels
from csttool_nipype.science.rois import cst_rois
from csttool_nipype.science.transforms import load_registration
from csttool_nipype.science.trk_io import load_trk

slow = pytest.mark.slow  # the end-to-end runs; the unit tests at the bottom are fast

SUB = "sub-01"
FAST = ["--no-gibbs", "--no-motion-correction"]
#: Largest distance (nodes of 100) between the profile minimum and the node nearest the lesion.
LESION_NODE_TOLERANCE = 5


def _spec(orientation: str, seed: int, lesion: LesionSpec | None = None) -> PhantomSpec:
    return PhantomSpec(voxel_size=3.0, n_directions=20, snr=30.0, rotation_deg=15.0, translation_mm=10.0,
                       orientation=orientation, seed=seed, lesion=lesion)


def _run(dwi, out, *extra) -> None:
    code = main(["run", "--dwi", str(dwi), "--out", str(out), "--subject-id", SUB, *FAST, *extra])
    assert code == 0, f"csttool run exited {code}"


class Run:
    """One phantom and its ``csttool run`` outputs."""

    def __init__(self, phantom, paths, out):
        self.phantom = phantom
        self.paths = paths
        self.out = out
        self.dwi = out / SUB / "dwi"

    def file(self, suffix: str):
        return self.dwi / f"{SUB}_{suffix}"

    def density(self, side: str):
        return nib.load(self.file(f"space-dwi_bundle-CST{side}_param-density_dwimap.nii.gz"))

    def bundle(self, side: str):
        return load_trk(self.file(f"space-dwi_bundle-CST{side}_streamlines.trk"))

    def summary(self) -> pd.Series:
        table = pd.read_csv(self.file("desc-summary_metrics.tsv"), sep="\t")
        assert len(table) == 1
        return table.iloc[0]

    def profile(self, side: str, metric: str = "fa") -> np.ndarray:
        table = pd.read_csv(self.file("space-dwi_bundle-CST_tractprofile.tsv"), sep="\t")
        rows = table[(table.side == side) & (table.metric == metric)].sort_values("node")
        return rows["value"].to_numpy(float)


def _make_run(tmp_path_factory, name: str, spec: PhantomSpec) -> Run:
    tmp = tmp_path_factory.mktemp(name)
    phantom = make_phantom(spec)
    paths = write_phantom(phantom, tmp / "raw", subject=SUB)
    _run(paths["dwi"], tmp / "out")
    return Run(phantom, paths, tmp / "out")


@pytest.fixture(scope="module")
def lps_lesion(tmp_path_factory):
    """Stored LPS, left CST lesion."""
    return _make_run(tmp_path_factory, "lps", _spec("LPS", seed=11, lesion=LesionSpec(side="left")))


@pytest.fixture(scope="module")
def psr(tmp_path_factory):
    """Stored sagittally (PSR), no lesion."""
    return _make_run(tmp_path_factory, "psr", _spec("PSR", seed=12))


@pytest.fixture(scope="module")
def lip(tmp_path_factory):
    """Stored coronally (LIP: slices along the anterior-posterior axis, each axis flipped or turned)."""
    return _make_run(tmp_path_factory, "lip", _spec("LIP", seed=13))


RUNS = ["lps_lesion", "psr", "lip"]


def per_run_and_side(test):
    """Parametrise a (slow) test over the phantom runs and both sides."""
    for mark in (pytest.mark.parametrize("side", ["left", "right"]), pytest.mark.parametrize("run_name", RUNS), slow):
        test = mark(test)
    return test


def _dice(a, b) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@per_run_and_side
def test_extracted_cst_overlaps_the_true_cst_of_its_side(run_name, side, request):
    run = request.getfixturevalue(run_name)
    truth = run.phantom.truth
    found = on_truth_grid(run.density(side), run.phantom) > 0
    other = "right" if side == "left" else "left"
    dice = _dice(found, truth[f"cst_{side}"])
    assert dice >= 0.6, f"{run_name} {side}: Dice {dice:.3f} with the true CST"
    wrong = int((found & truth[f"cst_{other}"]).sum())
    assert wrong == 0, f"{run_name} {side}: {wrong} voxels on the true {other} CST"


@per_run_and_side
def test_streamlines_stay_on_their_side_of_the_true_midline(run_name, side, request):
    """Every point of a side's CST lies on that side of the true mid-sagittal plane (MNI x = 0)."""
    run = request.getfixturevalue(run_name)
    pose = run.phantom.pose
    origin, normal = pose[:3, 3], pose[:3, 0] / np.linalg.norm(pose[:3, 0])  # MNI x axis in world
    points = np.asarray(run.bundle(side).get_data(), float)
    assert len(points)
    signed = (points - origin) @ normal
    sign = -1.0 if side == "left" else 1.0
    # the phantom keeps its tracts >= 2 mm off the midline; allow 1 mm of registration error
    assert (sign * signed > -1.0).all(), f"{run_name} {side}: {int((sign * signed <= -1.0).sum())} points across"


@per_run_and_side
def test_mean_fa_of_the_extracted_cst_matches_the_truth(run_name, side, request):
    run = request.getfixturevalue(run_name)
    truth = run.phantom.truth
    true_fa = float(truth["fa"][truth[f"cst_{side}"]].mean())
    found = float(run.summary()[f"fa_mean_{side}"])
    assert abs(found - true_fa) <= 0.05, f"{run_name} {side}: FA {found:.3f} vs true {true_fa:.3f}"


@slow
def test_lesion_is_the_minimum_of_its_sides_fa_profile(lps_lesion):
    run = lps_lesion
    truth = run.phantom.truth
    assert truth["lesion"].any()
    centre = nib.affines.apply_affine(run.phantom.affine, np.argwhere(truth["lesion"]).mean(axis=0))
    # node positions: the bundle resampled the way the profile is (100 nodes between two MNI levels,
    # inferior first), with the MNI z of the FA grid from the run's own registration, as the ROI stage has it
    fa = nib.load(run.file("space-dwi_model-tensor_param-fa_dwimap.nii.gz"))
    mask = np.asarray(nib.load(run.file("space-dwi_desc-brain_mask.nii.gz")).dataobj) > 0
    mni_z = cst_rois(load_registration(run.out / SUB / "xfm" / "registration"), fa.shape, fa.affine, mask=mask).mni_z
    nodes = np.nanmean(resample_between_levels(run.bundle("left"), mni_z, fa.affine, 100), axis=0)
    lesion_node = int(np.argmin(np.linalg.norm(nodes - centre, axis=1)))
    assert np.linalg.norm(nodes[lesion_node] - centre) < 6.0  # the bundle runs through the lesion
    profile = run.profile("left")
    assert profile.shape == (100,) and np.isfinite(profile).all()
    dip = int(np.argmin(profile))
    assert abs(dip - lesion_node) <= LESION_NODE_TOLERANCE, (
        f"left FA profile minimum at node {dip}, lesion at node {lesion_node}")
    # the dip is a dip: clearly lower than the same stretch of the right tract
    right = run.profile("right")
    assert profile[dip] < right[dip] - 0.05


@slow
def test_lesion_gives_a_negative_fa_laterality_index(lps_lesion):
    row = lps_lesion.summary()
    truth = lps_lesion.phantom.truth
    true_li = (truth["fa"][truth["cst_left"]].mean() - truth["fa"][truth["cst_right"]].mean()) / (
        truth["fa"][truth["cst_left"]].mean() + truth["fa"][truth["cst_right"]].mean())
    assert true_li < 0
    assert row["fa_mean_li"] < 0, f"FA laterality index {row['fa_mean_li']:+.3f} (truth {true_li:+.3f})"
    assert row["fa_mean_left"] < row["fa_mean_right"]


@slow
def test_summary_counts_and_no_flags(psr):
    row = psr.summary()
    for side in ("left", "right"):
        assert row[f"streamline_count_{side}"] >= 50
        assert row[f"volume_mm3_{side}"] > 0
    assert row["n_flags"] == 0, row["flag_reasons"]
    definition = json.loads(psr.file("space-dwi_bundle-CST_tractprofile.json").read_text())["ProfileDefinition"]
    assert "Juelich CST probability" in definition["SampleWeights"] and "MNI z = -27" in definition["Nodes"]


#: Golden list of a phantom run's files (relative to OUT; the registry check is in test_derivatives.py).
GOLDEN = Path(__file__).parent / "data" / "golden_outputs_phantom.txt"
#: Outputs that legitimately differ between two runs of the same input, and how they are compared:
#: the subject report prints when it was generated and how long each stage took; the registration
#: record holds the stages' wall and CPU times (keys ending in ``_s``), compared without them.
NOT_BYTE_IDENTICAL = {"sub-01/sub-01_report.html": "generation time and stage durations",
                      "sub-01/xfm/registration/registration.json": "stage timings (compared without them)"}


def output_files(out) -> dict[str, Path]:
    """Every file of a ``csttool run`` output folder but the Nipype cache (``_work/``), by relative path."""
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "_work"}


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith("_s")}
    return value


@slow
def test_phantom_run_writes_the_golden_outputs(psr):
    """The files of a full phantom run are exactly the golden list (QSIPrep's check): an output
    added, renamed or lost shows here, and the list is updated on purpose."""
    golden = [line for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]
    assert list(output_files(psr.out)) == golden


@slow
def test_same_seed_gives_identical_outputs(psr, tmp_path):
    """A second run of the same input, in a fresh folder, writes the same bytes: every output has the same
    SHA-256 but those in NOT_BYTE_IDENTICAL (time stamps and durations), compared without their timings."""
    first = psr
    _run(first.paths["dwi"], tmp_path / "again")
    again = Run(first.phantom, first.paths, tmp_path / "again")
    files, files_again = output_files(first.out), output_files(again.out)
    assert list(files) == list(files_again)
    differ = [name for name in files if name not in NOT_BYTE_IDENTICAL
              and _sha256(files[name]) != _sha256(files_again[name])]
    assert differ == [], f"outputs that differ between two runs: {differ}"
    record = "sub-01/xfm/registration/registration.json"
    assert _without_timings(json.loads(files[record].read_text())) == \
        _without_timings(json.loads(files_again[record].read_text()))
    for side in ("left", "right"):
        a = first.bundle(side)
        b = again.bundle(side)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.get_data(), b.get_data())
        np.testing.assert_array_equal(np.asarray(first.density(side).dataobj), np.asarray(again.density(side).dataobj))
    pd.testing.assert_frame_equal(pd.read_csv(first.file("desc-summary_metrics.tsv"), sep="\t"),
                                  pd.read_csv(again.file("desc-summary_metrics.tsv"), sep="\t"))


# ------------------------------------------------------------- slab missing the brainstem


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    """A phantom cut to the axial slices above MNI z = 0 (no brainstem), run end to end."""
    tmp = tmp_path_factory.mktemp("slab")
    ph = make_phantom(PhantomSpec(voxel_size=3.0, n_directions=20, rotation_deg=5.0, translation_mm=5.0,
                                  orientation="RAS", seed=14))
    paths = write_phantom(ph, tmp / "raw", subject=SUB)
    img = nib.load(paths["dwi"])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # slices (RAS: third axis) whose centre lies above MNI z = 0 in the middle of the head
    centre_ij = (np.array(img.shape[:2]) - 1) / 2.0
    z_mni = [nib.affines.apply_affine(np.linalg.inv(ph.pose), nib.affines.apply_affine(img.affine, [*centre_ij, k]))[2]
             for k in range(img.shape[2])]
    k0 = int(np.flatnonzero(np.array(z_mni) > 0.0).min())
    affine = img.affine @ nib.affines.from_matvec(np.eye(3), [0, 0, k0])
    cut = tmp / "slab"
    cut.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, k0:], affine, img.header), cut / "sub-01_dwi.nii.gz")
    for ext in ("bval", "bvec", "json"):
        (cut / f"sub-01_dwi.{ext}").write_bytes(paths[ext].read_bytes())
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    package_logger = logging.getLogger("csttool_nipype")  # not the root logger: main() resets that
    package_logger.addHandler(handler)
    try:
        # one process (Linear plugin): with MultiProc the warning is logged (to the console)
        # from a forked worker, where this in-process handler does not see it
        _run(cut / "sub-01_dwi.nii.gz", tmp / "out", "--nprocs", "1")
    finally:
        package_logger.removeHandler(handler)
    run = Run(ph, paths, tmp / "out")
    run.messages = messages
    return run


@slow
def test_slab_without_brainstem_is_flagged_not_covered(slab):
    """The run finishes; the summary row is there with the coverage flag, zero counts and NaN metrics."""
    assert any(m.startswith("CST not covered") and "brainstem" in m for m in slab.messages), slab.messages
    row = slab.summary()
    flags = str(row["flags"]).split(";")
    assert "cst_not_covered" in flags
    assert "brainstem" in row["flag_reasons"]
    for side in ("left", "right"):
        assert row[f"streamline_count_{side}"] == 0
        assert row[f"volume_mm3_{side}"] == 0
        assert np.isnan(row[f"fa_mean_{side}"])
        assert f"too_few_streamlines_{side}" in flags
        assert len(slab.bundle(side)) == 0
        assert not np.asarray(slab.density(side).dataobj).any()
    profiles = pd.read_csv(slab.file("space-dwi_bundle-CST_tractprofile.tsv"), sep="\t")
    assert set(profiles["side"]) == {"left", "right"} and profiles["value"].isna().all()
    coverage = pd.read_json(slab.file("desc-roicoverage_qc.json"), typ="series")
    assert not coverage["cst_covered"]


# ---------------------------------------------------------------- unit tests (fast)


def _box(shape, lo, hi):
    out = np.zeros(shape, bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out


def test_clip_to_rois_first_entry_stops_where_the_gyrus_is_reached():
    from csttool_nipype.science.bundles import clip_to_rois, extract_cst

    shape, affine = (10, 10, 40), np.diag([2.0, 2.0, 2.0, 1.0])
    rois = {"brainstem": _box(shape, (0, 0, 0), (10, 10, 5)),         # z 0..8 mm (voxel centres)
            "precentral_left": _box(shape, (0, 0, 30), (10, 10, 36)),  # z 60..70 mm
            "precentral_right": _box(shape, (0, 0, 0), (0, 0, 0))}
    z = np.arange(-4.0, 78.0, 0.5)
    line = np.stack([np.full_like(z, 6.0), np.full_like(z, 6.0), z], axis=1)  # runs on beyond the gyrus
    (last,) = clip_to_rois([line], rois, affine, side="left")
    (first,) = clip_to_rois([line], rois, affine, side="left", end="first")
    assert last[0, 2] == first[0, 2] == -1.0  # first point in the brainstem slab (nearest voxel centre 0)
    assert last[-1, 2] == 70.5  # last point whose nearest voxel is in the gyrus (z 70 -> voxel 35)
    assert first[-1, 2] == 59.0  # first point in the gyrus (nearest voxel 30)
    with pytest.raises(Exception, match="first"):
        clip_to_rois([line], rois, affine, side="left", end="middle")
    # extract_cst passes it on (no precentral_right voxels: the midline falls back to x)
    rois["precentral_right"] = _box(shape, (9, 0, 30), (10, 10, 36))
    rois["precentral_left"] = _box(shape, (0, 0, 30), (5, 10, 36))
    (bundle,) = extract_cst([line], rois, affine, side="left", clip_end="first", clean=False)
    assert bundle[-1, 2] == 59.0


def test_streamline_weighted_means_count_each_crossing():
    from csttool_nipype.science.profiles import bundle_metrics

    shape, affine = (6, 6, 12), np.diag([2.0, 2.0, 2.0, 1.0])
    fa = np.full(shape, 0.7)
    fa[4] = 0.2  # the column at x = 8 mm is low
    z = np.arange(0.0, 22.5, 0.5)
    core = [np.stack([np.full_like(z, 2.0), np.full_like(z, 2.0), z], axis=1)] * 9
    stray = [np.stack([np.full_like(z, 8.0), np.full_like(z, 2.0), z], axis=1)]
    voxel = bundle_metrics(core + stray, {"fa": fa}, affine, weighting="voxel")
    weighted = bundle_metrics(core + stray, {"fa": fa}, affine, weighting="streamlines")
    assert voxel["volume_mm3"] == weighted["volume_mm3"] == 2 * 12 * 8.0
    assert voxel["fa_mean"] == pytest.approx(0.45)  # two columns, once each
    assert weighted["fa_mean"] == pytest.approx((9 * 0.7 + 0.2) / 10)
    assert weighted["fa_std"] == pytest.approx(np.sqrt(0.9 * 0.1) * 0.5)
    with pytest.raises(Exception, match="weighting"):
        bundle_metrics(core, {"fa": fa}, affine, weighting="points")
