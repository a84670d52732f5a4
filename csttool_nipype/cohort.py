"""Run a cohort: subjects → jobs → engine → tables and reports (what ``csttool batch`` does)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .batch.console import BatchConsole
from .batch.runner import FAILED, TIMEOUT, BatchOptions, BatchRunner, Outcome
from .batch.state import dataset_lock, write_json_atomic
from .batch.subjects import SubjectSpec
from .config import DEFAULT_TIMEOUT_MINUTES, PipelineConfig
from .reports import build_cohort_reports
from .subject_job import JOB_FUNCTION, make_jobs

LOGGER = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class CohortOptions:
    nprocs: int = 1
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES   # inf: no limit
    force: bool = False
    strict: bool = False
    dry_run: bool = False
    keep_work: bool = False
    execution: dict = field(default_factory=dict)   # keyword arguments of the job function (plugin, ...)
    work_root: str | None = None                    # Nipype caches in work_root/<key> instead of OUT/<key>/_work
    threads_per_job: int | None = None


def plan_lines(specs: list[SubjectSpec], jobs) -> list[str]:
    lines = []
    for i, (spec, job) in enumerate(zip(specs, jobs), start=1):
        if job.invalid:
            lines.append(f"{i}. {spec.key}: INVALID - {job.invalid}")
        else:
            source = spec.inputs.get("nifti") or spec.inputs.get("dicom")
            lines.append(f"{i}. {spec.key}: {source} (config {job.config_hash})")
    return lines


def run_cohort(specs: list[SubjectSpec], global_options: dict, out_dir, options: CohortOptions,
               console: BatchConsole | None = None) -> int:
    """Validate, plan and run a cohort; write ``batch_status.json``, the tables and ``batch_report.html``.

    Returns the exit code: 0 when every subject succeeded or was skipped, 1 when some
    failed, 2 when nothing could run (``--strict`` with invalid entries).
    """
    console = console or BatchConsole()
    out_dir = Path(out_dir).absolute()
    batch_hash = PipelineConfig.from_dict(global_options).config_hash()
    jobs = make_jobs(specs, global_options)
    invalid = [j for j in jobs if j.invalid]
    console.header(len(jobs), out_dir, batch_hash, len(invalid))
    if options.dry_run:
        console.line("\n".join(["plan (dry run, nothing is processed):", *plan_lines(specs, jobs)]))
        return EXIT_FAILED if invalid else EXIT_OK
    if invalid and options.strict:
        for job in invalid:
            console.line(f"invalid: {job.invalid}")
        console.line("--strict: nothing was run")
        return EXIT_USAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runner = BatchRunner(jobs, out_dir, BatchOptions(
        function=JOB_FUNCTION, nprocs=options.nprocs, timeout_s=options.timeout_minutes * 60.0,
        force=options.force, keep_work=options.keep_work, context=dict(options.execution),
        work_root=options.work_root, threads_per_job=options.threads_per_job,
    ), on_finish=console.finished)
    outcomes: list[Outcome] = runner.run()
    with dataset_lock(out_dir):   # other batches may write into the same OUT at the same time
        return _bookkeeping(out_dir, outcomes, batch_hash, started, console)


def _bookkeeping(out_dir: Path, outcomes: list[Outcome], batch_hash: str, started: float, console) -> int:
    write_json_atomic(out_dir / "batch_status.json", {
        "version": __version__, "config_hash": batch_hash, "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(started)), "duration_s": round(time.time() - started, 3),
        "order": [o.key for o in outcomes],
        "outcomes": {o.key: {"status": o.status, "category": o.category, "reason": o.reason,
                             "duration_s": round(o.duration_s, 3)} for o in outcomes},
    })
    reports = build_cohort_reports(out_dir)
    console.summary(outcomes, metrics_csv=reports["metrics"], report=reports.get("report"))
    return EXIT_FAILED if any(o.status in (FAILED, TIMEOUT) for o in outcomes) else EXIT_OK
