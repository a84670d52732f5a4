"""Import stage: NIfTI(+bval/bvec/json) or DICOM → validated RAS+ DWI."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, Str, TraitedSpec, isdefined, traits

from ..config import B0_THRESHOLD
from .base import StageInterface, VersionedInputSpec, write_json


class _ImportDWIInputSpec(VersionedInputSpec):
    in_nifti = File(exists=True, desc="4D diffusion NIfTI")
    in_bval = File(exists=True, desc="b-values (default: same stem as the NIfTI)")
    in_bvec = File(exists=True, desc="b-vectors, FSL convention (default: same stem)")
    in_json = File(exists=True, desc="BIDS/dcm2niix JSON sidecar (default: same stem)")
    dicom = traits.Str(desc="DICOM folder or file (may be gzipped)", xor=["in_nifti"])
    series = Str(desc="DICOM series number or description substring")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b ≤ this counts as b0 (s/mm²)")


class _ImportDWIOutputSpec(TraitedSpec):
    out_dwi = File(exists=True, desc="4D DWI in closest-canonical RAS+ voxel order, float32")
    out_bval = File(exists=True, desc="b-values (s/mm²)")
    out_bvec = File(exists=True, desc="b-vectors, FSL convention for out_dwi")
    out_json = File(exists=True, desc="sidecar metadata plus csttool_import record")
    slice_axis = traits.Int(desc="voxel axis of out_dwi across which slices were acquired")


class ImportDWI(StageInterface):
    """Read, validate and reorient one diffusion series (see ``science.dwi_import.import_dwi``)."""

    input_spec = _ImportDWIInputSpec
    output_spec = _ImportDWIOutputSpec

    def _run_interface(self, runtime):
        from ..science.dwi_import import check_extent, import_dwi
        from ..science.dwi_io import save_dwi

        def opt(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        dwi = import_dwi(
            nifti=opt("in_nifti"),
            bval=opt("in_bval"),
            bvec=opt("in_bvec"),
            sidecar=opt("in_json"),
            dicom=opt("dicom"),
            series=opt("series"),
            work_dir=runtime.cwd,
            b0_threshold=self.inputs.b0_threshold,
        )
        check_extent(dwi.data.shape, dwi.affine, dwi.source)
        paths = save_dwi(dwi, str(Path(runtime.cwd) / "dwi"), compress=False)
        self._results["out_dwi"] = str(paths["nifti"])
        self._results["out_bval"] = str(paths["bval"])
        self._results["out_bvec"] = str(paths["bvec"])
        self._results["out_json"] = write_json(dwi.metadata, Path(runtime.cwd) / "dwi_metadata.json")
        self._results["slice_axis"] = slice_axis_after_import(dwi.metadata)
        return runtime


def slice_axis_after_import(metadata: dict) -> int:
    """Voxel axis (0, 1, 2 of the RAS+ image) that was the acquisition's slice axis.

    dcm2niix stores slices along the third voxel axis; the import records the original
    axis codes (e.g. ``PSR`` for a sagittal acquisition), so the slice axis after RAS
    reorientation is the RAS axis that original third code maps to.
    """
    codes = (metadata.get("csttool_import") or {}).get("original_orientation") or "RAS"
    last = str(codes)[-1].upper()
    return {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(last, 2)
