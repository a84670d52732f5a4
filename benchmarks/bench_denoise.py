"""Benchmark: dipy's mppca (MP-PCA denoising) vs csttool's vectorised mppca_fast.

Data:

* ``vanderbilt``: the real Philips Achieva subject (80x80x40, 16 volumes: b0 + 15
  directions at b=2000) from ``../shared/data`` (skipped if absent);
* ``clinical``: the digital phantom (:mod:`csttool_nipype.sims`) at
  1.75x1.75x2.5 mm, 128x128x60, 1 b0 + 32 directions at b=1000, SNR 30 - the size of a
  typical clinical DTI.

Both in float32, patch radius 2 (5x5x5 patches, as the pipeline chooses for these
volume counts), no mask (as the pipeline's Denoise node calls it), ``return_sigma=True``.

For each size the script reports

* wall-clock and CPU time of ``dipy.denoise.localpca.mppca(..., pca_method="eig")`` and
  of ``mppca_fast(...)`` with ``workers=1`` (and, with ``--workers 1 2``, 2 threads). dipy
  runs on all slices or, where said, on a slab of k slices through the middle with its
  times scaled by the ratio of patch counts (its cost per patch is the same everywhere:
  one Python iteration and one LAPACK ``eigh`` each);
* peak resident memory (RSS, sampled every 20 ms from ``/proc/self/statm``) during each
  run, and its rise above the RSS at the start of the run (the input is already loaded);
* the largest absolute difference between the two outputs on the voxels dipy computed
  completely (all slices, or the slab minus 2 radii at each end), absolute and relative
  to the image maximum, and the fraction of values differing by more than 1e-5 x max.

Usage::

    python benchmarks/bench_denoise.py                       # both sizes (~10 min on 2 loaded cores)
    python benchmarks/bench_denoise.py --sizes vanderbilt --workers 1 2

The table is printed and written to ``benchmarks/results/denoise.txt`` (``--no-save``
to skip).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from dipy.denoise.localpca import mppca

from _machine import load_average, machine_line  # noqa: E402 (benchmarks/ on sys.path)
from csttool_nipype.science.mppca import mppca_fast
from csttool_nipype.science.denoise import _mppca_patch_radius

ROOT = Path(__file__).resolve().parents[1]
VANDERBILT = ROOT.parent / "shared" / "data" / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax.nii.gz"
SIZES = ("vanderbilt", "clinical")
RESULTS = Path(__file__).resolve().parent / "results" / "denoise.txt"


# --------------------------------------------------------------------------- data
def load(name: str) -> tuple[np.ndarray, str]:
    """float32 (X, Y, Z, N) data and a description."""
    if name == "vanderbilt":
        import nibabel as nib

        img = nib.load(str(VANDERBILT))
        return np.asarray(img.get_fdata(dtype=np.float32)), "real Philips subject"
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.phantom import make_phantom

    spec = PhantomSpec(voxel_size=(1.75, 1.75, 2.5), n_directions=32, n_b0=1, field_of_view_mm=(224.0, 224.0, 150.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ph = make_phantom(spec)
    return np.ascontiguousarray(ph.dwi, dtype=np.float32), "phantom 1.75x1.75x2.5 mm, SNR 30"


# --------------------------------------------------------------------------- measuring
def _trim_heap() -> None:
    """Return freed heap memory to the system (glibc), so that RSS figures start clean."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Peak RSS (bytes) of this process while the ``with`` block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def timed(fn, *args, **kwargs):
    """``fn(...)``, its wall-clock time, CPU time (s), peak RSS and its rise above the start (bytes)."""
    _trim_heap()
    with RssPeak() as mem:
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, wall, cpu, mem.peak, mem.peak - mem.start


def run_dipy(data: np.ndarray, radius: int):
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return mppca(data, patch_radius=radius, pca_method="eig", return_sigma=True,
                     out_dtype=np.float32, suppress_warning=True)


def run_fast(data: np.ndarray, radius: int, workers: int):
    with np.errstate(invalid="ignore", divide="ignore"):
        return mppca_fast(data, patch_radius=radius, return_sigma=True, out_dtype=np.float32, workers=workers)


