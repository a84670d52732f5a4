"""Batch benchmark: cohort throughput with --nprocs 1 vs 2, per-stage times, planning time.

Usage::

    python benchmarks/bench_batch.py [--subjects 8] [--stages metrics] [--out /tmp/csttool-bench]

Prints a table and saves it under ``benchmarks/results/batch.txt`` with a machine line.
Times are wall-clock on this machine; compare the ratios within one run, not across
machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from _machine import machine_line, publish, warm_array_cache  # noqa: E402 (benchmarks/ on sys.path)


def run_batch(raw: Path, out: Path, nprocs: int, stages: str) -> tuple[float, dict]:
    from csttool_nipype.batch.console import BatchConsole
    from csttool_nipype.batch.subjects import discover_bids
    from csttool_nipype.cohort import CohortOptions, run_cohort

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        run_cohort(discover_bids(raw), {"stages": [stages]}, out, CohortOptions(nprocs=nprocs), BatchConsole(sink))
    wall = time.perf_counter() - t0
    dones = {p.parent.name: json.loads(p.read_text()) for p in out.glob("sub-*/_done.json")}
    return wall, dones


def stage_of(node: str) -> str:
    name = node.split(".")[-1]
    for stage, keys in (("import", ("dwi_import",)), ("denoise", ("denoise",)), ("gibbs", ("gibbs",)),
                        ("motion", ("motion",)), ("mask", ("brain_mask", "processing_region")), ("tensor", ("fit_tensor",)),
                        ("registration", ("register_mni", "cst_rois")), ("tracking", ("track",)),
                        ("cst", ("extract_cst",)), ("metrics", ("cst_metrics",))):
        if any(name.startswith(k) for k in keys):
            return stage
    return "outputs"


def planning_time(n: int, root: Path) -> float:
    from csttool_nipype.batch.subjects import discover_bids
    from csttool_nipype.subject_job import make_jobs

    shutil.rmtree(root, ignore_errors=True)
    for i in range(1, n + 1):
        d = root / f"sub-{i:04d}" / "dwi"
        d.mkdir(parents=True)
        for ext in (".nii.gz", ".bval", ".bvec", ".json"):
            (d / f"sub-{i:04d}_dwi{ext}").write_bytes(b"")
    t0 = time.perf_counter()
    make_jobs(discover_bids(root), {})
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--stages", default="metrics")
    parser.add_argument("--out", type=Path, default=Path("/tmp/csttool-bench"))
    args = parser.parse_args(argv)

    from csttool_nipype.science.phantom import PhantomSpec, write_bids_dataset

    raw = args.out / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    write_bids_dataset(raw, args.subjects, spec=PhantomSpec(voxel_size=3.0, snr=30.0, rotation_deg=10,
                                                            translation_mm=5, motion_deg=1.0), seed=0)
    lines = [f"# csttool-nipype batch benchmark ({args.subjects} phantom subjects, 3 mm, 31 volumes, "
             f"stages up to {args.stages})", f"# {machine_line()}", f"# {warm_array_cache()}", ""]
    walls, per_stage, peaks = {}, defaultdict(list), []
    for nprocs in (1, 2):
        wall, dones = run_batch(raw, args.out / f"out{nprocs}", nprocs, args.stages)
        walls[nprocs] = wall
        if nprocs == 1:
            for done in dones.values():
                totals = defaultdict(float)
                for node, secs in done["result"].get("node_durations_s", {}).items():
                    totals[stage_of(node)] += secs
                totals["report"] += done["result"].get("report_s", 0.0)
                for stage, secs in totals.items():
                    per_stage[stage].append(secs)
                peaks.append(done["result"].get("peak_rss_mb") or float("nan"))
    subject_total = sum(sum(v) / len(v) for v in per_stage.values())
    lines.append("| stage | mean s per subject (nprocs 1) | share |")
    lines.append("|---|---|---|")
    for stage, values in sorted(per_stage.items(), key=lambda kv: -sum(kv[1])):
        mean = sum(values) / len(values)
        lines.append(f"| {stage} | {mean:.1f} | {100 * mean / subject_total:.0f}% |")
    lines.append(f"| **sum of nodes + report** | {subject_total:.1f} | |")
    lines.append(f"| peak RSS per subject (max) | {max(peaks):.0f} MB | |")
    lines.append("")
    lines.append("| batch | wall s | ratio to nprocs 1 | engine overhead |")
    lines.append("|---|---|---|---|")
    node_sum = subject_total * args.subjects
    overhead = (walls[1] - node_sum) / walls[1]   # measured with nprocs 1 (no overlap between subjects)
    for nprocs, wall in walls.items():
        lines.append(f"| nprocs {nprocs} | {wall:.1f} | {wall / walls[1]:.2f} | "
                     f"{'' if nprocs != 1 else f'{100 * overhead:.1f}% (wall − Σ node and report time)'} |")
    plan = planning_time(1000, args.out / "bids1000")
    lines += ["", f"planning a 1000-subject BIDS tree (discovery + jobs): {plan:.2f} s"]
    verdict = {True: "met", False: "not met"}
    lines += ["", "targets (issue #7): "
              f"nprocs 2 ≤ 0.6× nprocs 1: {verdict[walls[2] / walls[1] <= 0.6]}; "
              f"engine overhead ≤ 5 %: {verdict[overhead <= 0.05]}; planning ≤ 5 s: {verdict[plan <= 5.0]}"]
    publish("\n".join(lines), "batch.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
