"""The diffusion side of a batch: subjects → engine jobs, and the job function itself.

The batch engine (:mod:`csttool_nipype.batch`) only sees a key, a JSON payload and a
config hash; this module fills them from :class:`~csttool_nipype.subjects.SubjectSpec`
and the pipeline options, and runs one subject inside the engine's child with
:func:`csttool_nipype.run.run_subject` (what ``csttool run`` runs too).
"""

from __future__ import annotations

import logging

from .batch.jobs import Job
from .config import ExecutionConfig, PipelineConfig
from .subjects import SubjectSpec

LOGGER = logging.getLogger(__name__)
JOB_FUNCTION = "csttool_nipype.subject_job:run_subject_job"


def subject_config(global_options: dict, spec: SubjectSpec) -> PipelineConfig:
    """Defaults ← batch options ← the subject's own ``options``."""
    return PipelineConfig.from_dict({**global_options, **spec.options})


def check_options(global_options: dict, specs: list[SubjectSpec], where) -> None:
    """Raise :class:`~csttool_nipype.errors.InputError` (a usage error) for the first bad option value.

    The batch's options, then each valid subject's own on top of them; ``where`` (the manifest,
    or "command line") leads the message. Found before anything runs or is written.
    """
    from .errors import InputError

    try:
        PipelineConfig.from_dict(global_options)
    except (TypeError, ValueError) as exc:
        raise InputError(where, f"options: {exc}") from None
    for spec in specs:
        if not spec.error:
            try:
                subject_config(global_options, spec)
            except (TypeError, ValueError) as exc:
                raise InputError(where, f"{spec.key}: options: {exc}") from None


def make_jobs(specs: list[SubjectSpec], global_options: dict) -> list[Job]:
    """One engine job per subject; bad options make the job invalid (reported, not run)."""
    jobs = []
    for spec in specs:
        if spec.error:
            jobs.append(Job(spec.key, {}, "", invalid=spec.error))
            continue
        try:
            config = subject_config(global_options, spec)
        except (TypeError, ValueError) as exc:
            jobs.append(Job(spec.key, {}, "", invalid=f"{spec.key}: options: {exc}"))
            continue
        payload = {"subject": spec.subject, "session": spec.session, "inputs": spec.inputs,
                   "options": config.to_dict()}
        jobs.append(Job(spec.key, payload, config.config_hash()))
    return jobs


def progress_writer(path):
    """A ``sink`` for :class:`~csttool_nipype.run.StageTracker` writing the engine's progress file (or nothing)."""
    from .batch.state import write_progress

    def write(text: str) -> None:
        try:
            write_progress(path, text)
        except OSError:   # the display is a nicety: never fail a subject for it
            pass

    return write if path else (lambda text: None)


def run_subject_job(payload: dict, work_dir: str, stage_dir: str, crash_dir: str, n_procs: int = 1,
                    plugin: str | None = None, plugin_args: dict | None = None, mem_gb: float | None = None,
                    stop_on_first_crash: bool = True, write_graph: bool = False, resource_monitor: bool = False,
                    progress_file: str | None = None, **_) -> dict:
    """The batch engine's job: :func:`~csttool_nipype.run.run_subject` into ``stage_dir``.

    ``n_procs`` are the job's CPUs; ``plugin`` (default: Linear, or MultiProc when the job has
    several), ``plugin_args``, ``mem_gb`` and ``stop_on_first_crash`` go to
    :func:`~csttool_nipype.execution.run_workflow`; ``write_graph`` also draws the workflow
    into ``stage_dir/figures``; ``resource_monitor`` switches on Nipype's resource monitor (its
    samples replace the nodes' own peaks); ``progress_file`` gets the current stage for the
    batch's live display. Returns the run's record (:class:`~csttool_nipype.run.SubjectRun`):
    per-node durations (seconds) for the reports, per-node peak memory (GB), the job's peak
    resident memory (MB), its options and software versions.
    """
    from pathlib import Path

    from .run import run_subject
    from .workflows.base import DWIInputs

    progress = progress_writer(progress_file)
    progress("starting")
    inputs = DWIInputs(**dwi_inputs(payload["inputs"], work_dir))
    execution = ExecutionConfig(plugin=plugin or ("MultiProc" if n_procs > 1 else "Linear"), nprocs=n_procs,
                                omp_nthreads=_job_threads(n_procs), mem_gb=mem_gb,
                                plugin_args=dict(plugin_args or {}), write_graph=write_graph,
                                nipype_log_level="INFO", resource_monitor=resource_monitor)
    run = run_subject(payload["subject"], inputs, stage_dir, PipelineConfig.from_dict(payload["options"]), execution,
                      session=payload.get("session"), work_dir=work_dir, crash_dir=crash_dir, staging=True,
                      on_stage=progress, log_file=next(Path(crash_dir).parent.glob("*.log"), None),
                      stop_on_first_crash=stop_on_first_crash)
    return run.record


def dwi_inputs(inputs: dict, work_dir) -> dict:
    """:class:`~csttool_nipype.workflows.base.DWIInputs` fields from a subject's ``inputs``.

    The manifest's and BIDS discovery's ``json`` is the import's ``sidecar``; a list of
    JSON sidecars (BIDS inheritance, dataset root first) is merged into
    ``work_dir/inputs/sidecar.json`` (see :func:`csttool_nipype.bids.merged_sidecar`).
    """
    fields = {k: v for k, v in inputs.items() if k != "json"}
    sidecar = inputs.get("json")
    if isinstance(sidecar, list):
        from pathlib import Path

        from .bids import merged_sidecar

        sidecar = merged_sidecar(sidecar, Path(work_dir) / "inputs" / "sidecar.json")
    if sidecar is not None:
        fields["sidecar"] = sidecar
    return fields


def _job_threads(n_procs: int) -> int:
    """Threads per node: the job's ``OMP_NUM_THREADS`` (set by the batch runner), else its cores."""
    import os

    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", n_procs)))
    except ValueError:
        return max(1, n_procs)
