"""The diffusion side of a batch: subjects → engine jobs, and the job function itself.

The batch engine (:mod:`csttool_nipype.batch`) only sees a key, a JSON payload and a
config hash; this module fills them from :class:`~csttool_nipype.batch.subjects.SubjectSpec`
and the pipeline options, and runs one subject's workflow inside the engine's child.
"""

from __future__ import annotations

import logging
import time

from .batch.jobs import Job
from .batch.subjects import SubjectSpec
from .config import STAGES, ExecutionConfig, PipelineConfig

LOGGER = logging.getLogger(__name__)
JOB_FUNCTION = "csttool_nipype.subject_job:run_subject_job"


def subject_config(global_options: dict, spec: SubjectSpec) -> PipelineConfig:
    """Defaults ← batch options ← the subject's own ``options``."""
    return PipelineConfig.from_dict({**global_options, **spec.options})


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


#: Pipeline stage (:data:`~csttool_nipype.config.STAGES`) of a Nipype node, by the node or
#: stage workflow its full name contains (first match); the derivatives workflow is "outputs",
#: the subject workflow's own input node (the source file's name) "import".
NODE_STAGES = (("dwi_import", "import"), ("dwi_preproc_wf", "preprocess"), ("tensor_wf", "tensor"),
               ("registration_wf", "register"), ("tracking_wf", "track"), ("cst_metrics", "metrics"),
               ("cst_wf", "cst"), ("derivatives_wf", "outputs"), ("inputnode", "import"))
STAGE_ORDER = (*STAGES, "outputs")


def stage_of_node(fullname: str) -> str:
    """``single_subject_01_wf.dwi_preproc_wf.denoise`` → ``preprocess`` (``""`` if none matches)."""
    parts = fullname.split(".")
    return next((stage for key, stage in NODE_STAGES if key in parts), "")


class StageTracker:
    """Nipype ``status_callback`` that turns running nodes into a stage line for ``sink``.

    The line names the stages of the nodes running now, in pipeline order, with the node
    when only one runs: ``preprocess (denoise)``, ``register, track``. Plain attributes
    only: Nipype may deep-copy or pickle plugin arguments.
    """

    def __init__(self, sink):
        self.sink = sink
        self.running: dict[str, str] = {}
        self.last = ""

    def __call__(self, node, status: str) -> None:
        name = getattr(node, "fullname", str(node))
        if status == "start":
            self.running[name] = stage_of_node(name)
        else:
            self.running.pop(name, None)
        if not self.running:
            return   # between two nodes: keep showing the last stage
        stages = sorted({s for s in self.running.values() if s}, key=STAGE_ORDER.index)
        line = ", ".join(stages)
        if len(self.running) == 1 and line:
            line += f" ({next(iter(self.running)).rsplit('.', 1)[-1]})"
        if line and line != self.last:
            self.last = line
            self.sink(line)


