"""Run a cohort: subjects → jobs → engine → tables and reports (what ``csttool batch`` does)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .batch.console import BatchConsole, log_to_file
from .batch.runner import FAILED, INTERRUPTED, INVALID, SKIPPED, TIMEOUT, BatchOptions, BatchRunner, Outcome
from .batch.state import dataset_lock, write_json_atomic
from .config import DEFAULT_TIMEOUT_MINUTES, SUBJECT_MEMORY_GB, PipelineConfig, available_memory_gb
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, check_writable_dir
from .reports import build_cohort_reports
from .subject_job import JOB_FUNCTION, make_jobs
from .subjects import SubjectSpec

LOGGER = logging.getLogger(__name__)

STATUS_FILE = "batch_status.json"
#: The orchestrator's own log lines during a run (the subjects' are in OUT/<key>/logs/).
BATCH_LOG = "batch_run.log"


@dataclass(frozen=True)
class CohortOptions:
    nprocs: int = 1                                 # CPUs for the whole cohort
    subjects_at_once: int | None = None             # default: cpu_plan's
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES   # inf: no limit
    force: bool = False
    strict: bool = False
    dry_run: bool = False
    keep_work: bool = False
    execution: dict = field(default_factory=dict)   # keyword arguments of the job function (plugin, ...)
    work_root: str | None = None                    # Nipype caches in work_root/<key> instead of OUT/<key>/_work
    threads_per_job: int | None = None
    verify: bool = False                            # full SHA-256 check of done subjects before skipping


def cpu_plan(nprocs: int, subjects_at_once: int | None, n_subjects: int,
             memory_gb: float | None = None) -> tuple[int, int]:
    """(subjects at once, CPUs per subject) for ``nprocs`` CPUs and ``n_subjects`` subjects to run.

    By default as many subjects run at once as there are CPUs (at most one per subject), each
    on one CPU: a subject's workflow is mostly a chain of nodes, so whole subjects side by side
    keep the CPUs busier than one subject's MultiProc (on two cores, two subjects at once took
    0.51x the time of one after the other: ``benchmarks/results/batch.txt``). CPUs left over
    when there are fewer subjects than CPUs go to each subject's MultiProc and threads. The
    default also keeps :data:`~csttool_nipype.config.SUBJECT_MEMORY_GB` per subject within
    ``memory_gb`` (default: this machine's memory, :func:`~csttool_nipype.config.available_memory_gb`);
    ``subjects_at_once`` overrides it, and each subject then gets ``nprocs // subjects_at_once``.
    """
    if subjects_at_once:
        at_once = subjects_at_once
    else:
        memory_gb = available_memory_gb() if memory_gb is None else memory_gb
        at_once = max(1, min(nprocs, n_subjects, int(memory_gb // SUBJECT_MEMORY_GB)))
    return at_once, max(1, nprocs // at_once)


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
    console.header(len(jobs), out_dir, batch_hash)
    if options.dry_run:
        console.line("\n".join(["plan (dry run, nothing is processed):", *plan_lines(specs, jobs)]))
        return EXIT_FAILED if invalid else EXIT_OK
    if invalid and options.strict:
        for job in invalid:
            console.line(f"invalid: {job.invalid}")
        console.line("--strict: nothing was run")
        return EXIT_USAGE
    check_writable_dir(out_dir)
    started = time.time()
    at_once, cpus = cpu_plan(options.nprocs, options.subjects_at_once, len(jobs) - len(invalid))
    runner = BatchRunner(jobs, out_dir, BatchOptions(
        function=JOB_FUNCTION, nprocs=at_once, timeout_s=options.timeout_minutes * 60.0,
        force=options.force, keep_work=options.keep_work, context={"n_procs": cpus, **options.execution},
        work_root=options.work_root, threads_per_job=options.threads_per_job, verify=options.verify,
    ), on_finish=console.finished, on_progress=console.progress)
    with log_to_file(out_dir / BATCH_LOG):   # log lines go there, not between the console's lines
        LOGGER.info("%d CPU(s): %d subject(s) at once, %d CPU(s) each", options.nprocs, at_once, cpus)
        console.start()
        try:
            with _sigterm_as_interrupt():
                outcomes: list[Outcome] = runner.run()
            try:
                with dataset_lock(out_dir):   # other batches may write into the same OUT at the same time
                    code = _bookkeeping(out_dir, outcomes, batch_hash, started, console, runner.interrupted)
            except OSError as exc:   # a full or read-only OUT: the subjects' own records are what is left
                LOGGER.error("%s: could not write the batch tables: %s", out_dir, exc)
                console.summary(outcomes, report_missing=f" (could not write the batch tables: {exc})")
                code = EXIT_FAILED
        finally:
            console.stop()
    # lines the walkthrough does not have: below its block
    if runner.interrupted:
        console.line("interrupted: running subjects were stopped and marked INTERRUPTED")
    if invalid:
        console.line(f"Invalid entries: {len(invalid)} (not run; listed above as Failed (INVALID INPUT))")
    return EXIT_INTERRUPTED if runner.interrupted else code


class _sigterm_as_interrupt:
    """While the batch runs, SIGTERM (as ``kill`` or a scheduler sends) stops it like Ctrl-C."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def merged_status(previous: dict | None, outcomes: list[Outcome]) -> dict:
    """This batch's outcomes merged into an earlier ``batch_status.json`` (``outcomes`` and ``order``).

    Several batches may write into one OUT at once: a subject this batch SKIPPED
    (another batch did it) or never started keeps the earlier record. Entries rejected
    before running (``invalid``) describe this batch's subject list only.
    """
    previous = previous or {}
    merged = dict(previous.get("outcomes") or {})
    invalid = []
    for o in outcomes:
        record = {"status": o.status, "category": o.category, "reason": o.reason,
                  "duration_s": round(o.duration_s, 3), "index": o.index}
        earlier = merged.get(o.key)
        keep = earlier and earlier.get("status") not in (SKIPPED, None) and (
            o.status == SKIPPED or (o.status == INTERRUPTED and o.reason.startswith("not started")))
        if not keep:
            merged[o.key] = record
        if o.category == INVALID and o.status == FAILED and not o.log:   # rejected before it ran: no folder
            invalid.append(o.key)
    for key in previous.get("invalid") or []:
        if key not in invalid and key not in {o.key for o in outcomes}:
            merged.pop(key, None)
    order = [o.key for o in outcomes]
    order += [k for k in previous.get("order") or [] if k not in order and k in merged]
    return {"order": order, "outcomes": merged, "invalid": invalid}


def _bookkeeping(out_dir: Path, outcomes: list[Outcome], batch_hash: str, started: float, console,
                 interrupted: bool = False) -> int:
    status_path = out_dir / STATUS_FILE
    try:
        previous = json.loads(status_path.read_text())
    except (OSError, ValueError):
        previous = None
    write_json_atomic(status_path, {
        "version": __version__, "config_hash": batch_hash, "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(started)), "duration_s": round(time.time() - started, 3),
        "interrupted": interrupted, **merged_status(previous, outcomes),
    })
    reports = build_cohort_reports(out_dir)
    console.summary(outcomes, metrics_csv=reports["metrics"], report=reports.get("report"),
                    report_missing=f" (see {out_dir / BATCH_LOG})")
    return EXIT_FAILED if any(o.status in (FAILED, TIMEOUT, INTERRUPTED) for o in outcomes) else EXIT_OK
