"""All of issue #7's measurements in one command: per-subject stages, batch scaling, planning.

Usage::

    python benchmarks/run_all.py [--subjects 8]

Runs :mod:`bench_subject` (the Philips subject from ``../shared/data`` when present, a
128x128x60x33 clinical-size phantom, a 2 mm 65-volume phantom: stage times, node peak
memory, wall time end to end) and then :mod:`bench_batch` (``--subjects`` phantom subjects
with ``--nprocs 1`` and ``--nprocs 2``, engine overhead, planning a 1000-subject BIDS
tree). Each prints its table and saves it under ``benchmarks/results/`` (``subject.txt``,
``batch.txt``) with the machine description. Run it on a quiet machine: other load
distorts the ratios. About 15-25 minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys

import bench_batch
import bench_subject


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8, help="phantom subjects in the batch benchmark")
    args = parser.parse_args(argv)
    code = bench_subject.main([])
    return code or bench_batch.main(["--subjects", str(args.subjects)])


if __name__ == "__main__":
    sys.exit(main())