def progress_writer(path):
    """A ``sink`` for :class:`StageTracker` writing the engine's progress file (or nothing)."""
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
    """Run one subject's workflow, writing its derivatives into ``stage_dir``.

    ``plugin`` (default: Linear, or MultiProc when the job has several cores),
    ``plugin_args``, ``mem_gb`` and ``stop_on_first_crash`` go to
    :func:`~csttool_nipype.execution.run_workflow`; ``write_graph`` also draws the
    workflow into ``stage_dir/figures``; ``resource_monitor`` switches on Nipype's resource
    monitor (its samples replace the nodes' own peaks); ``progress_file`` gets the current
    stage (:class:`StageTracker`) for the batch's live display. Returns per-node durations (seconds)
    for the reports, per-node peak memory (GB) and the job's peak resident memory (MB).
    """
    from pathlib import Path

    from .execution import run_workflow, write_graphs
    from .peak_memory import PeakMemory, process_peak_mb
    from .run import check_inputs
    from .workflows.base import DWIInputs, init_subject_wf

    progress = progress_writer(progress_file)
    progress("starting")
    config = PipelineConfig.from_dict(payload["options"])
    inputs = DWIInputs(**dwi_inputs(payload["inputs"], work_dir))
    check_inputs(inputs)   # exists; the import node reads and validates the series, once
    if n_procs > 1:
        preload_modules()
    wf = init_subject_wf(payload["subject"], inputs, stage_dir, config, session=payload.get("session"),
                         container="", omp_nthreads=_job_threads(n_procs))
    if write_graph:
        write_graphs(wf, Path(stage_dir) / "figures")
    execution = ExecutionConfig(plugin=plugin or ("MultiProc" if n_procs > 1 else "Linear"), nprocs=n_procs,
                                mem_gb=mem_gb, plugin_args=dict(plugin_args or {}), nipype_log_level="INFO",
                                resource_monitor=resource_monitor)
    started = time.time()
    if execution.plugin == "SLURMGraph":   # no per-node callbacks: the graph is submitted at once
        progress("on SLURM (whole graph submitted)")
    graph = run_workflow(wf, work_dir, crash_dir, execution, stop_on_first_crash=stop_on_first_crash,
                         status_callback=StageTracker(progress))
    runtimes = node_runtimes(graph)   # each node's result file read once
    from .reports.methods import software_versions

    result = {"duration_s": time.time() - started, "node_durations_s": node_durations(runtimes),
              "node_busy_s": busy_time(node_intervals(runtimes)),
              # for the methods text of later rebuilds (csttool report, group level): options and versions
              "config": config.to_dict(), "software": software_versions()}
    peaks = node_peak_memory(runtimes)   # every stage interface records its own (see peak_memory)
    if peaks:
        result["node_peak_mem_gb"] = peaks
    from .reports import try_write_subject_report   # into stage_dir: promoted and checksummed with the rest

    key = payload["subject"] + (f"/{payload['session']}" if payload.get("session") else "")
    report_started = time.time()
    progress("report")
    with PeakMemory() as report_peak:
        try_write_subject_report(stage_dir, key=key, config=result["config"],
                                 node_durations=result["node_durations_s"],
                                 log_file=next(Path(crash_dir).parent.glob("*.log"), None))
    result["report_s"] = time.time() - report_started
    if report_peak.gb is not None:
        result["report_peak_mem_gb"] = report_peak.gb
        peaks = {**peaks, "report": report_peak.gb}
    # the stage interfaces reset the mark of the process running them: take the larger
    result["peak_rss_mb"] = round(max([process_peak_mb(), *(1024.0 * gb for gb in peaks.values())]), 1)
    return result


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


#: Heavy modules the stage interfaces import when they run (2-4 s of imports per process).
PRELOADED_MODULES = (
    "dipy.align.imaffine", "dipy.align.imwarp", "dipy.core.gradients", "dipy.reconst.dti",
    "dipy.segment.mask", "dipy.tracking.local_tracking", "dipy.tracking.streamline", "dipy.io.utils",
    "matplotlib.figure", "matplotlib.backends.backend_agg", "scipy.ndimage", "pandas",
)


def preload_modules() -> None:
    """Import the stage modules once, before Nipype's MultiProc forks its workers.

    The workers are forked from this process, so they inherit the imports instead of
    each paying them again. Nothing changes in what the nodes compute.
    """
    import importlib

    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional dependency: the node that needs it will say so
            continue


def _job_threads(n_procs: int) -> int:
    """Threads per node: the job's ``OMP_NUM_THREADS`` (set by the batch runner), else its cores."""
    import os

    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", n_procs)))
    except ValueError:
        return max(1, n_procs)


def node_runtimes(graph) -> dict:
    """``runtime`` of every executed (or cached) node of an executed Nipype graph, by full name.

    Each node's result file is read once here (Nipype's ``node.result`` reads it on every
    access); nodes without a stored result are left out.
    """
    out = {}
    for node in graph.nodes():
        try:
            out[node.fullname] = node.result.runtime
        except Exception:  # noqa: BLE001 - a node without a stored result has no runtime
            continue
    return out


def node_peak_memory(runtimes: dict) -> dict[str, float]:
    """Peak memory (GB) of every node whose runtime has one (see :class:`~csttool_nipype.interfaces.base.StageInterface`)."""
    out = {}
    for name, runtime in runtimes.items():
        value = getattr(runtime, "mem_peak_gb", None)
        if value is not None:
            out[name] = float(value)
    return out


def node_intervals(runtimes: dict) -> list[tuple[float, float]]:
    """(start, end) in POSIX seconds of every node with recorded times."""
    from datetime import datetime

    out = []
    for runtime in runtimes.values():
        try:
            out.append((datetime.fromisoformat(runtime.startTime).timestamp(),
                        datetime.fromisoformat(runtime.endTime).timestamp()))
        except (AttributeError, TypeError, ValueError):  # a cached node has no times
            continue
    return out


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Seconds during which at least one interval is open (the union's length).

    The part of a subject's wall time spent inside nodes; the rest is process start,
    the workflow's construction, Nipype's engine between nodes and the report.
    """
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def node_durations(runtimes: dict) -> dict[str, float]:
    """Wall time (s) of every node in ``runtimes`` (cached nodes: 0)."""
    return {name: float(getattr(runtime, "duration", 0.0) or 0.0) for name, runtime in runtimes.items()}
