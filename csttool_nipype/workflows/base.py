"""The per-subject workflow: a composition of the stage workflows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..derivatives import WORKFLOW_OUTPUTS, prefixed
from ..interfaces.dwi_import import ImportDWI
from .dwi_preproc import init_dwi_preproc_wf
from .outputs import init_derivatives_wf
from .registration import init_registration_wf
from .tensor import TENSOR_OUTPUTS, init_tensor_wf
from .tractography import init_cst_wf, init_tracking_wf

PREPROC_FIELDS = ["dwi", "bval", "bvec", "mask", "b0"]
#: Import node output -> derivatives field, for a run that stops after the import.
IMPORT_OUTPUTS = {"out_dwi": "import_dwi", "out_bval": "import_bval", "out_bvec": "import_bvec"}


@dataclass(frozen=True)
class DWIInputs:
    """Where one subject's diffusion data comes from: a NIfTI (+ sidecars) or DICOM."""

    nifti: str | None = None
    bval: str | None = None
    bvec: str | None = None
    sidecar: str | None = None
    dicom: str | None = None
    series: str | None = None

    @property
    def source(self) -> str:
        return str(self.nifti or self.dicom)

    def size_gb(self) -> float:
        """Rough in-memory size of the series as float32, for MultiProc memory estimates."""
        path = Path(self.source)
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            size = path.stat().st_size if path.exists() else 0
            if path.name.endswith(".gz"):
                size *= 3  # typical DWI compression ratio
        # int16 on disk → float32 in memory
        return max(0.1, 2 * size / 1024**3)


