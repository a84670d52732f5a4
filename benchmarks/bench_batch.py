"""Batch benchmark: cohort throughput with --nprocs 1 vs 2, per-stage times, planning time.

Usage::

    python benchmarks/bench_batch.py [--subjects 8] [--stages metrics] [--out /tmp/csttool-bench]
    python benchmarks/bench_batch.py --planning-only     # planning a 1000-subject tree, ~1 minute

Prints a table and saves it under ``benchmarks/results/batch.txt`` (``batch_planning.txt`` with
``--planning-only``) with a machine line.
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
    from csttool_nipype.bids import discover_bids
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
                        ("registration", ("register_mni", "cst_rois")), ("cst", ("track_cst", "extract_cst")),
                        ("tracking", ("track",)), ("metrics", ("cst_metrics",))):
        if any(name.startswith(k) for k in keys):
            return stage
    return "outputs"


def write_tree(n: int, root: Path) -> None:
    """A BIDS tree of ``n`` subjects, each with an empty DWI series and its bval, bvec and JSON."""
    shutil.rmtree(root, ignore_errors=True)
    for i in range(1, n + 1):
        d = root / f"sub-{i:04d}" / "dwi"
        d.mkdir(parents=True)
        for ext in (".nii.gz", ".bval", ".bvec"):
            (d / f"sub-{i:04d}_dwi{ext}").write_bytes(b"")
        (d / f"sub-{i:04d}_dwi.json").write_text("{}")
    (root / "dataset_description.json").write_text('{"Name": "planning benchmark", "BIDSVersion": "1.10.0"}')


def _median_time(step, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls (CPU time: this process's, which other
    load on the machine barely changes; on a quiet machine the wall time is close to it)."""
    times = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    middle = len(times) // 2
    return sorted(t[0] for t in times)[middle], sorted(t[1] for t in times)[middle]


def planning_rows(n: int, root: Path, repeats: int = 3) -> list[tuple[str, tuple[float, float]]]:
    """Wall and CPU seconds (medians of ``repeats``) to plan ``n`` subjects: discovery + jobs, as ``csttool batch``
    does, without and with ``--bids-database-dir``; and pybids' index alone with the settings
    discovery does not use (to show why)."""
    t0, c0 = time.perf_counter(), time.process_time()
    import bids  # noqa: F401 - imported once per process; timed apart

    from csttool_nipype.bids import _indexer, discover_bids
    from csttool_nipype.subject_job import make_jobs

    imported = time.perf_counter() - t0, time.process_time() - c0
    write_tree(n, root / "raw")
    database = root / "index"

    def plan(expected=n, **kwargs):
        jobs = make_jobs(discover_bids(root / "raw", **kwargs), {})
        assert len(jobs) == expected and not any(j.invalid for j in jobs)

    def first_index():
        shutil.rmtree(database, ignore_errors=True)
        plan(database_dir=database)

    def layout(validate: bool, index_metadata: bool):
        from bids import BIDSLayout, BIDSLayoutIndexer

        indexer = BIDSLayoutIndexer(validate=validate, index_metadata=index_metadata,
                                    ignore=_indexer(root / "raw").ignore)
        return lambda: BIDSLayout(root / "raw", validate=validate, indexer=indexer)

    return [
        ("importing pybids (once per process, not in the rows below)", imported),
        ("discovery + jobs, index in memory (default)", _median_time(plan, repeats)),
        ("discovery + jobs, --bids-database-dir: first run (index and save)", _median_time(first_index, repeats)),
        ("discovery + jobs, --bids-database-dir: reuse", _median_time(lambda: plan(database_dir=database), repeats)),
        ("discovery + jobs, --participant-label of one subject (indexes that subject)",
         _median_time(lambda: plan(1, participant_label=["0500"]), repeats)),
        ("pybids index only, as discovery sets it (validate=False, index_metadata=False)",
         _median_time(layout(False, False), repeats)),
        ("pybids index only, index_metadata=True (not used)", _median_time(layout(False, True), repeats)),
        ("pybids index only, validate=True (not used)", _median_time(layout(True, False), repeats)),
    ]


def planning_table(n: int, root: Path) -> tuple[list[str], float]:
    """Table lines and the default planning time (the target's number)."""
    rows = planning_rows(n, root)
    lines = [f"| planning a {n}-subject BIDS tree (median of 3) | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {label} | {wall:.2f} | {cpu:.2f} |" for label, (wall, cpu) in rows]
    return lines, rows[1][1][0]


def planning_only(args) -> int:
    from _machine import load_average

    lines = ["# csttool-nipype planning benchmark (1000-subject BIDS tree, 4 files per subject)",
             f"# {machine_line()}", ""]
    table, plan = planning_table(1000, args.out / "planning")
    lines += table
    lines += ["", f"load average at the end {load_average()}; target (issue #7, #16): planning ≤ 5 s: "
              f"{'met' if plan <= 5.0 else 'not met'}"]
    publish("\n".join(lines), "batch_planning.txt")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--stages", default="metrics")
    parser.add_argument("--out", type=Path, default=Path("/tmp/csttool-bench"))
    parser.add_argument("--planning-only", action="store_true", help="only time planning a 1000-subject tree")
    args = parser.parse_args(argv)
    if args.planning_only:
        return planning_only(args)

    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.writer import write_bids_dataset

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
    table, plan = planning_table(1000, args.out / "planning")
    lines += ["", *table]
    verdict = {True: "met", False: "not met"}
    lines += ["", "targets (issue #7): "
              f"nprocs 2 ≤ 0.6× nprocs 1: {verdict[walls[2] / walls[1] <= 0.6]}; "
              f"engine overhead ≤ 5 %: {verdict[overhead <= 0.05]}; planning ≤ 5 s: {verdict[plan <= 5.0]}"]
    publish("\n".join(lines), "batch.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
