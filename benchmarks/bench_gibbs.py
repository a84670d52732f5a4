"""Benchmark: dipy's gibbs_removal (one process) vs csttool's vectorised gibbs_removal_fast.

Data: synthetic head-like ellipsoids drawn at twice the in-plane resolution and k-space
truncated to the target grid (true Gibbs ringing), 3 contrasts cycled over the volumes,
Gaussian noise (0.5 % of max); float32, slices along axis 2.

For each size the script reports

* wall-clock and CPU time of
  ``dipy.denoise.gibbs.gibbs_removal(..., num_processes=1, inplace=False)`` and of
  ``gibbs_removal_fast(...)`` (workers=1), without tracemalloc running. dipy is
  run on all volumes or, where said, on the first k volumes with its time scaled by
  N / k (dipy's cost is the same for every slice, so this is linear);
* peak memory: the peak of ``tracemalloc`` (numpy buffers are traced) during a separate
  run, above what was allocated before it. ``gibbs_removal_fast`` is measured on the
  full array. dipy is measured on 1 volume and extrapolated to N volumes by adding the
  size of the other N - 1 volumes (dipy's extra memory is a full copy of the input plus
  per-slice temporaries);
* the largest absolute difference between the two outputs (on the volumes dipy
  processed), absolute and relative to the image maximum.

A second table gives the options of ``gibbs_removal_fast``: ``workers=2`` (threads) and
``mask=`` (the head dilated by 4 voxels for the synthetic data, or
``preprocess.processing_region`` for ``--nifti`` inputs), wall-clock and CPU time, the
fraction of the field of view in the mask and the largest difference inside the mask
from the unmasked result (which is dipy's), relative to the image maximum.

Usage::

    python benchmarks/bench_gibbs.py                       # both sizes (~15 min on 2 cores)
    python benchmarks/bench_gibbs.py --dipy-volumes 1 --phantom-dipy-volumes 4   # quicker
    python benchmarks/bench_gibbs.py --sizes --nifti DWI.nii.gz --dipy-volumes 1 --save /tmp/gibbs.txt

``--compare-old`` instead times the current ``gibbs_removal_fast`` against an older
version of it (``git show REF:csttool_nipype/science/gibbs.py``, default ``HEAD``) in
the same run, alternating old and new (best of ``--repeats`` CPU times), and gives
the largest difference of each from dipy's ``gibbs_removal`` (run on the first
``--dipy-volumes`` volumes) relative to the image maximum, without mask (overall) and
with mask (inside it)::

    python benchmarks/bench_gibbs.py --compare-old --no-save
    python benchmarks/bench_gibbs.py --compare-old --sizes clinical --nifti DWI.nii.gz --no-save

``--nifti`` adds a row for a DWI series (``DWI.bval`` next to it), e.g. the
128x128x60x33 phantom of ``csttool_nipype.sims``. The table is printed and
written to ``benchmarks/results/gibbs.txt`` (``--save PATH`` elsewhere, ``--no-save`` to
skip).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from dipy.denoise.gibbs import gibbs_removal

from _machine import load_average, machine_line  # noqa: E402 (benchmarks/ on sys.path)
from csttool_nipype.science.gibbs import gibbs_removal_fast

SIZES = {"phantom 3 mm": (64, 75, 64, 31), "clinical": (128, 128, 60, 33)}
RESULTS = Path(__file__).resolve().parent / "results" / "gibbs.txt"


def _ellipse(x, y, cx, cy, ax, ay, theta=0.0):
    c, s = np.cos(theta), np.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1


def ringing_data(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Float32 volumes with true truncation ringing in the (0, 1) plane (see module doc)."""
    nx, ny, nz, nv = shape
    x, y = np.meshgrid((np.arange(2 * nx) - nx) / (2 * nx), (np.arange(2 * ny) - ny) / (2 * ny), indexing="ij")
    keep = [np.r_[0:(n + 1) // 2, 2 * n - n // 2:2 * n] for n in (nx, ny)]
    contrasts = np.array([1.0, 0.7, 0.5])
    bases = np.empty((nx, ny, nz, len(contrasts)), np.float32)
    for z in range(nz):
        t = (z - (nz - 1) / 2) / nz                       # -0.5 .. 0.5
        f = np.sqrt(max(0.1, 1 - 3 * t * t))             # ellipsoid cross-section
        head = _ellipse(x, y, 0, 0, 0.42 * f, 0.36 * f, 0.2)
        inner = _ellipse(x, y, -0.05, 0, 0.17 * f, 0.12 * f, 0.2)
        disc = _ellipse(x, y, 0.2, 0.06, 0.07, 0.07) & (abs(t) < 0.3)
        fine = 1000 * (
            0.6 * head[..., None] + 0.6 * contrasts * inner[..., None] + 1.5 * contrasts**2 * disc[..., None]
        )
        spectrum = np.fft.fft2(fine, axes=(0, 1))[keep[0]][:, keep[1]] / 4
        bases[:, :, z] = np.abs(np.fft.ifft2(spectrum, axes=(0, 1)))
    rng = np.random.default_rng(seed)
    data = np.empty(shape, np.float32)
    sigma = np.float32(0.005 * bases.max())
    for g in range(nv):
        noise = rng.standard_normal(shape[:3], dtype=np.float32) * sigma
        data[..., g] = bases[..., g % len(contrasts)] * np.float32(1 - 0.005 * g) + noise
    return data


def run_dipy(data: np.ndarray) -> np.ndarray:
    return gibbs_removal(data, slice_axis=2, n_points=3, inplace=False, num_processes=1)


def run_fast(data: np.ndarray, **kwargs) -> np.ndarray:
    return gibbs_removal_fast(data, slice_axis=2, n_points=3, **kwargs)


def head_region(data: np.ndarray, margin: int = 4) -> np.ndarray:
    """Mask of the synthetic head (mean > 10 % of max), dilated by ``margin`` voxels (cube)."""
    from scipy import ndimage as ndi

    mean = data.mean(axis=3)
    return ndi.binary_dilation(mean > 0.1 * mean.max(), np.ones((2 * margin + 1,) * 3, bool))


def options(fast_out: np.ndarray, data: np.ndarray, mask: np.ndarray, fast_t: float, fast_cpu: float) -> dict:
    """Times of workers=2 and of mask= (1 and 2 workers); max difference inside the mask."""
    row = {"fast_t": fast_t, "fast_cpu": fast_cpu, "mask_frac": float(mask.mean())}
    gmax = float(np.max(np.abs(fast_out)))
    for key, kwargs in (("w2", {"workers": 2}), ("m1", {"mask": mask}), ("m2", {"mask": mask, "workers": 2})):
        out, t, cpu = timed(lambda d: run_fast(d, **kwargs), data)
        row[key + "_t"], row[key + "_cpu"] = t, cpu
        diff = np.abs(out.astype(np.float64) - fast_out)
        row[key + "_rel"] = float(np.max(diff[mask]) / gmax)
    return row


def timed(fn, data):
    """``fn(data)``, its wall-clock time and its CPU time (s)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(data)
    return out, time.perf_counter() - t0, time.process_time() - c0


def peak_mb(fn, data) -> float:
    """Peak traced allocation (MB) during ``fn(data)``, above the allocations before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 1e6


def bench(name: str, shape, dipy_volumes: int | None, data: np.ndarray | None = None, mask=None) -> dict:
    if data is None:
        print(f"[{name}] generating {'x'.join(map(str, shape))} ...", file=sys.stderr, flush=True)
        data = ringing_data(shape)
    shape = data.shape
    nv = shape[3]
    k = nv if dipy_volumes is None else max(1, min(dipy_volumes, nv))
    sub = np.ascontiguousarray(data[..., :k])

    print(f"[{name}] gibbs_removal_fast, {nv} volumes ...", file=sys.stderr, flush=True)
    fast_out, fast_t, fast_cpu = timed(run_fast, data)
    fast_mb = peak_mb(run_fast, data)

    print(f"[{name}] dipy gibbs_removal, {k} of {nv} volumes ...", file=sys.stderr, flush=True)
    dipy_out, dipy_t, dipy_cpu = timed(run_dipy, sub)
    one = np.ascontiguousarray(data[..., :1])
    dipy_mb = peak_mb(run_dipy, one) + (data.nbytes - one.nbytes) / 1e6

    diff = float(np.max(np.abs(fast_out[..., :k].astype(np.float64) - dipy_out)))
    print(f"[{name}] gibbs_removal_fast options ...", file=sys.stderr, flush=True)
    opts = options(fast_out, data, mask if mask is not None else head_region(data), fast_t, fast_cpu)
    return {
        "opts": opts,
        "name": name, "shape": "x".join(map(str, shape)), "mb_in": data.nbytes / 1e6,
        "dipy_t": dipy_t * nv / k, "dipy_cpu": dipy_cpu * nv / k,
        "dipy_note": "all vols" if k == nv else f"{k}/{nv} vols, scaled",
        "fast_t": fast_t, "fast_cpu": fast_cpu, "dipy_mb": dipy_mb, "fast_mb": fast_mb,
        "diff": diff, "rel": diff / float(np.max(np.abs(dipy_out))),
        "identical": bool(np.array_equal(fast_out[..., :k], dipy_out)),
    }


def table(rows: list[dict], header: str, command: str) -> str:
    lines = [
        "Gibbs-ringing removal: dipy.denoise.gibbs.gibbs_removal(num_processes=1) vs "
        "csttool_nipype.science.gibbs.gibbs_removal_fast (scipy.fft workers=1); float32, slice_axis=2, n_points=3",
        header,
        f"command: {command}",
        "",
        f"{'size':<14} {'array':<14} {'input':>7} | {'dipy run':<19} {'dipy s':>7} {'fast s':>7} {'speed-up':>8} | "
        f"{'dipy cpu':>8} {'fast cpu':>8} {'speed-up':>8} | "
        f"{'dipy peak':>9} {'fast peak':>9} {'ratio':>6} | {'max|diff|':>9} {'rel':>8} identical",
    ]
    for r in rows:
        lines.append(
            f"{r['name']:<14} {r['shape']:<14} {r['mb_in']:>5.0f}MB | {r['dipy_note']:<19} {r['dipy_t']:>7.1f} "
            f"{r['fast_t']:>7.1f} {r['dipy_t'] / r['fast_t']:>7.1f}x | {r['dipy_cpu']:>8.1f} {r['fast_cpu']:>8.1f} "
            f"{r['dipy_cpu'] / r['fast_cpu']:>7.1f}x | {r['dipy_mb']:>7.0f}MB {r['fast_mb']:>7.0f}MB "
            f"{r['dipy_mb'] / r['fast_mb']:>6.2f} | {r['diff']:>9.2e} {r['rel']:>8.1e} "
            f"{'yes' if r['identical'] else 'no'}"
        )
    lines += [
        "",
        "gibbs_removal_fast options: workers=2 (threads) and mask= (synthetic: head dilated by 4 voxels; "
        "NIfTI: preprocess.processing_region); rel = max |result - unmasked result (= dipy)| in the mask / image max",
        f"{'size':<14} {'mask':>5} | {'w1 s':>6} {'w2 s':>6} {'m+w1 s':>6} {'m+w2 s':>6} | "
        f"{'w1 cpu':>6} {'w2 cpu':>6} {'m+w1':>6} {'m+w2':>6} | {'w2 rel':>7} {'m+w1 rel':>8} {'m+w2 rel':>8}",
    ]
    for r in rows:
        o = r["opts"]
        lines.append(
            f"{r['name']:<14} {o['mask_frac']:>5.2f} | {o['fast_t']:>6.1f} {o['w2_t']:>6.1f} {o['m1_t']:>6.1f} "
            f"{o['m2_t']:>6.1f} | {o['fast_cpu']:>6.1f} {o['w2_cpu']:>6.1f} {o['m1_cpu']:>6.1f} {o['m2_cpu']:>6.1f} | "
            f"{o['w2_rel']:>7.1e} {o['m1_rel']:>8.1e} {o['m2_rel']:>8.1e}"
        )
    lines += [
        "",
        "Times: wall clock (s) and process CPU time (cpu), one run each, no tracemalloc; on a shared machine "
        "the CPU time is the steadier measure of work. 'scaled': dipy ran on the first k volumes and its "
        "times were multiplied by N/k. Peak: tracemalloc peak above the input (numpy buffers; pocketfft's "
        "internal scratch is not traced) in a separate run; fast measured on the full array, dipy measured on "
        "1 volume + (N-1) volumes' bytes (its full input copy). max|diff| on the volumes dipy processed; "
        "rel = / image max.",
        f"load average at end: {load_average()} (the machine is shared; load > CPU count slows both implementations)",
    ]
    return "\n".join(lines)


def load_old(ref: str):
    """The module ``csttool_nipype/science/gibbs.py`` as of git ``ref``."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "show", f"{ref}:csttool_nipype/science/gibbs.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "gibbs_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("gibbs_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_old(cases: list[tuple[str, np.ndarray, np.ndarray]], ref: str, workers: int, repeats: int,
                dipy_volumes: int) -> str:
    """Old vs new ``gibbs_removal_fast`` (speed ratio in one run) and both vs dipy."""
    old = load_old(ref)
    lines = [
        f"gibbs_removal_fast: git {ref} (old) vs working tree (new); float32, slice_axis=2, n_points=3, "
        f"workers={workers}; CPU s = best of {repeats} (old and new alternated)",
        f"{'data':<16} {'shape':<14} {'mask':<6} | {'old cpu':>7} {'new cpu':>7} {'ratio':>6} | "
        f"{'old wall':>8} {'new wall':>8} | {'old-dipy':>9} {'new-dipy':>9}",
    ]
    for name, data, mask in cases:
        k = max(1, min(dipy_volumes, data.shape[3]))
        print(f"[{name}] dipy on {k} volume(s) ...", file=sys.stderr, flush=True)
        ref_out = run_dipy(np.ascontiguousarray(data[..., :k]))
        gmax = float(np.max(np.abs(ref_out)))
        for use_mask in (False, True):
            kwargs = {"workers": workers, **({"mask": mask} if use_mask else {})}
            best = {"old": [np.inf, np.inf], "new": [np.inf, np.inf]}
            outs = {}
            for _ in range(repeats):
                for key, fn in (("old", old.gibbs_removal_fast), ("new", gibbs_removal_fast)):
                    print(f"[{name}] {key} mask={use_mask} ...", file=sys.stderr, flush=True)
                    out, t, cpu = timed(lambda d: fn(d, slice_axis=2, n_points=3, **kwargs), data)
                    best[key] = [min(best[key][0], cpu), min(best[key][1], t)]
                    outs[key] = out
            region = mask[..., None] if use_mask else np.ones(data.shape[:3] + (1,), bool)
            region = np.broadcast_to(region, ref_out.shape)
            rel = {key: float(np.max(np.abs(outs[key][..., :k].astype(np.float64) - ref_out)[region]) / gmax)
                   for key in outs}
            lines.append(
                f"{name:<16} {'x'.join(map(str, data.shape)):<14} {'yes' if use_mask else 'no':<6} | "
                f"{best['old'][0]:>7.1f} {best['new'][0]:>7.1f} {best['old'][0] / best['new'][0]:>5.2f}x | "
                f"{best['old'][1]:>8.1f} {best['new'][1]:>8.1f} | {rel['old']:>9.1e} {rel['new']:>9.1e}"
            )
    lines += [
        f"old-dipy / new-dipy: max |result - dipy gibbs_removal| / image max, over the first {dipy_volumes} "
        "volume(s): overall without mask, inside the mask with it. ratio = old CPU / new CPU.",
        f"load average at end: {load_average()}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dipy-volumes", type=int, default=2, help="volumes dipy runs on at the clinical size (default 2)"
    )
    parser.add_argument(
        "--phantom-dipy-volumes", type=int, default=None, help="volumes dipy runs on at the phantom size (default all)"
    )
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--nifti", type=Path, nargs="*", default=[], help="DWI series (.bval beside it), slices on axis 2")
    parser.add_argument("--save", type=Path, default=RESULTS, help=f"where to write the table (default {RESULTS})")
    parser.add_argument("--no-save", action="store_true", help="do not write the table")
    parser.add_argument("--compare-old", action="store_true", help="old (git --old-ref) vs new gibbs_removal_fast")
    parser.add_argument("--old-ref", default="HEAD", help="git revision of the old version (default HEAD)")
    parser.add_argument("--workers", type=int, default=2, help="workers for --compare-old (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each for --compare-old (default 2)")
    args = parser.parse_args(argv)

    if args.compare_old:
        cases = []
        for name in args.sizes:
            data = ringing_data(SIZES[name])
            cases.append((name, data, head_region(data)))
        for path in args.nifti:
            import nibabel as nib

            from csttool_nipype.science.preprocess import processing_region

            data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            bval = Path(str(path).removesuffix(".gz").removesuffix(".nii") + ".bval")
            cases.append((path.name.split(".")[0][:16], data, processing_region(data, np.loadtxt(bval))))
        text = compare_old(cases, args.old_ref, args.workers, args.repeats, args.dipy_volumes)
        print(text)
        if not args.no_save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(text + "\n")
        return 0

    header = machine_line()
    rows = []
    for name in args.sizes:
        k = args.phantom_dipy_volumes if name == "phantom 3 mm" else args.dipy_volumes
        rows.append(bench(name, SIZES[name], k))
    for path in args.nifti:
        import nibabel as nib

        from csttool_nipype.science.preprocess import processing_region

        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        bval = Path(str(path).removesuffix(".gz").removesuffix(".nii") + ".bval")
        mask = processing_region(data, np.loadtxt(bval))
        rows.append(bench(path.name.split(".")[0][:14], data.shape, args.dipy_volumes, data=data, mask=mask))
    command = shlex.join(["python", "benchmarks/bench_gibbs.py", *(argv if argv is not None else sys.argv[1:])])
    text = table(rows, header, command)
    print(text)
    if not args.no_save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
