"""Tensor workflow: DTI fit inside the brain mask."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..interfaces.tensor import FitTensor

TENSOR_OUTPUTS = ["fa", "md", "rd", "ad", "colorfa", "v1", "evals", "tensor", "qc"]


def init_tensor_wf(config: PipelineConfig, mem_gb: float = 1.0, omp_nthreads: int = 1, name: str = "tensor_wf"):
    """Build the tensor-fitting workflow.

    Inputs
    ------
    dwi, bval, bvec, mask
        Preprocessed series (RAS+, FSL-convention b-vectors) and its brain mask.

    Outputs
    -------
    fa, md, rd, ad
        Scalar maps (MD/RD/AD in mm²/s) on the DWI grid, zero outside the mask.
    colorfa, v1, evals
        Colour FA (RGB = world R-L, A-P, S-I), principal eigenvector (voxel axes),
        eigenvalues.
    tensor
        The tensor's six elements (voxel axes), for tractography; not a derivative.
    qc
        PNG with FA and colour FA in three planes.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["dwi", "bval", "bvec", "mask"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=TENSOR_OUTPUTS), name="outputnode")
    fit = pe.Node(
        FitTensor(fit_method=config.tensor_fit_method, b0_threshold=config.b0_threshold),
        name="fit_tensor", mem_gb=4 * mem_gb,
    )
    fit.n_procs = fit.inputs.num_threads = omp_nthreads
    wf.connect([
        (inputnode, fit, [("dwi", "in_dwi"), ("bval", "in_bval"), ("bvec", "in_bvec"), ("mask", "in_mask")]),
        (fit, outputnode, [(f"out_{k}", k) for k in TENSOR_OUTPUTS]),
    ])
    return wf