def table(rows: list[dict], workers: list[int], header: str, command: str) -> str:
    w1 = workers[0]
    extra = [w for w in workers[1:]]
    head = (
        f"{'size':<11} {'array':<14} {'input':>6} | {'dipy run':<19} {'dipy s':>7} {'fast s':>7} {'speed-up':>8} | "
        f"{'dipy cpu':>8} {'fast cpu':>8} {'speed-up':>8} | "
        + "".join(f"{f'fast s w={w}':>11} {'speed-up':>8} | " for w in extra)
        + f"{'dipy RSS':>9} {'fast RSS':>9} | {'max|diff|':>9} {'rel':>8} {'>1e-5':>7} | {'sigma':>8} {'NaN pos':>7}"
    )
    lines = [
        "MP-PCA denoising: dipy.denoise.localpca.mppca(pca_method='eig') vs "
        f"csttool_nipype.science.mppca.mppca_fast (workers={w1}); float32, patch radius 2, no mask, return_sigma",
        header,
        f"command: {command}",
        "",
        head,
    ]
    for r in rows:
        f1 = r["fast"][w1]
        cells = (
            f"{r['name']:<11} {r['shape']:<14} {r['mb_in']:>4.0f}MB | {r['dipy_note']:<19} {r['dipy_t']:>7.1f} "
            f"{f1['t']:>7.1f} {r['dipy_t'] / f1['t']:>7.1f}x | {r['dipy_cpu']:>8.1f} {f1['cpu']:>8.1f} "
            f"{r['dipy_cpu'] / f1['cpu']:>7.1f}x | "
        )
        for w in extra:
            fw = r["fast"][w]
            cells += f"{fw['t']:>11.1f} {r['dipy_t'] / fw['t']:>7.1f}x | "
        cells += (
            f"{r['dipy_peak']:>7.0f}MB {f1['peak']:>7.0f}MB | {r['diff']:>9.2e} {r['rel']:>8.1e} "
            f"{r['frac']:>7.1e} | {r['sigma_diff']:>8.1e} {100 * r['nan_agree']:>6.2f}%"
        )
        lines.append(cells)
    lines.append("")
    for r in rows:
        rises = ", ".join(f"w={w} +{r['fast'][w]['rise']:.0f} MB" for w in workers)
        lines.append(
            f"{r['name']}: {r['desc']}; RSS rise above the start of the run: dipy +{r['dipy_rise']:.0f} MB"
            f"{r['dipy_rise_note']}, fast {rises}; fast output identical for all workers: "
            f"{'yes' if r['same_across_workers'] else 'NO'}"
        )
    lines += [
        "",
        "Times: wall clock (s) and process CPU time (s), one run each; on a shared machine the CPU time is the "
        "steadier measure of work. 'scaled': dipy ran on a slab of k slices through the middle and its times were "
        "multiplied by the ratio of patch centres (Z - 4) / (k - 4). RSS: peak resident set size of the process "
        "during the run (input loaded before; sampled every 20 ms). max|diff|: largest |fast - dipy| over the "
        "voxels dipy computed completely; rel = / image max; '>1e-5' = fraction of values differing by more than "
        "1e-5 x max; 'sigma' = largest |difference| of the noise maps (where both are finite) / dipy's median "
        "sigma; 'NaN pos' = voxels where both noise maps are NaN or both are not (NaN: the noise classifier found "
        "no level, in degenerate background patches, e.g. of exact zeros, where rounding decides). dipy computes "
        "float32 data in float32 and mppca_fast in float64, so the differences are dipy's float32 rounding "
        "(tests/test_mppca.py).",
        f"load average at end: {load_average()} (the machine is shared; load > CPU count slows both implementations)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--dipy-slices", type=int, default=12,
                        help="slices dipy runs on at the clinical size (default 12; 0 = all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="thread counts for mppca_fast (first = the reference column; default 1)")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args(argv)

    header = machine_line()
    rows = []
    for name in args.sizes:
        slices = None if name == "vanderbilt" or args.dipy_slices <= 0 else args.dipy_slices
        row = bench(name, slices, args.workers)
        if row is not None:
            rows.append(row)
    command = shlex.join(["python", "benchmarks/bench_denoise.py", *(argv if argv is not None else sys.argv[1:])])
    text = table(rows, args.workers, header, command)
    print(text)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
