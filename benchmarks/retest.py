"""Test-retest agreement of the CST measurements on several scans of one head (issue #17).

Usage::

    python benchmarks/retest.py [--scan NAME="RUN FLAGS" ...] [--flags "PIPELINE FLAGS"] [--out DIR] [--nprocs 2]
                                [--table FILE]

Runs ``csttool run`` on each scan (default: the three Canon scans of one head in
``../shared/data/canon_galan_dti12_b1500``, as ``benchmarks/canon_agreement.py`` names
them; ``--scan NAME="--dwi path"`` for another head) with the same pipeline flags, then
prints per side:

* coefficient of variation and largest deviation from the mean of mean FA (whole tract and
  core nodes), MD, volume (voxels visited, and the density volume) and streamline count;
* the median pairwise Pearson correlation of the 100-node FA profiles;
* the median pairwise weighted Dice of the CST density maps in MNI space (each scan's
  map warped with its own registration onto the template grid; Kruper et al., 2021);

and each target of issue #17 met or not (FA within 0.015, volume ±10 %, count ±15 %,
profile r ≥ 0.9, weighted Dice ≥ 0.75). Below them, two references without tractography: the
FA inside the Juelich CST map, level by level, of each run's FA map and of a DIPY tensor fit of
the imported series (``csttool run --stages import``, no preprocessing): how far apart the FA
maps themselves are where the CST runs. Saves the table in ``benchmarks/results/retest.txt``.
The scores are :mod:`csttool_nipype.science.reliability`.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from _machine import machine_line, publish  # noqa: E402 (benchmarks/ on sys.path)
from canon_agreement import CANON, CSTTOOL, SCANS, named_flags, run_scan  # noqa: E402

from csttool_nipype import data
from csttool_nipype.config import B0_THRESHOLD
from csttool_nipype.derivatives import find
from csttool_nipype.science.coverage import PROFILE_START_Z_MM
from csttool_nipype.science.dwi_io import read_dwi
from csttool_nipype.science.profiles import PROFILE_END_Z_MM
from csttool_nipype.science.templates import resample_grid
from csttool_nipype.science.transforms import load_registration, warp_to_mni
from csttool_nipype.science.reliability import (
    atlas_profile, coefficient_of_variation, max_deviation, median_pairwise_correlation, median_pairwise_weighted_dice,
)

SIDES = ("left", "right")
MEASURES = ("fa_mean", "fa_core_mean", "md_mean", "volume_mm3", "density_volume_mm3", "streamline_count")
#: issue #17's acceptance, measure -> limit: FA as max - min, volumes and count as the largest
#: deviation from the mean (a fraction), profile r and weighted Dice as minima
TARGETS = {"fa_mean": 0.015, "volume_mm3": 0.10, "density_volume_mm3": 0.10,
           "streamline_count": 0.15, "profile_r": 0.9, "wdice": 0.75}
#: shown against the same limit as the whole tract's mean FA, not an acceptance target: the core
#: nodes (peduncle to capsule) are where a scan's own FA map differs most (the reference rows)
COMPARED = {"fa_core_mean": 0.015}


def profiles(subject_dir: Path, side: str, metric: str = "fa") -> np.ndarray:
    """The 100-node profile of one side from the subject's profile table (NaN where not covered)."""
    path = find(subject_dir, "profiles")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["side"] == side and r["metric"] == metric]
    rows.sort(key=lambda r: int(r["node"]))
    return np.array([float(r["value"]) if r["value"] not in ("", "n/a") else np.nan for r in rows])


def density_in_mni(subject_dir: Path, side: str) -> np.ndarray:
    """The side's density map warped onto the registration's template grid."""
    img = nib.load(find(subject_dir, f"cst_{side}_density"))
    result = load_registration(find(subject_dir, "registration"))
    warped, _ = warp_to_mni(np.asarray(img.dataobj, np.float32), img.affine, result)
    return warped


#: the Juelich CST map of each side (the atlas the ROIs and the CST prior come from)
ATLAS_CST = {"left": "WM_Corticospinal_tract_L", "right": "WM_Corticospinal_tract_R"}


