"""How the profile's sample weights change its agreement across scans of one head (issue #17).

Usage::

    python benchmarks/retest.py --out DIR              # once: the scans' runs
    python benchmarks/profile_weights.py --retest DIR

On the CST bundles a ``benchmarks/retest.py`` run wrote (nothing is tracked again), prints:

* where the profiles differ: each scan's FA map warped to the template with its own
  registration and sampled along each scan's tract (its nodes taken to MNI space through the
  same registration), the pairwise r of the FA maps along one tract and of one FA map along
  the tracts;
* the median pairwise r of the FA profiles per side for several weightings of a node's
  samples: AFQ's Gaussian core weights, equal weights, and the Juelich CST probability of the
  side with several floors (the pipeline's: :data:`~csttool_nipype.science.profiles.PRIOR_WEIGHT_FLOOR`).

The nodes are the pipeline's (anchored between two MNI levels); ``docs/decisions.md``, "#17
profile weights", has the tables.
"""

from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

from cst_design_variants import load_scan  # noqa: E402 (benchmarks/ on sys.path)

from csttool_nipype.derivatives import find
from csttool_nipype.science.profiles import (PRIOR_WEIGHT_FLOOR, node_profiles, node_weights, prior_weights,
                                             resample_between_levels)
from csttool_nipype.science.reliability import median_pairwise_correlation
from csttool_nipype.science.transforms import load_registration, subject_to_mni_points, warp_to_mni
from csttool_nipype.science.trk_io import load_trk

SIDES = ("left", "right")
FLOORS = (0.05, PRIOR_WEIGHT_FLOOR, 0.2, 0.3)


def weighted_profile(nodes: np.ndarray, weights, fa: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The pipeline's FA profile of ``nodes`` (N, n_nodes, 3) with ``weights(nodes)`` (N, n_nodes)."""
    return node_profiles(nodes, {"fa": fa}, affine, weights)["fa"]


def pairwise(profiles: list[np.ndarray]) -> list[float]:
    out = []
    for a, b in combinations(profiles, 2):
        ok = np.isfinite(a) & np.isfinite(b)
        out.append(float(np.corrcoef(a[ok], b[ok])[0, 1]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retest", type=Path, default=Path("/tmp/csttool-retest"),
                        help="output folder of benchmarks/retest.py (scan0, scan1, ...)")
    args = parser.parse_args(argv)
    dirs = sorted(args.retest.glob("scan*/sub-01"))
    if len(dirs) < 2:
        print(f"{args.retest}: fewer than two scan*/sub-01 folders (run benchmarks/retest.py first)", file=sys.stderr)
        return 2
    scans = []
    for d in dirs:
        scan = load_scan(d)
        scan["registration"] = load_registration(find(d, "registration"))
        scan["bundles"] = {side: load_trk(find(d, f"cst_{side}")) for side in SIDES}
        scan["nodes"] = {side: resample_between_levels(scan["bundles"][side], scan["mni_z"], scan["affine"])
                         for side in SIDES}
        scans.append(scan)
    print(f"scans: {', '.join(str(d.parent.name) for d in dirs)} (pairs in order {list(combinations(range(len(dirs)), 2))})")

    print("\nwhere the profiles differ (Gaussian weights, FA warped to the template, nodes in MNI space):")
    fa_mni = []
    for scan in scans:
        warped, mni_affine = warp_to_mni(scan["fa"], scan["affine"], scan["registration"])
        fa_mni.append(warped)
    for side in SIDES:
        tracts = []
        for scan in scans:
            nodes = scan["nodes"][side]
            flat = nodes.reshape(-1, 3)
            ok = np.isfinite(flat[:, 0])
            mni = np.full_like(flat, np.nan)
            mni[ok] = subject_to_mni_points(flat[ok], scan["registration"])
            tracts.append(mni.reshape(nodes.shape))
        along = [[weighted_profile(t, node_weights, fa, mni_affine) for fa in fa_mni] for t in tracts]
        print(f"  {side:<6} each FA along its own tract   r {np.round(pairwise([along[i][i] for i in range(len(scans))]), 3).tolist()}")
        for i in range(len(scans)):
            print(f"  {side:<6} every FA along tract {i}        r {np.round(pairwise(along[i]), 3).tolist()}")
        for j in range(len(scans)):
            print(f"  {side:<6} FA {j} along every tract        r "
                  f"{np.round(pairwise([along[i][j] for i in range(len(scans))]), 3).tolist()}")

    print("\nmedian pairwise r of the FA profiles (scan's own grid), by the weights of a node's samples:")
    variants = {"Gaussian core weights (AFQ)": lambda n, s, side: node_weights(n),
                "equal weights": lambda n, s, side: np.isfinite(n[..., 0]).astype(float)}
    for floor in FLOORS:
        label = f"Juelich CST probability, floor {floor:g}" + (" (pipeline)" if floor == PRIOR_WEIGHT_FLOOR else "")
        variants[label] = (lambda f: lambda n, s, side: prior_weights(n, s["priors"][f"cst_prior_{side}"],
                                                                      s["affine"], floor=f))(floor)
    variants[f"probability (floor {PRIOR_WEIGHT_FLOOR:g}) x Gaussian"] = lambda n, s, side: (
        prior_weights(n, s["priors"][f"cst_prior_{side}"], s["affine"]) * node_weights(n))
    for label, weights in variants.items():
        cells = []
        for side in SIDES:
            profiles = [weighted_profile(s["nodes"][side], lambda n, s=s: weights(n, s, side), s["fa"], s["affine"])
                        for s in scans]
            cells.append(f"{side} {median_pairwise_correlation(profiles):.3f} "
                         f"({', '.join(f'{r:.3f}' for r in pairwise(profiles))})")
        print(f"  {label:<46}" + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
