"""What the eddy-current terms cost in motion correction (issue #17).

Usage::

    python benchmarks/bench_eddy.py [--repeats 2] [--workers 2]

Imports the Philips scan of ``../shared/data`` (stops with a message when absent) and runs
:func:`csttool_nipype.science.motion.motion_correct` on it with rigid registration only and
with the eddy-current terms along the sidecar's phase-encoding axis, alternately, in one
process (so both see the same machine load). Prints the median time of each, their ratio,
and the head-motion and eddy numbers of the report; saves the table in
``benchmarks/results/eddy_cost.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_line, publish  # noqa: E402 (benchmarks/ on sys.path)

from csttool_nipype.science.dwi_import import import_dwi
from csttool_nipype.science.eddy import phase_encoding_world
from csttool_nipype.science.motion import motion_correct

HERE = Path(__file__).resolve().parent
PHILIPS = HERE.parent.parent / "shared" / "data" / "philips_achieva_vanderbilt_dti15_b2000" / "nifti"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    nifti = next(PHILIPS.glob("*.nii.gz"), None) if PHILIPS.is_dir() else None
    if nifti is None:
        print(f"{PHILIPS} not found: the Philips scan is needed (../shared/data next to the project)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        dwi = import_dwi(nifti=nifti, work_dir=tmp)
    pe = phase_encoding_world(dwi.metadata, dwi.affine)
    times = {"rigid": [], "rigid + eddy": []}
    reports = {}
    for _ in range(args.repeats):
        for name, axis in (("rigid", None), ("rigid + eddy", pe)):
            start = time.perf_counter()
            *_, report = motion_correct(dwi.data, dwi.affine, dwi.bvals, dwi.bvecs_voxel, workers=args.workers,
                                        pe_world=axis)
            times[name].append(time.perf_counter() - start)
            reports[name] = report
    rigid, eddy = statistics.median(times["rigid"]), statistics.median(times["rigid + eddy"])
    lines = [machine_line(), f"series: {nifti.name}, {'x'.join(map(str, dwi.data.shape))}, phase encoding "
             f"along world {[round(float(v), 3) for v in pe] if pe is not None else 'unknown'}; "
             f"{args.workers} workers, median of {args.repeats}", "",
             f"{'model':<16}{'time (s)':>10}{'mean FD (mm)':>15}{'mean eddy (mm)':>16}"]
    for name, seconds in (("rigid", rigid), ("rigid + eddy", eddy)):
        r = reports[name]
        lines.append(f"{name:<16}{seconds:>10.1f}{r['mean_fd_mm']:>15.2f}{r.get('mean_eddy_mm', float('nan')):>16.2f}")
    lines += ["", f"eddy / rigid time: {eddy / rigid:.2f}"]
    publish("\n".join(lines), "eddy_cost.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