def raw_fa(import_dir: Path) -> nib.Nifti1Image:
    """FA of a DIPY tensor fit of an imported series (no preprocessing; b=0 intensity mask).

    The series is read with the project's reader (b-vectors in the image's voxel axes, as
    DIPY's gradient table expects them); the fit is DIPY's own, independent of the pipeline's.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    dwi = read_dwi(find(import_dir, "import_dwi"))
    b0 = dwi.data[..., dwi.bvals <= B0_THRESHOLD].mean(axis=-1)
    mask = b0 > 0.1 * np.percentile(b0, 99)
    fa = TensorModel(gradient_table(dwi.bvals, bvecs=dwi.bvecs_voxel)).fit(dwi.data, mask=mask).fa
    return nib.Nifti1Image(fa.astype(np.float32), dwi.affine)


def import_scan(inputs: list[str], out: Path) -> Path:
    """``csttool run --stages import`` of one scan; the subject folder of the imported series."""
    if not (out / "sub-01").is_dir():
        cmd = [CSTTOOL, "run", *inputs, "--out", str(out), "--subject-id", "sub-01", "--stages", "import"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"csttool run --stages import failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return out / "sub-01"


def atlas_reference(subject_dirs: list[Path], fa_images: list[nib.Nifti1Image] | None = None) -> dict:
    """Per side: FA inside the Juelich CST map, no tractography, between the profile's levels.

    Each scan's FA map (the run's, or ``fa_images``, e.g. :func:`raw_fa`) is warped to the
    template grid with the run's registration and averaged level by level inside the atlas
    tract (:func:`atlas_profile`); the mean of those levels and the median pairwise r of the
    level profiles show how much the FA maps themselves differ between the scans where the
    CST runs (a floor for the tract measures above).
    """
    fa_mni = []
    for i, d in enumerate(subject_dirs):
        img = fa_images[i] if fa_images else nib.load(find(d, "fa"))
        warped, mni_affine = warp_to_mni(np.asarray(img.dataobj, np.float32), img.affine,
                                         load_registration(find(d, "registration")))
        fa_mni.append(warped)
    shape = fa_mni[0].shape
    z_mm = nib.affines.apply_affine(mni_affine, np.c_[np.zeros((shape[2], 2)), np.arange(shape[2])])[:, 2]
    out = {}
    for side in SIDES:
        (prior,), atlas_affine = data.load_atlas_maps("juelich", [ATLAS_CST[side]])
        prior = resample_grid(np.asarray(prior, np.float32), atlas_affine, shape, mni_affine, order=1)
        levels = [atlas_profile(fa, prior, z_mm, PROFILE_START_Z_MM, PROFILE_END_Z_MM) for fa in fa_mni]
        means = [float(np.nanmean(p)) for p in levels]
        out[side] = {"values": means, "spread": max(means) - min(means),
                     "profile_r": median_pairwise_correlation(levels)}
    return out


def score(subject_dirs: list[Path], summaries: list[dict], raw_images: list | None = None) -> dict:
    """Per side: every measure's values, CV and max deviation; profile r; weighted Dice; the
    atlas references (``atlas``: the runs' FA maps; ``atlas_raw``: ``raw_images``, when given)."""
    out = {}
    for side in SIDES:
        entry = {}
        for key in MEASURES:
            values = [float(s[f"{key}_{side}"]) for s in summaries]
            entry[key] = {"values": values, "cv": coefficient_of_variation(values),
                          "maxdev": max_deviation(values), "spread": max(values) - min(values)}
        entry["profile_r"] = median_pairwise_correlation([profiles(d, side) for d in subject_dirs])
        entry["wdice"] = median_pairwise_weighted_dice([density_in_mni(d, side) for d in subject_dirs])
        out[side] = entry
    out["atlas"] = atlas_reference(subject_dirs)
    if raw_images:
        out["atlas_raw"] = atlas_reference(subject_dirs, raw_images)
    return out


def table(names: list[str], scores: dict) -> list[str]:
    lines = [f"scans (in this order): {', '.join(names)}", ""]
    header = f"{'side':<7}{'measure':<20}{'values':<30}{'CV':>8}{'max dev':>9}{'target':>12}  met"
    lines += [header, "-" * len(header)]
    met_all = True
    for side in SIDES:
        entry = scores[side]
        for key in MEASURES:
            m = entry[key]
            shown = ", ".join(f"{v:.3f}" if key.startswith("fa_") else (f"{v:.2e}" if key == "md_mean" else f"{v:.0f}")
                              for v in m["values"])
            goal, met = "", ""
            if key.startswith("fa_"):
                limit = TARGETS.get(key, COMPARED.get(key))
                goal, ok = f"{m['spread']:.3f}≤{limit}", m["spread"] <= limit
                if key in TARGETS:
                    met = "yes" if ok else "NO"
                    met_all &= ok
                else:
                    met = f"({'within' if ok else 'beyond'}, not a target)"
            elif key in TARGETS:
                goal, ok = f"±{100 * TARGETS[key]:.0f} %", m["maxdev"] <= TARGETS[key]
                met = "yes" if ok else "NO"
                met_all &= ok
            lines.append(f"{side:<7}{key:<20}{shown:<30}{100 * m['cv']:>7.1f}%{100 * m['maxdev']:>8.1f}%"
                         f"{goal:>12}  {met}")
        for key, label in (("profile_r", "FA profile r"), ("wdice", "weighted Dice")):
            ok = entry[key] >= TARGETS[key]
            met_all &= ok
            lines.append(f"{side:<7}{label:<20}{entry[key]:<30.3f}{'':>8}{'':>9}{'≥' + str(TARGETS[key]):>12}  "
                         f"{'yes' if ok else 'NO'}")
    lines += ["", f"all targets of issue #17 met: {'yes' if met_all else 'no'}"]
    lines += ["", f"reference, no tractography: FA inside the Juelich CST map (level by level between MNI z "
                  f"{PROFILE_START_Z_MM:g} and {PROFILE_END_Z_MM:g} mm, each scan's FA warped with its run's "
                  f"registration); 'raw': a DIPY tensor fit of the imported series, no preprocessing"]
    for key, label in (("atlas", "atlas FA mean"), ("atlas_raw", "raw atlas FA mean")):
        for side in SIDES if key in scores else ():
            ref = scores[key][side]
            lines.append(f"{side:<7}{label:<20}{', '.join(f'{v:.3f}' for v in ref['values']):<30}"
                         f"  spread {ref['spread']:.3f}   level-profile r {ref['profile_r']:.3f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", action="append", default=[], metavar='NAME="RUN FLAGS"',
                        help="a scan of the head: a name and its csttool run input flags (repeatable; "
                             "default: the three Canon scans)")
    parser.add_argument("--flags", default="", help="pipeline flags for every scan (default: none, the defaults)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/csttool-retest"))
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--table", default="retest.txt",
                        help="file name of the table in benchmarks/results/ (default: retest.txt, the Canon head's)")
    args = parser.parse_args(argv)
    scans = named_flags(parser, "--scan", args.scan) if args.scan else dict(SCANS)
    if not args.scan and not CANON.is_dir():
        print(f"{CANON} not found: the Canon scans are needed (../shared/data next to the project)", file=sys.stderr)
        return 1
    flags = shlex.split(args.flags)
    dirs, summaries, raw = [], [], []
    for i, (name, inputs) in enumerate(scans.items()):
        out = args.out / f"scan{i}"
        summaries.append(run_scan(name, flags, out, args.out / "work" / f"scan{i}", args.nprocs, inputs=inputs))
        dirs.append(out / "sub-01")
        raw.append(raw_fa(import_scan(inputs, args.out / f"import{i}")))
    lines = [machine_line(), f"pipeline flags: {args.flags or '(defaults)'}", "",
             *table(list(scans), score(dirs, summaries, raw))]
    publish("\n".join(lines), args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
