"""The per-subject workflow: a composition of the stage workflows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..interfaces.dwi_import import ImportDWI
from .dwi_preproc import init_dwi_preproc_wf
from .outputs import init_derivatives_wf
from .tensor import TENSOR_OUTPUTS, init_tensor_wf


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
                    session: str | None = None, name: str | None = None, container: str | None = None):
    """Build the workflow that takes one subject's DWI to tensor maps.

    import → preprocessing (:func:`init_dwi_preproc_wf`) → tensor
    (:func:`init_tensor_wf`) → BIDS-derivative outputs (:func:`init_derivatives_wf`).

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
    """
    config = config or PipelineConfig()
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
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

    preproc_wf = init_dwi_preproc_wf(config, mem_gb=mem_gb)
    tensor_wf = init_tensor_wf(config, mem_gb=mem_gb)
    derivatives_wf = init_derivatives_wf(output_dir, sub, session=session, container=container)

    wf.connect([
        (dwi_import, preproc_wf, [("out_dwi", "inputnode.dwi"), ("out_bval", "inputnode.bval"),
                                  ("out_bvec", "inputnode.bvec"), ("slice_axis", "inputnode.slice_axis"),
                                  ("out_json", "inputnode.metadata")]),
        (preproc_wf, tensor_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in ("dwi", "bval", "bvec", "mask")]),
        (preproc_wf, derivatives_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in ("dwi", "bval", "bvec", "mask", "b0")]
         + [("outputnode.report", "inputnode.preproc_record")]),
        (tensor_wf, derivatives_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in TENSOR_OUTPUTS if f != "qc"]
         + [("outputnode.qc", "inputnode.tensor_qc")]),
        (inputnode, derivatives_wf, [("source_file", "inputnode.source_file")]),
    ])
    return wf
