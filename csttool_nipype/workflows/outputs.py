"""Derivatives workflow: BIDS-derivative names and sidecars, copied out by a DataSink."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.io import DataSink
from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import DerivativeNames

#: field -> (folder, entities, suffix, sidecar) of every file the subject workflow writes.
#: Units follow BIDS: diffusivities in mm^2/s.
DERIVATIVES = {
    # written only when the run stops after the import (``--stages import``)
    "import_dwi": ("dwi", [("space", "dwi"), ("desc", "import")], "dwi",
                   {"Description": "Imported diffusion-weighted series: validated, derived volumes dropped, "
                                   "RAS+ voxel order, not resampled or preprocessed"}),
    "import_bval": ("dwi", [("space", "dwi"), ("desc", "import")], "dwi", {}),
    "import_bvec": ("dwi", [("space", "dwi"), ("desc", "import")], "dwi", {}),
    "dwi": ("dwi", [("space", "dwi"), ("desc", "preproc")], "dwi",
            {"Description": "Preprocessed diffusion-weighted series, RAS+ voxel order"}),
    "bval": ("dwi", [("space", "dwi"), ("desc", "preproc")], "dwi", {}),
    "bvec": ("dwi", [("space", "dwi"), ("desc", "preproc")], "dwi", {}),
    "mask": ("dwi", [("space", "dwi"), ("desc", "brain")], "mask",
             {"Description": "Brain mask (median Otsu on the mean b=0)", "Type": "Brain"}),
    "b0": ("dwi", [("space", "dwi"), ("desc", "mean")], "dwiref",
           {"Description": "Mean of the preprocessed b=0 volumes"}),
    "fa": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "fa")], "dwimap",
           {"Description": "Fractional anisotropy of the diffusion tensor", "Units": "arbitrary"}),
    "md": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "md")], "dwimap",
           {"Description": "Mean diffusivity of the diffusion tensor", "Units": "mm^2/s"}),
    "rd": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "rd")], "dwimap",
           {"Description": "Radial diffusivity (mean of the two smaller eigenvalues)", "Units": "mm^2/s"}),
    "ad": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "ad")], "dwimap",
           {"Description": "Axial diffusivity (largest eigenvalue)", "Units": "mm^2/s"}),
    "colorfa": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "colorfa")], "dwimap",
                {"Description": "Colour FA: RGB = FA x |principal eigenvector| along world R-L, A-P, S-I"}),
    "v1": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "v1")], "dwimap",
           {"Description": "Principal eigenvector in the image's voxel axes (i, j, k)"}),
    "evals": ("dwi", [("space", "dwi"), ("model", "tensor"), ("param", "evals")], "dwimap",
              {"Description": "Tensor eigenvalues, largest first", "Units": "mm^2/s"}),
    "tensor_qc": ("figures", [("desc", "tensor")], "qc", {}),
    # registration and ROIs
    "registration": ("xfm", None, None, None),   # a folder of transforms, copied as it is
    "registration_qc": ("figures", [("desc", "registration")], "qc", {}),
    "template_wm": ("dwi", [("space", "dwi"), ("label", "WM"), ("desc", "template")], "probseg",
                    {"Description": "MNI152 2009 white-matter probability warped to the subject"}),
    "roi_labels": ("dwi", [("space", "dwi"), ("desc", "cstrois")], "dseg",
                   {"Description": "Atlas ROIs in subject space: 1 brainstem, 2/3 precentral L/R, "
                                   "4/5 internal capsule L/R, 6/7 cerebral peduncle L/R, 8 midline"}),
    "coverage": ("dwi", [("desc", "roicoverage")], "qc", {}),
    # tractography and CST
    "tractogram": ("dwi", [("space", "dwi"), ("desc", "wholebrain")], "streamlines",
                   {"Description": "Whole-brain tractogram (TrackVis .trk, RAS+ mm)"}),
    "cst_left": ("dwi", [("space", "dwi"), ("bundle", "CSTleft")], "streamlines",
                 {"Description": "Left corticospinal tract streamlines (RAS+ mm, oriented inferior to superior)"}),
    "cst_right": ("dwi", [("space", "dwi"), ("bundle", "CSTright")], "streamlines",
                  {"Description": "Right corticospinal tract streamlines (RAS+ mm, oriented inferior to superior)"}),
    "cst_left_density": ("dwi", [("space", "dwi"), ("bundle", "CSTleft"), ("param", "density")], "dwimap",
                         {"Description": "Streamlines of the left CST per voxel"}),
    "cst_right_density": ("dwi", [("space", "dwi"), ("bundle", "CSTright"), ("param", "density")], "dwimap",
                          {"Description": "Streamlines of the right CST per voxel"}),
    "profiles": ("dwi", [("space", "dwi"), ("bundle", "CST")], "tractprofile",
                 {"Description": "Along-tract profiles of the CSTs: one row per subject, session, side, node, metric"}),
    "summary": ("dwi", [("desc", "summary")], "metrics",
                {"Description": "Per-side CST summary metrics, laterality indices and flags (one row)"}),
}


#: Outputs named together in one node, by the stage that makes them (one node per file
#: would cost Nipype's scheduling time ~25 times). Every key of :data:`DERIVATIVES` with a
#: suffix is in exactly one group.
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
        Keys of :data:`DERIVATIVES` to write (default: all).
    container : str, optional
        Folder under ``output_dir`` (default ``sub-X[/ses-Y]``; ``""`` writes the
        subject's ``dwi/`` and ``figures/`` straight into ``output_dir``, as the batch
        engine's staging area wants).

    Inputs
    ------
    One field per key of :data:`DERIVATIVES`, plus ``source_file`` (recorded in
    sidecars), ``preproc_record`` (a JSON file merged into the preprocessed DWI's sidecar) and
    ``metrics_record`` (merged into the summary and profile sidecars: the covered extent).
    """
    fields = list(fields or DERIVATIVES)
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=[*fields, "source_file", "preproc_record", "metrics_record"]),
                        name="inputnode")
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    if container is None:
        container = sub if not session else f"{sub}/{session if session.startswith('ses-') else 'ses-' + session}"
    sink = pe.Node(DataSink(base_directory=str(output_dir), parameterization=False),
                   name="datasink", run_without_submitting=True)
    if container:
        sink.inputs.container = container
    for field in fields:
        if DERIVATIVES[field][2] is None:   # a folder, copied as it is
            wf.connect(inputnode, field, sink, f"{DERIVATIVES[field][0]}.@{field}")
    for group, members in GROUPS.items():
        chosen = [f for f in members if f in fields]
        if not chosen:
            continue
        specs = {f: {"folder": DERIVATIVES[f][0], "entities": DERIVATIVES[f][1], "suffix": DERIVATIVES[f][2],
                     "sidecar": DERIVATIVES[f][3], "compresslevel": 0 if f in STORED else 1} for f in chosen}
        names = pe.Node(DerivativeNames(fields=chosen, subject=sub, specs=specs), name=f"name_{group}",
                        run_without_submitting=group not in SUBMITTED)
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
        for folder in sorted({specs[f]["folder"] for f in chosen}):
            wf.connect(names, folder, sink, f"{folder}.@{group}")
    return wf


def _as_list(value):
    return [value] if isinstance(value, str) else list(value)
