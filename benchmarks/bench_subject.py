"""Per-subject benchmark: wall time and peak memory per stage, end to end, default options.

Usage::

    python benchmarks/bench_subject.py [--cases vanderbilt clinical phantom2mm] [--out /tmp/csttool-bench-subject]

Cases (issue #7): ``vanderbilt`` the Philips subject from ``../shared/data`` (skipped when
absent), ``clinical`` a phantom of 128x128x60 voxels of 1.75x1.75x2.5 mm with 33 volumes,
``phantom2mm`` a 2 mm phantom with 65 volumes. Each runs alone as a one-subject
``csttool batch`` (the real engine: own process, Nipype, promotion, report), so the table
shows node times from ``_done.json``, the job's peak RSS and the wall time with everything.
Prints a table and saves it in ``benchmarks/results/subject.txt``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from _machine import machine_line, publish, warm_array_cache  # noqa: E402 (benchmarks/ on sys.path)
from bench_batch import stage_of

from csttool_nipype.config import available_cpus

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def _phantom(root: Path, **spec) -> Path:
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.writer import write_bids_dataset

    write_bids_dataset(root, 1, spec=PhantomSpec(snr=30.0, rotation_deg=5.0, translation_mm=5.0, **spec), seed=0)
    return next(root.glob("sub-*/dwi/*_dwi.nii.gz"))


def inputs(case: str, work: Path) -> dict | None:
    if case == "vanderbilt":
        nifti = SHARED / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax.nii.gz"
        return {"nifti": str(nifti)} if nifti.exists() else None
    if case == "clinical":
        return {"nifti": str(_phantom(work / "raw", voxel_size=(1.75, 1.75, 2.5), n_directions=32,
                                      field_of_view_mm=(224.0, 224.0, 150.0)))}
    if case == "phantom2mm":
        return {"nifti": str(_phantom(work / "raw", voxel_size=2.0, n_directions=64))}
    raise ValueError(case)


def run_case(case: str, out: Path, nprocs: int) -> dict | None:
    import nibabel as nib

    from csttool_nipype.batch.console import BatchConsole
    from csttool_nipype.subjects import load_manifest
    from csttool_nipype.cohort import CohortOptions, run_cohort

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = inputs(case, out)
    if src is None:
        return None
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-01", **src}]}))
    global_options, specs = load_manifest(manifest)
    t0 = time.perf_counter()
    with open(out / "console.txt", "w") as sink:
        run_cohort(specs, global_options, out / "derivatives",
                   CohortOptions(nprocs=nprocs), BatchConsole(sink))
    wall = time.perf_counter() - t0
    done = json.loads((out / "derivatives" / "sub-01" / "_done.json").read_text())
    stages, memory = defaultdict(float), defaultdict(float)
    for node, secs in done["result"].get("node_durations_s", {}).items():
        stages[stage_of(node)] += secs
    stages["report"] = done["result"].get("report_s", 0.0)
    memory["report"] = 1024 * done["result"].get("report_peak_mem_gb", float("nan"))
    for node, gb in done["result"].get("node_peak_mem_gb", {}).items():
        memory[stage_of(node)] = max(memory[stage_of(node)], gb * 1024)
    shape = nib.load(src["nifti"]).shape
    busy = done["result"].get("node_busy_s", float("nan"))
    return {"shape": "x".join(map(str, shape)), "wall": wall, "stages": dict(stages), "memory": dict(memory),
            "peak_rss_mb": done["result"].get("peak_rss_mb"), "busy": busy,
            "outside": wall - busy - stages["report"]}


#: Issue #7's targets per case: (wall s, peak RSS MB or None).
TARGETS = {"vanderbilt": (25.0, None), "clinical": (60.0, 2048.0)}


def target_cell(case: str, r: dict) -> str:
    if case not in TARGETS:
        return "–"
    wall, rss = TARGETS[case]
    ok = r["wall"] <= wall and (rss is None or (r["peak_rss_mb"] or float("inf")) <= rss)
    limit = f"≤ {wall:.0f} s" + (f", ≤ {rss / 1024:.0f} GB" if rss else "")
    return f"{limit}: {'met' if ok else 'not met'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["vanderbilt", "clinical", "phantom2mm"],
                        choices=["vanderbilt", "clinical", "phantom2mm"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/csttool-bench-subject"))
    parser.add_argument("--nprocs", type=int, default=available_cpus(),
                        help="cores for the subject (default: all available, as `csttool run` uses)")
    args = parser.parse_args(argv)
    header, cache = machine_line(), warm_array_cache()
    results = {case: run_case(case, args.out / case, args.nprocs) for case in args.cases}
    ran = {c: r for c, r in results.items() if r}
    order = ["import", "denoise", "gibbs", "motion", "mask", "tensor", "registration", "tracking", "cst",
             "metrics", "outputs", "report"]
    lines = [f"# csttool-nipype per-subject benchmark (default options, one subject alone, --nprocs {args.nprocs}: "
             "MultiProc inside the subject, that many threads for multithreaded nodes)",
             f"# {header}", f"# {cache}", "",
             "| stage: node time (s) / node peak memory (MB) | "
             + " | ".join(f"{c} {r['shape']}" for c, r in ran.items()) + " |",
             "|---|" + "---|" * len(ran)]
    for stage in order:
        lines.append(f"| {stage} | " + " | ".join(
            f"{r['stages'].get(stage, 0.0):.1f} / {r['memory'].get(stage, float('nan')):.0f}" for r in ran.values()
        ) + " |")
    lines.append("| **sum of node times** | " + " | ".join(f"{sum(r['stages'].values()):.1f}" for r in ran.values()) + " |")
    lines.append("| **wall, end to end** | " + " | ".join(f"{r['wall']:.1f}" for r in ran.values()) + " |")
    lines.append("| time with a node running | " + " | ".join(f"{r['busy']:.1f}" for r in ran.values()) + " |")
    lines.append("| outside nodes (job start, imports, workflow construction, engine, promotion, cohort table and report) | " + " | ".join(
        f"{r['outside']:.1f}" for r in ran.values()) + " |")
    lines.append("| target (issue #7) | " + " | ".join(target_cell(c, r) for c, r in ran.items()) + " |")
    lines.append("| job peak RSS (MB) | " + " | ".join(f"{r['peak_rss_mb'] or float('nan'):.0f}" for r in ran.values()) + " |")
    lines.append("\nNode times overlap when independent nodes run at once (registration with tracking), so "
                 "their sum can exceed the wall time (\"time with a node running\" counts such overlap once); the wall time also holds process start, the Nipype "
                 "engine, promotion and the subject's HTML report. Node peak memory: the peak resident set of the process running the node while it ran "
                 "(the kernel's high-water mark, reset at the node's start; helper processes it forked included); job peak RSS: the largest resident set of one process of the subject job (the job process or one Nipype worker; with MultiProc two workers may peak together).")
    for case, r in ran.items():
        if case in TARGETS and r["wall"] > TARGETS[case][0]:
            top = sorted(((sec, st) for st, sec in r["stages"].items()), reverse=True)[:4]
            lines.append(f"\n{case}: {r['wall']:.0f} s against a target of {TARGETS[case][0]:.0f} s. Nodes ran for "
                         f"{r['busy']:.0f} s of it (largest: " + ", ".join(f"{st} {sec:.1f} s" for sec, st in top)
                         + f"), the report {r['stages'].get('report', 0.0):.1f} s, everything else "
                         f"{r['outside']:.1f} s. Why each stage costs what "
                         "it does: benchmarks/results/README.md.")
    for case, r in results.items():
        if r is None:
            lines.append(f"\n{case}: skipped (input not found)")
    publish("\n".join(lines), "subject.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
