"""Derivatives workflow: outputs named as :mod:`csttool_nipype.derivatives` says, copied out by a DataSink."""

from __future__ import annotations

from nipype.interfaces.io import DataSink
from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..derivatives import OUTPUTS, WORKFLOW_OUTPUTS, prefixed
from ..interfaces.derivatives import DerivativeNames

#: Outputs named together in one node, by the stage that makes them (one node per file
#: would cost Nipype's scheduling time ~25 times). Every file (not folder) the workflow
#: writes (:data:`~csttool_nipype.derivatives.WORKFLOW_OUTPUTS`) is in exactly one group.
GROUPS = {
    "import": ("import_dwi", "import_bval", "import_bvec"),
    "preproc": ("dwi", "bval", "bvec", "mask", "b0"),
    "tensor": ("fa", "md", "rd", "ad", "colorfa", "v1", "evals", "tensor_qc"),
    "registration": ("registration_qc", "template_wm", "roi_labels", "coverage"),
    "tracking": ("tractogram",),
    "cst": ("cst_left", "cst_right", "cst_left_density", "cst_right_density"),
    "metrics": ("profiles", "summary"),
}
#: Groups named in a worker process like any node (their compression takes a while). The
#: others are named in the scheduler's own process (no process hand-off), where a long
#: step would stall the scheduling of the next stages.
SUBMITTED = frozenset({"tensor"})
#: Outputs published as ``.nii.gz`` without compression (gzip level 0, a valid stream):
#: the preprocessed series is float32 noise to gzip - level 1 shrank the Philips one by
#: only 13 % and takes seconds at clinical sizes, on the way to the next stages.
STORED = frozenset({"dwi", "import_dwi"})


def init_derivatives_wf(output_dir: str, subject: str, session: str | None = None, fields=None,
                        container: str | None = None, name: str = "derivatives_wf"):
    """Name every output BIDS-style and copy it into ``output_dir/sub-X[/ses-Y]/``.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    subject, session : str
        Labels, with or without the ``sub-``/``ses-`` prefix.
    fields : list of str, optional
        Keys of :data:`~csttool_nipype.derivatives.OUTPUTS` to write (default: every
        output of the workflow).
    container : str, optional
        Folder under ``output_dir`` (default ``sub-X[/ses-Y]``; ``""`` writes the
        subject's ``dwi/`` and ``figures/`` straight into ``output_dir``, as the batch
        engine's staging area wants).

    Inputs
    ------
    One field per key of ``fields``, plus ``source_file`` (recorded in
    sidecars), ``preproc_record`` (a JSON file merged into the preprocessed DWI's sidecar) and
    ``metrics_record`` (merged into the summary and profile sidecars: the covered extent and the profile definition).
    """
    fields = list(fields or WORKFLOW_OUTPUTS)
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=[*fields, "source_file", "preproc_record", "metrics_record"]),
                        name="inputnode")
    sub = prefixed(subject, "sub-")
    if container is None:
        container = sub if not session else f"{sub}/{prefixed(session, 'ses-')}"
    sink = pe.Node(DataSink(base_directory=str(output_dir), parameterization=False),
                   name="datasink", run_without_submitting=True)
    if container:
        sink.inputs.container = container
    for field in fields:
        if OUTPUTS[field].is_folder:   # copied as it is
            wf.connect(inputnode, field, sink, f"{OUTPUTS[field].folder}.@{field}")
    for group, members in GROUPS.items():
        chosen = [f for f in members if f in fields]
        if not chosen:
            continue
        names = pe.Node(DerivativeNames(fields=chosen, subject=sub, uncompressed=sorted(STORED.intersection(chosen))),
                        name=f"name_{group}", run_without_submitting=group not in SUBMITTED)
        if session:
            names.inputs.session = session
        wf.connect(inputnode, ("source_file", _as_list), names, "source_files")
        if "dwi" in chosen:
            names.inputs.sidecar_field = "dwi"
            wf.connect(inputnode, "preproc_record", names, "sidecar_file")
        elif "summary" in chosen:
            names.inputs.sidecar_field = [f for f in ("summary", "profiles") if f in chosen]
            wf.connect(inputnode, "metrics_record", names, "sidecar_file")
        wf.connect([(inputnode, names, [(f, f) for f in chosen])])
        for folder in sorted({OUTPUTS[f].folder for f in chosen}):
            wf.connect(names, folder, sink, f"{folder}.@{group}")
    return wf


def _as_list(value):
    return [value] if isinstance(value, str) else list(value)
