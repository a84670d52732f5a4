"""Benchmark: MP-PCA (``mppca_fast``) with patch centres on a lattice of stride s vs every voxel.

For each data set the denoiser runs as the pipeline runs it
(:func:`csttool_nipype.science.denoise._denoise_mppca`: float32, patch radius from
``_mppca_patch_radius``, patch centres on the brain mask dilated by the radius, the
bounding box of that), once per stride, in the same process, one after the other.
Reported per stride:

* wall-clock and CPU time and their ratio to stride 1 in the same run (the machine is
  shared: compare the ratios, not the absolute times; CPU time is the steadier one);
* phantoms (noise-free signal ``dwi_clean`` and true FA known), inside the true brain
  mask: RMSE of the denoised DWI vs ``dwi_clean`` in units of the noise sigma (the noisy
  input's RMSE for reference), and after a WLS tensor fit
  (:func:`csttool_nipype.science.tensor.fit_tensor`) the FA error vs the true FA
  (``truth["fa"]``): mean absolute error, SD and mean (bias). The FA error vs the FA fitted
  to the noise-free signal is also given (``|dFA| clean``): it leaves out the tensor model's
  partial-volume error, which is the same for every stride;
* the real Philips scan (no ground truth; brain mask from
  :func:`csttool_nipype.science.preprocess.brain_mask`): the RMS difference of each stride's
  output to stride 1's inside the brain, in units of the median MP-PCA sigma, and the
  median (absolute) FA change vs stride 1.

Data sets:

* ``clinical``: phantom 1.75x1.75x2.5 mm, 128x128x60, 1 b0 + 32 directions b=1000, SNR 30
  (``--quick``: a 16-slice slab through the middle, cropped after simulation);
* ``3mm``: phantom 3 mm, 64x75x64, 1 b0 + 15 directions b=1000, SNR 30 (like the real scans);
* ``vanderbilt``: the real Philips Achieva subject, 80x80x40, b0 + 15 directions b=2000
  (read from ``../shared/data``; skipped if absent).

Usage::

    python benchmarks/bench_mppca_stride.py                 # strides 1 2 3, all data (~5 min on 2 loaded cores)
    python benchmarks/bench_mppca_stride.py --quick         # clinical slab only (~1 min)
    python benchmarks/bench_mppca_stride.py --strides 1 2 --data 3mm vanderbilt --workers 2

The table is printed and written to ``benchmarks/results/mppca_stride.txt`` (``--no-save``
to skip).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from _machine import load_average, machine_line  # noqa: E402 (benchmarks/ on sys.path)
from csttool_nipype.science.mppca import mppca_fast
from csttool_nipype.science.denoise import _mppca_patch_radius
from csttool_nipype.science.preprocess import brain_mask
from csttool_nipype.science.tensor import fit_tensor

ROOT = Path(__file__).resolve().parents[1]
VANDERBILT = ROOT.parent / "shared" / "data" / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax.nii.gz"
DATA = ("clinical", "3mm", "vanderbilt")
RESULTS = Path(__file__).resolve().parent / "results" / "mppca_stride.txt"


# --------------------------------------------------------------------------- data
def load(name: str, quick: bool) -> dict:
    """``dwi`` (float32), ``bvals``, ``bvecs`` (voxel axes), ``brain``, and for phantoms
    ``clean``, ``fa_true``, ``sigma``; ``desc``."""
    if name == "vanderbilt":
        import nibabel as nib

        dwi = np.asarray(nib.load(str(VANDERBILT)).get_fdata(dtype=np.float32))
        stem = str(VANDERBILT)[:-len(".nii.gz")]
        bvals = np.loadtxt(stem + ".bval").ravel()
        bvecs = np.loadtxt(stem + ".bvec")
        bvecs = bvecs.T if bvecs.shape[0] == 3 else bvecs
        brain, _ = brain_mask(dwi, bvals)
        return {"dwi": dwi, "bvals": bvals, "bvecs": bvecs, "brain": brain,
                "desc": "real Philips Achieva, 3 mm isotropic, b0 + 15 dirs b=2000"}
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.phantom import make_phantom

    if name == "clinical":
        spec = PhantomSpec(voxel_size=(1.75, 1.75, 2.5), n_directions=32, n_b0=1, field_of_view_mm=(224.0, 224.0, 150.0))
        desc = "phantom 1.75x1.75x2.5 mm, 1 b0 + 32 dirs b=1000, SNR 30"
    else:
        spec = PhantomSpec(voxel_size=3.0, n_directions=15, n_b0=1)
        desc = "phantom 3 mm, 1 b0 + 15 dirs b=1000, SNR 30"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ph = make_phantom(spec)
    sl = (slice(None),) * 3
    if quick and name == "clinical":
        mid = ph.dwi.shape[2] // 2
        sl = (slice(None), slice(None), slice(mid - 8, mid + 8))
        desc += ", 16-slice slab"
    return {"dwi": np.ascontiguousarray(ph.dwi[sl], dtype=np.float32), "clean": ph.dwi_clean[sl],
            "bvals": ph.bvals, "bvecs": ph.bvecs_voxel, "brain": ph.truth["brain_mask"][sl],
            "fa_true": ph.truth["fa"][sl], "sigma": float(ph.sigma), "desc": desc}


# --------------------------------------------------------------------------- running
def denoise(dwi: np.ndarray, brain: np.ndarray, stride: int, workers: int):
    """As ``denoise._denoise_mppca`` (fast), with ``patch_stride``: (out, sigma map, wall s, cpu s, patches)."""
    radius = _mppca_patch_radius(dwi.shape[-1])
    centres = ndimage.binary_dilation(brain, structure=np.ones((2 * radius + 1,) * 3, bool))
    idx = np.argwhere(centres)
    lo = np.maximum(idx.min(0) - radius, 0)
    hi = np.minimum(idx.max(0) + radius + 1, brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out = np.zeros(dwi.shape, np.float32)
    sig = np.zeros(dwi.shape[:3], np.float32)
    c0, t0 = time.process_time(), time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        out[box], sig[box] = mppca_fast(dwi[box], mask=centres[box], patch_radius=radius, return_sigma=True,
                                        out_dtype=np.float32, workers=workers, patch_stride=stride)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return np.nan_to_num(out), sig, wall, cpu


def fa_of(dwi, d, mask):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fit_tensor(dwi, d["bvals"], d["bvecs"], mask)["fa"].astype(float)


def bench(name: str, strides: list[int], workers: int, quick: bool) -> list[dict]:
    if name == "vanderbilt" and not VANDERBILT.exists():
        print(f"skipping {name}: {VANDERBILT} not found", file=sys.stderr)
        return []
    d = load(name, quick)
    brain = d["brain"]
    shape = "x".join(str(v) for v in d["dwi"].shape)
    rows, ref = [], None
    truth = "clean" in d
    if truth:
        fa_clean = fa_of(d["clean"], d, brain)
        noisy_rmse = float(np.sqrt(np.mean((d["dwi"].astype(float) - d["clean"])[brain] ** 2))) / d["sigma"]
    for s in strides:
        out, sig, wall, cpu = denoise(d["dwi"], brain, s, workers)
        fa = fa_of(out, d, brain)
        row = {"name": name, "shape": shape, "desc": d["desc"], "stride": s, "wall": wall, "cpu": cpu}
        if ref is None:
            ref = {"out": out, "fa": fa, "wall": wall, "cpu": cpu, "sigma": float(np.median(sig[brain]))}
        row["t_ratio"], row["cpu_ratio"] = wall / ref["wall"], cpu / ref["cpu"]
        row["diff1"] = float(np.sqrt(np.mean((out.astype(float) - ref["out"])[brain] ** 2))) / ref["sigma"]
        row["dfa1"] = float(np.median(np.abs(fa - ref["fa"])[brain]))
        row["dfa1_signed"] = float(np.median((fa - ref["fa"])[brain]))
        row["sigma_med"] = float(np.median(sig[brain]))
        if truth:
            err = (fa - d["fa_true"])[brain]
            row.update(
                noisy=noisy_rmse,
                rmse=float(np.sqrt(np.mean((out.astype(float) - d["clean"])[brain] ** 2))) / d["sigma"],
                fa_mae=float(np.mean(np.abs(err))), fa_sd=float(np.std(err)), fa_bias=float(np.mean(err)),
                fa_mae_clean=float(np.mean(np.abs(fa - fa_clean)[brain])),
                true_sigma=d["sigma"],
            )
        rows.append(row)
        print(f"  {name} stride {s}: {wall:.1f} s wall, {cpu:.1f} s cpu", file=sys.stderr, flush=True)
    if truth:   # the noisy data's FA for reference
        err = (fa_of(d["dwi"], d, brain) - d["fa_true"])[brain]
        rows.append({"name": name, "shape": shape, "desc": d["desc"], "stride": None,
                     "noisy": noisy_rmse, "rmse": noisy_rmse, "fa_mae": float(np.mean(np.abs(err))),
                     "fa_sd": float(np.std(err)), "fa_bias": float(np.mean(err))})
    return rows


def table(rows: list[dict], header: str, command: str, workers: int) -> str:
    head = (f"{'data':<10} {'array':<14} {'stride':>6} | {'wall s':>7} {'cpu s':>7} {'wall/s1':>7} {'cpu/s1':>7} | "
            f"{'RMSE/sig':>8} | {'FA MAE':>7} {'FA SD':>7} {'FA bias':>8} {'|dFA|cln':>8} | "
            f"{'RMS d vs s1':>11} {'med|dFA| s1':>11} {'med dFA s1':>10} | {'sigma med':>9}")
    lines = [f"MP-PCA (mppca_fast, workers={workers}) with patch centres on a lattice of stride s vs every voxel",
             header, f"command: {command}", "", head]
    for r in rows:
        if r["stride"] is None:
            lines.append(f"{r['name']:<10} {r['shape']:<14} {'noisy':>6} | {'':>7} {'':>7} {'':>7} {'':>7} | "
                         f"{r['rmse']:>8.3f} | {r['fa_mae']:>7.4f} {r['fa_sd']:>7.4f} {r['fa_bias']:>+8.4f} {'':>8} |")
            continue
        cells = (f"{r['name']:<10} {r['shape']:<14} {r['stride']:>6} | {r['wall']:>7.1f} {r['cpu']:>7.1f} "
                 f"{r['t_ratio']:>7.3f} {r['cpu_ratio']:>7.3f} | ")
        if "rmse" in r:
            cells += (f"{r['rmse']:>8.3f} | {r['fa_mae']:>7.4f} {r['fa_sd']:>7.4f} {r['fa_bias']:>+8.4f} "
                      f"{r['fa_mae_clean']:>8.4f} | ")
        else:
            cells += f"{'-':>8} | {'-':>7} {'-':>7} {'-':>8} {'-':>8} | "
        cells += f"{r['diff1']:>11.3f} {r['dfa1']:>11.4f} {r['dfa1_signed']:>+10.4f} | {r['sigma_med']:>9.1f}"
        lines.append(cells)
    lines += [""] + sorted({f"{r['name']}: {r['desc']}" for r in rows}) + [
        "",
        "All statistics inside the brain mask (phantoms: the true one; real scan: preprocess.brain_mask). "
        "Denoising as the pipeline calls it (centres on the brain mask dilated by the patch radius, its bounding "
        "box), float32, patch radius 2. wall/s1, cpu/s1: time of this stride / stride 1 in the same run. "
        "RMSE/sig: RMS(denoised - noise-free signal) / true noise sigma ('noisy' row: the input). FA: WLS tensor "
        "fit (science.tensor.fit_tensor); FA MAE, SD, bias = mean |FA - true FA|, SD and mean of FA - true FA; "
        "|dFA|cln = mean |FA - FA fitted to the noise-free signal|. RMS d vs s1 = RMS(output - stride-1 output) / "
        "median MP-PCA sigma of stride 1; med|dFA| s1, med dFA s1 = median |FA change| and median FA change vs "
        "stride 1. sigma med = median of the MP-PCA noise map in the brain.",
        f"load average at end: {load_average()}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=DATA, default=None,
                        help="data sets (default: all; with --quick: clinical)")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 3],
                        help="patch strides (the first is the reference; default 1 2 3)")
    parser.add_argument("--workers", type=int, default=1, help="mppca_fast threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="clinical phantom as a 16-slice slab only, unless --data")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args(argv)
    names = args.data or (["clinical"] if args.quick else list(DATA))
    if args.strides[0] != 1:
        parser.error("the first stride is the reference and must be 1")
    header = machine_line()
    rows = []
    for name in names:
        rows += bench(name, args.strides, args.workers, args.quick)
    command = shlex.join(["python", "benchmarks/bench_mppca_stride.py", *(argv if argv is not None else sys.argv[1:])])
    text = table(rows, header, command, args.workers)
    print(text)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
