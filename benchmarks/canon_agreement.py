"""Cross-scan agreement of the CST metrics on the three Canon scans of one head (issue #3).

Usage::

    python benchmarks/canon_agreement.py [--variant NAME="FLAGS" ...] [--out /tmp/csttool-canon] [--nprocs 2]

Runs ``csttool run`` on the axial PA NIfTI, the 20-degree sagittal NIfTI and the axial AP
classic DICOM series of ``../shared/data/canon_galan_dti12_b1500`` (stops with a message
when the folder is absent), once per variant: ``default`` (no flags) unless variants are
given, each as ``NAME="--flag value ..."`` (for example
``cut="--cst-midline cut"``). Each scan keeps one Nipype work folder for all variants, so
stages whose inputs a variant does not change (preprocessing, registration) run once.

Prints, per variant and side, mean CST FA, volume and streamline count of the three scans
and how far apart they are, against the targets of issue #3: FA within 0.015 (max - min),
volume within 10 % and count within 15 % of the three scans' mean. Saves the table in
``benchmarks/results/canon_agreement.txt``.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_line, publish  # noqa: E402 (benchmarks/ on sys.path)

from csttool_nipype.derivatives import path as output_path

HERE = Path(__file__).resolve().parent
CANON = HERE.parent.parent / "shared" / "data" / "canon_galan_dti12_b1500"
#: The ``csttool`` of the Python running this script (its venv's), else the one on PATH.
CSTTOOL = str(Path(sys.executable).parent / "csttool") if (Path(sys.executable).parent / "csttool").is_file() \
    else "csttool"
#: scan -> csttool run input flags
SCANS = {
    "axial PA": ["--dwi", str(CANON / "nifti" / "3000_DTI_PA-ortho_cl.nii.gz")],
    "sagittal": ["--dwi", str(CANON / "nifti" / "10000_SAG_DTI_PA-COR_20d_cl.nii.gz")],
    "axial AP DICOM": ["--dicom", str(CANON / "dicom_classic_gz" / "4000_DTI_AP-ortho")],
}
#: metric -> (how agreement is measured, limit), as tests/test_cst_realdata.py checks them:
#: "spread" = max - min, "relative" = largest deviation from the mean as a fraction of it
TARGETS = {"fa_mean": ("spread", 0.015), "volume_mm3": ("relative", 0.10), "streamline_count": ("relative", 0.15)}


def disagreement(values: list[float], kind: str) -> float:
    """Max - min (``spread``) or the largest |value / mean - 1| (``relative``)."""
    if kind == "spread":
        return max(values) - min(values)
    mean = sum(values) / len(values)
    return max(abs(v / mean - 1) for v in values)


def run_scan(scan: str, flags: list[str], out: Path, work: Path, nprocs: int, inputs: list[str] | None = None) -> dict:
    """One ``csttool run`` (input flags ``inputs``, default ``SCANS[scan]``); the summary row and wall time."""
    cmd = [CSTTOOL, "run", *(inputs or SCANS[scan]), "--out", str(out), "--work-dir", str(work), "--subject-id", "sub-01",
           "--nprocs", str(nprocs), *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"csttool run failed on {scan} ({' '.join(flags) or 'defaults'}): {tail[0]}")
    with open(output_path(out / "sub-01", "summary", "sub-01"), newline="") as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {**row, "seconds": seconds}


def named_flags(parser, option: str, specs: list[str]) -> dict[str, list[str]]:
    """``NAME="FLAGS"`` arguments as {name: flag list}; a malformed one is a usage error."""
    named = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            parser.error(f"{option} needs NAME=\"FLAGS\", got {spec!r}")
        named[name] = shlex.split(flags)
    return named


def table(results: dict[str, dict[str, dict]]) -> list[str]:
    scans = list(SCANS)
    lines = [f"scans (in this order): {', '.join(scans)}", ""]
    header = f"{'variant':<16}{'side':<7}{'metric':<18}{'values':<28}{'apart':>9}{'target':>9}  met"
    lines += [header, "-" * len(header)]
    for variant, rows in results.items():
        met_all = True
        for side in ("left", "right"):
            for key, (kind, limit) in TARGETS.items():
                values = [float(rows[s][f"{key}_{side}"]) for s in scans]
                found = disagreement(values, kind)
                met = found <= limit
                met_all &= met
                shown = ", ".join(f"{v:.3f}" if key == "fa_mean" else f"{v:.0f}" for v in values)
                apart = f"{found:.3f}" if kind == "spread" else f"±{100 * found:.0f} %"
                goal = f"{limit:.3f}" if kind == "spread" else f"±{100 * limit:.0f} %"
                lines.append(f"{variant:<16}{side:<7}{key:<18}{shown:<28}{apart:>9}{goal:>9}  {'yes' if met else 'NO'}")
        seconds = sum(rows[s]["seconds"] for s in scans)
        lines.append(f"{variant:<16}all six targets met: {'yes' if met_all else 'no'}; three runs {seconds:.0f} s")
        lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                        help="a name and the csttool run flags of one variant (repeatable; default: defaults only)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/csttool-canon"))
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args(argv)
    if not CANON.is_dir():
        print(f"{CANON} not found: the Canon scans are needed (../shared/data next to the project)", file=sys.stderr)
        return 1
    variants = named_flags(parser, "--variant", args.variant) if args.variant else {"default": []}
    results: dict[str, dict[str, dict]] = {}
    for name, flags in variants.items():
        results[name] = {}
        for i, scan in enumerate(SCANS):
            results[name][scan] = run_scan(scan, flags, args.out / name / f"scan{i}", args.out / "work" / f"scan{i}",
                                           args.nprocs)
    flags_lines = [f"{name}: {' '.join(flags) or '(defaults)'}" for name, flags in variants.items()]
    lines = [machine_line(), "Variants:", *flags_lines, "", *table(results)]
    publish("\n".join(lines), "canon_agreement.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
