"""CST bundle-definition variants on the outputs of a retest run (issue #17).

Usage::

    python benchmarks/retest.py                      # once: the scans' preprocessing, tensors, registration
    python benchmarks/cst_design_variants.py [--retest /tmp/csttool-retest] [--variant NAME=SEEDS:TARGET:MIDLINE ...]

Re-runs only tractography and CST extraction, with the science functions the pipeline
calls, on each scan's tensor maps, brain mask and registration (ROIs warped again) of a
``benchmarks/retest.py`` output folder, and prints per side how far apart the scans are:
count, visited volume and density volume (largest deviation from the mean), mean FA and
core-node FA (max - min), and the median pairwise correlation of the 100-node FA profiles
(anchored between two MNI levels as the pipeline's; ``--unanchored``: from each streamline's ends).
Each variant takes 5-30 s on three 3 mm scans, against minutes for an end-to-end run.

A variant is ``SEEDS:DENSITY:TARGET:MIDLINE``: SEEDS ``wholebrain``, ``capsules``,
``peduncles`` or ``brainstem`` (brainstem and peduncles) at DENSITY seeds per mm³ (where FA
is above the threshold); TARGET ``precentral`` or ``cortex`` (the sensorimotor cortex, the
pipeline's); MIDLINE ``reject`` or ``cut``. The default variants are the 0.3.0 definition
and the current one; ``docs/decisions.md`` ("#17 bundle definition") has the table of all
those measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from csttool_nipype.config import PipelineConfig
from csttool_nipype.science.bundles import extract_cst
from csttool_nipype.science.profiles import bundle_metrics, core_means, tract_profiles
from csttool_nipype.science.transforms import load_registration
from csttool_nipype.science.reliability import max_deviation, median_pairwise_correlation
from csttool_nipype.science.rois import cst_rois
from csttool_nipype.science.streamlines import Packed
from csttool_nipype.science.tracking import TrackingParams, seeds_per_voxel_for_density, track_deterministic

D = PipelineConfig()
SEED_REGIONS = {
    "wholebrain": (),
    "capsules": ("capsule_left", "capsule_right"),
    "peduncles": ("peduncle_left", "peduncle_right"),
    "brainstem": ("brainstem", "peduncle_left", "peduncle_right"),
}
DEFAULT_VARIANTS = {"0.3.0": "wholebrain:0.1111:precentral:reject", "current": "capsules:1:cortex:cut"}


def load_scan(subject_dir: Path) -> dict:
    """Tensor maps, mask and freshly warped ROIs of one ``csttool run`` output (``.../sub-01``)."""
    dwi = subject_dir / "dwi"

    def image(pattern):
        return nib.load(next(dwi.glob(pattern)))

    fa_img = image("*_param-fa_dwimap.nii.gz")
    scan = {"affine": fa_img.affine, "fa": np.asarray(fa_img.dataobj, np.float32),
            "md": np.asarray(image("*_param-md_dwimap.nii.gz").dataobj, np.float32),
            "v1": np.asarray(image("*_param-v1_dwimap.nii.gz").dataobj, np.float32),
            "mask": np.asarray(image("*_desc-brain_mask.nii.gz").dataobj) > 0}
    result = load_registration(subject_dir / "xfm" / "registration")
    rois = cst_rois(result, scan["fa"].shape, scan["affine"], mask=scan["mask"])
    scan["rois"], scan["mni_z"], scan["priors"] = dict(rois), rois.mni_z, rois.priors
    return scan


def run_variant(scan: dict, spec: str, anchored: bool = True) -> dict:
    """Per side: (metrics dict, FA profile) of one variant on one scan; ``anchored``: the profile
    between the pipeline's two MNI levels (else from each streamline's own ends, the earlier definition)."""
    seeds, density, target, midline = spec.split(":")
    rois = dict(scan["rois"])
    seed_mask = None
    if SEED_REGIONS[seeds]:
        seed_mask = np.zeros(scan["mask"].shape, bool)
        for name in SEED_REGIONS[seeds]:
            seed_mask |= rois[name]
    if target == "precentral":
        rois = {k: v for k, v in rois.items() if not k.startswith("cortex_")}
    params = TrackingParams(seeds_per_voxel=seeds_per_voxel_for_density(float(density), scan["affine"]), n_jobs=2)
    streamlines = Packed.of(track_deterministic(scan["v1"], scan["fa"], scan["mask"], scan["affine"], params,
                                                seed_mask=seed_mask))
    out = {}
    for side in ("left", "right"):
        bundle = extract_cst(streamlines, rois, scan["affine"], side=side, min_length_mm=D.cst_min_length_mm,
                             clip_end=D.cst_clip_end, midline_layer="right", midline=midline)
        metrics = bundle_metrics(bundle, {"fa": scan["fa"], "md": scan["md"]}, scan["affine"])
        profile = tract_profiles(bundle, {"fa": scan["fa"]}, scan["affine"], 100,
                                 mni_z=scan["mni_z"] if anchored else None,
                                 prior=scan["priors"][f"cst_prior_{side}"])["fa"] if len(bundle) else np.full(100, np.nan)
        metrics.update(core_means({"fa": profile}))
        out[side] = (metrics, profile)
    return out


def line(name: str, side: str, results: list[dict]) -> str:
    metrics = [r[side][0] for r in results]

    def values(key):
        return [float(m[key]) for m in metrics]

    count, fa, core = values("streamline_count"), values("fa_mean"), values("fa_core_mean")
    return (f"{name:<10}{side:<6} count {', '.join(f'{v:.0f}' for v in count)} ±{100 * max_deviation(count):.1f} %"
            f" | volume ±{100 * max_deviation(values('volume_mm3')):.1f} %"
            f" | density volume ±{100 * max_deviation(values('density_volume_mm3')):.1f} %"
            f" | FA {', '.join(f'{v:.3f}' for v in fa)} spread {max(fa) - min(fa):.3f}"
            f" | core FA spread {max(core) - min(core):.3f}"
            f" | profile r {median_pairwise_correlation([r[side][1] for r in results]):.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retest", type=Path, default=Path("/tmp/csttool-retest"),
                        help="output folder of benchmarks/retest.py (scan0, scan1, ...)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SEEDS:DENSITY:TARGET:MIDLINE")
    parser.add_argument("--unanchored", action="store_true",
                        help="profiles from each streamline's own ends (the definition before the anchored profiles)")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else DEFAULT_VARIANTS
    dirs = sorted(args.retest.glob("scan*/sub-01"))
    if not dirs:
        print(f"{args.retest}: no scan*/sub-01 folders (run benchmarks/retest.py first)", file=sys.stderr)
        return 2
    for spec in variants.values():
        seeds, _, target, midline = spec.split(":")
        if seeds not in SEED_REGIONS or target not in ("precentral", "cortex") or midline not in ("reject", "cut"):
            print(f"bad variant {spec!r}: SEEDS:DENSITY:TARGET:MIDLINE", file=sys.stderr)
            return 2
    scans = [load_scan(d) for d in dirs]
    for name, spec in variants.items():
        results = [run_variant(scan, spec, anchored=not args.unanchored) for scan in scans]
        for side in ("left", "right"):
            print(line(name, side, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
