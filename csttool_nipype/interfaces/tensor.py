"""Tensor stage interface: DTI fit and scalar maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, TraitedSpec

from ..config import TENSOR_FIT_METHODS, PipelineConfig
from .base import StageInterface, ThreadsDWIInputSpec, choice, load_inputs, load_mask, save_map

SCALARS = ("fa", "md", "rd", "ad")


class _FitTensorInputSpec(ThreadsDWIInputSpec):
    in_mask = File(exists=True, mandatory=True, desc="brain mask on the DWI grid")
    fit_method = choice(TENSOR_FIT_METHODS, PipelineConfig().tensor_fit_method)


class _FitTensorOutputSpec(TraitedSpec):
    out_fa = File(exists=True, desc="fractional anisotropy (unitless)")
    out_md = File(exists=True, desc="mean diffusivity (mm²/s)")
    out_rd = File(exists=True, desc="radial diffusivity (mm²/s)")
    out_ad = File(exists=True, desc="axial diffusivity (mm²/s)")
    out_colorfa = File(exists=True, desc="colour FA, RGB = |world x|,|y|,|z| × FA, 4D (X,Y,Z,3)")
    out_v1 = File(exists=True, desc="principal eigenvector in voxel axes, 4D (X,Y,Z,3)")
    out_evals = File(exists=True, desc="eigenvalues λ1≥λ2≥λ3 (mm²/s), 4D (X,Y,Z,3)")
    out_tensor = File(exists=True, desc="tensor Dxx,Dxy,Dyy,Dxz,Dyz,Dzz (mm²/s), voxel axes, 4D (X,Y,Z,6)")
    out_qc = File(exists=True, desc="QC PNG: FA and colour FA, three planes")


class FitTensor(StageInterface):
    """Fit the diffusion tensor inside the mask (``science.tensor.fit_tensor``)."""

    input_spec = _FitTensorInputSpec
    output_spec = _FitTensorOutputSpec

    def _run_interface(self, runtime):
        from ..reports.figures import tensor_qc_png
        from ..science.tensor import fit_tensor

        dwi = load_inputs(self.inputs)
        mask = load_mask(self.inputs.in_mask)
        maps = fit_tensor(
            dwi.data, dwi.bvals, dwi.bvecs_voxel, mask, fit_method=self.inputs.fit_method,
            b0_threshold=self.inputs.b0_threshold, affine=dwi.affine, workers=self.inputs.num_threads,
        )
        cwd = Path(runtime.cwd)
        for key, name in [*((s, s) for s in SCALARS), ("color_fa", "colorfa"), ("v1", "v1"), ("evals", "evals"),
                          ("tensor", "tensor")]:
            self._results[f"out_{name}"] = save_map(np.asarray(maps[key], np.float32), dwi.affine, cwd, name)
        self._results["out_qc"] = str(
            tensor_qc_png(maps["fa"], maps["color_fa"], mask, cwd / "tensor_qc.png", title="DTI")
        )
        return runtime