def init_subject_wf(subject: str, inputs: DWIInputs, output_dir: str, config: PipelineConfig | None = None,
                    session: str | None = None, name: str | None = None, container: str | None = None,
                    omp_nthreads: int = 1):
    """Build the workflow that takes one subject's DWI to CST metrics.

    import → preprocessing (:func:`init_dwi_preproc_wf`) → tensor (:func:`init_tensor_wf`)
    → registration and ROIs (:func:`init_registration_wf`) and whole-brain tracking
    (:func:`init_tracking_wf`) → CST extraction and metrics (:func:`init_cst_wf`) →
    BIDS-derivative outputs (:func:`init_derivatives_wf`). ``config.stages`` selects
    how far it goes.

    Parameters
    ----------
    subject : str
        Subject label (``sub-01`` or ``01``).
    inputs : DWIInputs
        The raw data.
    output_dir : str
        Derivatives root; files land in ``output_dir/sub-XX[/ses-YY]/{dwi,figures}``.
    config : PipelineConfig
        Pipeline options (defaults if None).
    container : str, optional
        Passed to :func:`init_derivatives_wf` (``""`` for a batch staging folder).
    omp_nthreads : int
        Threads a multithreaded node may use (it also declares them to Nipype as its
        ``n_procs``, so MultiProc never oversubscribes the cores). Never changes results.
    """
    config = config or PipelineConfig()
    sub = prefixed(subject, "sub-")
    name = name or f"single_subject_{sub.replace('sub-', '').replace('-', '_')}_wf"
    wf = pe.Workflow(name=name)
    mem_gb = inputs.size_gb()

    dwi_import = pe.Node(ImportDWI(b0_threshold=config.b0_threshold), name="dwi_import", mem_gb=3 * mem_gb)
    for field, trait in (("nifti", "in_nifti"), ("bval", "in_bval"), ("bvec", "in_bvec"),
                         ("sidecar", "in_json"), ("dicom", "dicom"), ("series", "series")):
        value = getattr(inputs, field)
        if value is not None:
            setattr(dwi_import.inputs, trait, str(value))
    inputnode = pe.Node(IdentityInterface(fields=["source_file"]), name="inputnode")
    inputnode.inputs.source_file = inputs.source

    if not config.runs("preprocess"):   # --stages import: the imported series is the result
        derivatives_wf = init_derivatives_wf(output_dir, sub, session=session, container=container,
                                             fields=list(IMPORT_OUTPUTS.values()))
        wf.connect([(dwi_import, derivatives_wf, [(src, f"inputnode.{dst}") for src, dst in IMPORT_OUTPUTS.items()]),
                    (inputnode, derivatives_wf, [("source_file", "inputnode.source_file")])])
        return wf
    preproc_wf = init_dwi_preproc_wf(config, mem_gb=mem_gb, omp_nthreads=omp_nthreads)
    wf.connect([
        (dwi_import, preproc_wf, [("out_dwi", "inputnode.dwi"), ("out_bval", "inputnode.bval"),
                                  ("out_bvec", "inputnode.bvec"), ("slice_axis", "inputnode.slice_axis"),
                                  ("out_json", "inputnode.metadata")]),
    ])
    # (source workflow, its output field, derivatives field)
    outputs = [(preproc_wf, f, f) for f in PREPROC_FIELDS] + [(preproc_wf, "report", "preproc_record")]
    if config.runs("tensor"):
        tensor_wf = init_tensor_wf(config, mem_gb=mem_gb, omp_nthreads=omp_nthreads)
        _link(wf, preproc_wf, tensor_wf, ["dwi", "bval", "bvec", "mask"])
        outputs += [(tensor_wf, f, f) for f in TENSOR_OUTPUTS if f not in ("qc", "tensor")] + [(tensor_wf, "qc", "tensor_qc")]
    if config.runs("register"):
        reg_wf = init_registration_wf(config)
        _link(wf, tensor_wf, reg_wf, ["fa"])
        _link(wf, preproc_wf, reg_wf, ["mask"])
        outputs += [(reg_wf, "registration", "registration"), (reg_wf, "qc", "registration_qc"),
                    (reg_wf, "template_wm", "template_wm"), (reg_wf, "roi_labels", "roi_labels"),
                    (reg_wf, "coverage", "coverage")]
    if config.runs("track"):
        track_wf = init_tracking_wf(config, mem_gb=mem_gb, omp_nthreads=omp_nthreads)
        _link(wf, tensor_wf, track_wf, ["fa", "v1", "tensor"])
        _link(wf, preproc_wf, track_wf, ["mask", "dwi", "bval", "bvec"])
        outputs.append((track_wf, "tractogram", "tractogram"))
    if config.runs("cst"):
        cst_wf = init_cst_wf(config, sub, session, metrics=config.runs("metrics"), mem_gb=mem_gb,
                             omp_nthreads=omp_nthreads)
        _link(wf, reg_wf, cst_wf, ["rois", "quality", "coverage", "mni_z", "priors"])
        _link(wf, tensor_wf, cst_wf, ["fa", "v1", "tensor", "md", "rd", "ad"])
        _link(wf, preproc_wf, cst_wf, ["mask", "dwi", "bval", "bvec"])
        outputs += [(cst_wf, "left", "cst_left"), (cst_wf, "right", "cst_right"),
                    (cst_wf, "left_density", "cst_left_density"), (cst_wf, "right_density", "cst_right_density")]
        if config.runs("metrics"):
            outputs += [(cst_wf, "profiles", "profiles"), (cst_wf, "summary", "summary"),
                        (cst_wf, "metrics_record", "metrics_record")]

    fields = [dst for _, _, dst in outputs if dst in WORKFLOW_OUTPUTS]  # the records go into sidecars
    derivatives_wf = init_derivatives_wf(output_dir, sub, session=session, fields=fields, container=container)
    for src, field, dst in outputs:
        wf.connect(src, f"outputnode.{field}", derivatives_wf, f"inputnode.{dst}")
    wf.connect(inputnode, "source_file", derivatives_wf, "inputnode.source_file")
    return wf


def _link(wf, src, dst, fields):
    """Connect ``src.outputnode.f`` to ``dst.inputnode.f`` for each field."""
    wf.connect([(src, dst, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields])])
