"""Run the subject workflow for one subject (what ``csttool run`` does)."""

from __future__ import annotations

import logging
from pathlib import Path

from .bids import write_dataset_description
from .config import ExecutionConfig, PipelineConfig
from .errors import InputError, check_writable_dir
from .execution import WorkflowFailed, run_workflow, write_graphs
from .workflows.base import DWIInputs, init_subject_wf

LOGGER = logging.getLogger(__name__)


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
                execution: ExecutionConfig | None = None, session: str | None = None, work_dir=None,
                on_stage=None) -> Path:
    """Check inputs, build and run the subject workflow; return ``output_dir/sub-XX``.

    ``on_stage(text)``, if given, is told the stage running now (``preprocess (denoise)``).

    Raises
    ------
    InputError
        Unusable input (one-line message naming the file).
    OutputLocationError
        ``output_dir`` cannot be created or written (a usage error).
    WorkflowFailed
        A node failed; the message is the root cause, crash files are kept in
        ``work_dir/crash``.
    """
    config = config or PipelineConfig()
    execution = execution or ExecutionConfig()
    output_dir = Path(output_dir).absolute()
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    check_inputs(inputs)
    check_writable_dir(output_dir)
    work_dir = Path(work_dir).absolute() if work_dir else output_dir / "_work" / sub
    wf = init_subject_wf(sub, inputs, str(output_dir), config, session=session,
                         omp_nthreads=max(1, execution.omp_nthreads))
    if execution.write_graph:
        write_graphs(wf, output_dir / sub / "figures")
    LOGGER.info("running %s (config %s) from %s", sub, config.config_hash(), inputs.source)
    if execution.plugin == "MultiProc":
        from .subject_job import preload_modules

        preload_modules()
    from .subject_job import StageTracker

    fresh = not work_dir.exists()
    try:
        graph = run_workflow(wf, work_dir, work_dir / "crash", execution,
                             status_callback=StageTracker(on_stage) if on_stage else None)
    except WorkflowFailed as exc:
        if fresh and exc.category == "invalid input":
            _remove_work_dir(work_dir, output_dir)   # nothing was computed: leave no trace
        raise
    write_dataset_description(output_dir)
    if on_stage:
        on_stage("report")
    from .reports import try_write_subject_report
    from .subject_job import node_durations, node_runtimes

    ses = session if not session or session.startswith("ses-") else f"ses-{session}"
    try_write_subject_report(output_dir / sub / ses if ses else output_dir / sub, config=config.to_dict(),
                             node_durations=node_durations(node_runtimes(graph)) if hasattr(graph, "nodes") else None)
    return output_dir / sub


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
