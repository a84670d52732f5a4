"""Run one subject's workflow: what ``csttool run`` does, and what each job of a batch does.

:func:`run_subject` checks the inputs, builds the subject workflow, runs it, and writes the
subject report. ``csttool run`` calls it on a derivatives folder; the batch job
(:func:`csttool_nipype.subject_job.run_subject_job`) calls it on the engine's staging folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bids import write_dataset_description
from .config import ExecutionConfig, PipelineConfig
from .derivatives import prefixed
from .errors import InputError, check_writable_dir
from .execution import (WorkflowFailed, busy_time, node_durations, node_intervals, node_peak_memory, node_runtimes,
                        run_workflow, write_graphs)
from .workflows.base import DWIInputs, init_subject_wf
from .workflows.stages import STAGE_ORDER, stage_of_node

LOGGER = logging.getLogger(__name__)


@dataclass
class SubjectRun:
    """What :func:`run_subject` did.

    Attributes
    ----------
    folder : Path
        The subject's (session's) output folder, or the staging folder it was given.
    record : dict
        For the batch's ``_done.json``: ``duration_s`` (the workflow's wall time),
        ``node_durations_s``, ``node_busy_s`` (seconds with a node running), ``config``,
        ``software`` (versions, for the methods text), ``node_peak_mem_gb``, ``report_s``,
        ``report_peak_mem_gb`` and ``peak_rss_mb`` (the process's peak, MB).
    """

    folder: Path
    record: dict = field(default_factory=dict)


def check_inputs(inputs: DWIInputs) -> None:
    """Fail before any workflow is built when an input file or folder is missing.

    Existence, and for a NIfTI the size its header gives (a volume too small or too thin
    for the pipeline, :func:`~csttool_nipype.science.dwi_import.check_extent`). The workflow's
    import node reads and validates the series (truncated files, count mismatches, missing
    b0, unconvertible DICOM, the size of converted DICOM), once, and its failure carries the
    same one-line reason naming the file.
    """
    if inputs.nifti:
        for name in (inputs.nifti, inputs.bval, inputs.bvec, inputs.sidecar):
            if name and not Path(name).is_file():
                raise InputError(name, "does not exist")
        _check_header_extent(inputs.nifti)
        return
    path = Path(inputs.dicom)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        raise InputError(path, "folder is empty: no DICOM files to convert")


def _check_header_extent(nifti) -> None:
    """Voxel counts and field of view from the NIfTI header alone (no voxel data read)."""
    import nibabel as nib

    from .science.dwi_import import check_extent

    try:
        img = nib.load(str(nifti))
    except Exception:  # noqa: BLE001 - unreadable headers are the import node's one-line error
        return
    if len(img.shape) >= 3:
        check_extent(img.shape, img.affine, nifti)


def run_subject(subject: str, inputs: DWIInputs, output_dir, config: PipelineConfig | None = None,
                execution: ExecutionConfig | None = None, session: str | None = None, work_dir=None, *,
                crash_dir=None, staging: bool = False, on_stage=None, log_file=None,
                stop_on_first_crash: bool = True) -> SubjectRun:
    """Check inputs, build and run the subject workflow, write the subject report.

    Parameters
    ----------
    subject, session : str
        Labels, with or without ``sub-``/``ses-``.
    output_dir : path
        A derivatives folder: outputs go to ``output_dir/sub-X[/ses-Y]``, and
        ``dataset_description.json``/``.bidsignore`` are written when the run succeeds. With
        ``staging``, the batch engine's staging folder: outputs go straight into it (the
        engine promotes them), nothing else is written there.
    work_dir, crash_dir : path, optional
        Nipype's cache (default ``output_dir/_work/sub-X``) and crash files (default
        ``work_dir/crash``). Outside a batch, a work folder this run created is removed
        again when the input proves unusable.
    on_stage : callable, optional
        Told the stage running now (``preprocess (denoise)``), then ``report``.
    log_file : path, optional
        The subject's log, linked from the report.

    Raises
    ------
    InputError
        Unusable input (one-line message naming the file).
    OutputLocationError
        ``output_dir`` cannot be created or written (a usage error).
    WorkflowFailed
        A node failed; the message is the root cause, crash files are kept in ``crash_dir``.
    """
    from .peak_memory import PeakMemory, process_peak_mb
    from .reports import try_write_subject_report
    from .reports.methods import software_versions

    config = config or PipelineConfig()
    execution = execution or ExecutionConfig()
    output_dir = Path(output_dir).absolute()
    sub = prefixed(subject, "sub-")
    ses = prefixed(session, "ses-") if session else None
    check_inputs(inputs)   # exists; the import node reads and validates the series, once
    if not staging:
        check_writable_dir(output_dir)
    work_dir = Path(work_dir).absolute() if work_dir else output_dir / "_work" / sub
    crash_dir = Path(crash_dir).absolute() if crash_dir else work_dir / "crash"
    folder = output_dir if staging else output_dir / sub / ses if ses else output_dir / sub
    wf = init_subject_wf(sub, inputs, str(output_dir), config, session=session, container="" if staging else None,
                         omp_nthreads=max(1, execution.omp_nthreads))
    if execution.write_graph:
        write_graphs(wf, (output_dir if staging else output_dir / sub) / "figures")
    LOGGER.info("running %s (config %s) from %s", sub, config.config_hash(), inputs.source)
    if execution.plugin == "MultiProc":
        preload_modules()
    if on_stage and execution.plugin == "SLURMGraph":   # no per-node callbacks: the graph is submitted at once
        on_stage("on SLURM (whole graph submitted)")
    fresh = not work_dir.exists()
    started = time.time()
    try:
        graph = run_workflow(wf, work_dir, crash_dir, execution, stop_on_first_crash=stop_on_first_crash,
                             status_callback=StageTracker(on_stage) if on_stage else None)
    except WorkflowFailed as exc:
        if fresh and not staging and exc.category == "invalid input":
            _remove_work_dir(work_dir, output_dir)   # nothing was computed: leave no trace
        raise
    runtimes = node_runtimes(graph) if hasattr(graph, "nodes") else {}   # each node's result file read once
    record = {"duration_s": time.time() - started, "node_durations_s": node_durations(runtimes),
              "node_busy_s": busy_time(node_intervals(runtimes)),
              # for the methods text of later rebuilds (csttool report, group level): options and versions
              "config": config.to_dict(), "software": software_versions()}
    peaks = node_peak_memory(runtimes)   # every stage interface records its own (see peak_memory)
    if peaks:
        record["node_peak_mem_gb"] = peaks
    if not staging:
        write_dataset_description(output_dir)
    if on_stage:
        on_stage("report")
    report_started = time.time()
    with PeakMemory() as report_peak:
        try_write_subject_report(folder, key=f"{sub}/{ses}" if ses else sub, config=record["config"],
                                 node_durations=record["node_durations_s"], log_file=log_file)
    record["report_s"] = time.time() - report_started
    if report_peak.gb is not None:
        record["report_peak_mem_gb"] = report_peak.gb
        peaks = {**peaks, "report": report_peak.gb}
    # the stage interfaces reset the mark of the process running them: take the larger
    record["peak_rss_mb"] = round(max([process_peak_mb(), *(1024.0 * gb for gb in peaks.values())]), 1)
    return SubjectRun(folder, record)


def _remove_work_dir(work_dir: Path, output_dir: Path) -> None:
    """Delete a work folder this run created, and ``output_dir/_work`` if that is then empty."""
    import shutil

    shutil.rmtree(work_dir, ignore_errors=True)
    parent = work_dir.parent
    if parent != output_dir and parent.parent == output_dir:
        try:
            parent.rmdir()
        except OSError:   # other subjects' work folders are in it
            pass


# ---------------------------------------------------------------------------------- stages
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
