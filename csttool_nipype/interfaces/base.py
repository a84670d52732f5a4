"""Shared input specs and file helpers for the stage interfaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from .. import __version__
from ..config import B0_THRESHOLD
from ..jsonutil import jsonable
from ..peak_memory import PeakMemory


def choice(choices, default, **metadata):
    """An Enum trait over a choice tuple from :mod:`csttool_nipype.config`, ``default`` first."""
    return traits.Enum(default, *[c for c in choices if c != default], usedefault=True, **metadata)



class VersionedInputSpec(BaseInterfaceInputSpec):
    """Adds the package version to the inputs so Nipype re-runs a node after an upgrade."""

    pipeline_version = traits.Str(__version__, usedefault=True, desc="csttool-nipype version (cache key)")


class DWIInputSpec(VersionedInputSpec):
    in_dwi = File(exists=True, mandatory=True, desc="4D DWI NIfTI (RAS+ after import)")
    in_bval = File(exists=True, mandatory=True, desc="b-values (s/mm², FSL text)")
    in_bvec = File(exists=True, mandatory=True, desc="b-vectors (FSL convention)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b ≤ this counts as b0 (s/mm²)")


class ThreadsDWIInputSpec(DWIInputSpec):
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="threads (never changes the result)")


class DWIOutputSpec(TraitedSpec):
    out_dwi = File(exists=True, desc="4D DWI NIfTI")
    out_bval = File(exists=True, desc="b-values")
    out_bvec = File(exists=True, desc="b-vectors (FSL convention)")


def load_mask(path) -> np.ndarray:
    """A mask image (any non-zero voxel is in it) as a bool array in its voxel order."""
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj) > 0


def load_inputs(inputs):
    """Load the DWI triplet of an interface's inputs as a ``DWIData`` (validated)."""
    from ..science.dwi_import import load_dwi

    return load_dwi(inputs.in_dwi, inputs.in_bval, inputs.in_bvec, b0_threshold=inputs.b0_threshold)


def save_outputs(dwi, cwd: str, stem: str, results: dict) -> None:
    """Save a ``DWIData`` into the node's working directory and fill DWIOutputSpec results.

    The image is written uncompressed (``.nii``): it is an intermediate that the next node
    reads at once; the derivatives writer compresses what it publishes.
    """
    from ..science.dwi_io import save_dwi

    paths = save_dwi(dwi, str(Path(cwd) / stem), compress=False)
    results["out_dwi"] = str(paths["nifti"])
    results["out_bval"] = str(paths["bval"])
    results["out_bvec"] = str(paths["bvec"])


def save_map(array, affine, cwd, stem: str) -> str:
    """Save a 3D/4D map as an uncompressed NIfTI intermediate ``cwd/stem.nii``; return its path."""
    import nibabel as nib

    path = Path(cwd) / f"{stem}.nii"
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def write_json(obj, path: Path) -> str:
    """Write ``obj`` as indented JSON (NumPy values and paths converted) and return the path."""
    path = Path(path)
    path.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")
    return str(path)


class StageInterface(SimpleInterface):
    """A stage's interface: Nipype's ``SimpleInterface`` that also records its peak memory.

    ``runtime.mem_peak_gb`` of every run holds the peak resident memory of the process
    running the node while it ran (see :mod:`csttool_nipype.peak_memory`): exact, at no
    cost, unlike Nipype's resource monitor, which samples every 0.5 s and blocks each node
    0.2 s to start. A value the monitor set (when switched on) is kept.
    """

    def run(self, *args, **kwargs):
        with PeakMemory() as peak:
            results = super().run(*args, **kwargs)
        runtime = getattr(results, "runtime", None)
        if runtime is not None and peak.gb is not None and getattr(runtime, "mem_peak_gb", None) is None:
            runtime.mem_peak_gb = peak.gb
        return results
