"""Seed density per mm³ vs 3 seeds per voxel on fine-voxel phantoms (known ground truth).

For each phantom (default: the clinical 1.75x1.75x2.5 mm, 33-volume one, with a 30 % FA
lesion in the left CST, and a 2 mm, 32-direction one) the pipeline runs twice - once with
the default seed density and once with the density that gives 3 seeds per voxel (the
former default) - and the table shows, per side: streamline count, Dice of the extracted
CST (density > 0) with the true CST, mean FA error against the truth, the FA laterality
index, the lesioned side's profile minimum vs the node nearest the lesion, and the tracking
and CST-extraction node times. Preprocessing is limited to MP-PCA (no Gibbs, no motion
correction) to keep the run short; seeding does not touch it.

    python benchmarks/check_seed_density.py [--cases clinical 2mm]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from csttool_nipype.cli.main import main as csttool_main
from csttool_nipype.config import PipelineConfig
from csttool_nipype.derivatives import path as output_path
from csttool_nipype.science.streamlines import resample_streamlines
from csttool_nipype.sims.model import LesionSpec, PhantomSpec
from csttool_nipype.sims.phantom import make_phantom, on_truth_grid
from csttool_nipype.sims.writer import write_phantom
from csttool_nipype.science.profiles import orient_inferior_superior
from csttool_nipype.science.trk_io import load_trk

CASES = {
    "clinical": dict(voxel_size=(1.75, 1.75, 2.5), n_directions=32, n_b0=1, field_of_view_mm=(224.0, 224.0, 150.0)),
    "2mm": dict(voxel_size=2.0, n_directions=32, n_b0=2),
}


def _node_times(work: Path) -> dict[str, float]:
    from nipype.utils.filemanip import loadpkl

    times = {}
    for name in ("track", "extract_cst"):
        for path in work.rglob(f"{name}/result_{name}.pklz"):
            times[name] = float(loadpkl(path).runtime.duration)
    return times


def measure(phantom, out: Path) -> dict:
    subject = out / "sub-01"
    summary = pd.read_csv(output_path(subject, "summary", "sub-01"), sep="\t").iloc[0]
    profiles = pd.read_csv(output_path(subject, "profiles", "sub-01"), sep="\t")
    truth = phantom.truth
    row = {"fa_li": summary["fa_mean_li"], **_node_times(out / "_work")}
    for side in ("left", "right"):
        density = nib.load(output_path(subject, f"cst_{side}_density", "sub-01"))
        found = on_truth_grid(density, phantom) > 0
        true = truth[f"cst_{side}"]
        row[f"n_{side}"] = int(summary[f"streamline_count_{side}"])
        row[f"dice_{side}"] = 2.0 * (found & true).sum() / (found.sum() + true.sum())
        row[f"fa_err_{side}"] = summary[f"fa_mean_{side}"] - truth["fa"][true].mean()
    if truth["lesion"].any():
        centre = nib.affines.apply_affine(phantom.affine, np.argwhere(truth["lesion"]).mean(axis=0))
        bundle = load_trk(output_path(subject, "cst_left", "sub-01"))
        nodes = resample_streamlines(orient_inferior_superior(bundle), 100).mean(axis=0)
        fa = profiles[(profiles.side == "left") & (profiles.metric == "fa")].sort_values("node")["value"].to_numpy()
        row["lesion_node"] = int(np.argmin(np.linalg.norm(nodes - centre, axis=1)))
        row["profile_min"] = int(np.argmin(fa))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    default = PipelineConfig().seed_density
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            spec = PhantomSpec(snr=30.0, rotation_deg=5.0, translation_mm=5.0, seed=3,
                               lesion=LesionSpec(side="left"), **CASES[case])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                phantom = make_phantom(spec)
            paths = write_phantom(phantom, Path(tmp) / case / "raw")
            voxel_mm3 = float(np.prod(spec.voxel_size if np.ndim(spec.voxel_size) else [spec.voxel_size] * 3))
            for label, density in ((f"{default * voxel_mm3:.2f}/voxel (default {default:.3g}/mm³)", default),
                                   ("3/voxel (former default)", 3.0 / voxel_mm3)):
                out = Path(tmp) / case / f"out-{density:.4f}"
                code = csttool_main(["run", "--dwi", str(paths["dwi"]), "--out", str(out), "--subject-id", "sub-01",
                                     "--no-gibbs", "--no-motion-correction", "--seed-density", repr(density)])
                if code != 0:
                    print(f"{case} {label}: csttool run exited {code}", file=sys.stderr)
                    return 1
                rows.append({"case": case, "seeds": label, **measure(phantom, out)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
