"""One source of truth for every option that changes results.

The command line, a batch manifest's ``global_options`` and the BIDS-App all fill
:class:`PipelineConfig`; :func:`PipelineConfig.config_hash` fingerprints exactly
these values (plus the package's major.minor version), so a batch can tell whether
a finished subject was made with the same settings.

Execution-only settings (number of processes, memory, plugin, paths) live in
:class:`ExecutionConfig` and are *not* part of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from . import __version__

DENOISE_METHODS = ("patch2self", "nlmeans", "mppca", "none")
TENSOR_FIT_METHODS = ("WLS", "OLS", "NLLS", "RESTORE")


@dataclass(frozen=True)
class PipelineConfig:
    """Options of the per-subject pipeline (all defaults live here).

    Attributes
    ----------
    denoise_method : str
        One of ``patch2self``, ``nlmeans``, ``mppca``, ``none``.
    gibbs : bool
        Gibbs unringing (dipy's sub-voxel shift method) on the acquisition plane.
    gibbs_slice_axis : int
        Voxel axis (after RAS reorientation) across which slices were acquired, or -1 to
        take it from the sidecar's ``SliceEncodingDirection`` / the lowest resolution axis.
    motion_correction : bool
        Rigid registration of every volume to the b0 reference, with b-vector rotation.
    b0_threshold : float
        Volumes with b ≤ this (s/mm²) count as b0.
    mask_median_radius, mask_numpass : int
        ``median_otsu`` parameters for the brain mask.
    tensor_fit_method : str
        dipy ``TensorModel`` fit method.
    series : str or None
        DICOM series to import when a folder holds several diffusion series.
    seed : int
        Seed for every random step (bit-identical reruns).
    """

    denoise_method: str = "patch2self"
    gibbs: bool = True
    gibbs_slice_axis: int = -1
    motion_correction: bool = True
    b0_threshold: float = 50.0
    mask_median_radius: int = 2
    mask_numpass: int = 1
    tensor_fit_method: str = "WLS"
    seed: int = 0

    def __post_init__(self):
        if self.denoise_method not in DENOISE_METHODS:
            raise ValueError(
                f"denoise_method must be one of {', '.join(DENOISE_METHODS)}, not {self.denoise_method!r}"
            )
        if self.tensor_fit_method not in TENSOR_FIT_METHODS:
            raise ValueError(
                f"tensor_fit_method must be one of {', '.join(TENSOR_FIT_METHODS)}, "
                f"not {self.tensor_fit_method!r}"
            )
        if self.b0_threshold < 0:
            raise ValueError("b0_threshold must be ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "PipelineConfig":
        """Build from a mapping (manifest / JSON); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def replace(self, **changes) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)

    def config_hash(self) -> str:
        """Short SHA-256 of the options and the package's major.minor version."""
        major_minor = ".".join(__version__.split(".")[:2])
        payload = json.dumps({"options": self.to_dict(), "version": major_minor}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExecutionConfig:
    """How to run (does not change results, not hashed)."""

    plugin: str = "Linear"
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin_args: dict = field(default_factory=dict)
    write_graph: bool = False
    #: Nipype's own log level. Node failures are reported by csttool in one line (the
    #: crash file has the traceback), so Nipype is quiet unless asked (-v/-vv).
    nipype_log_level: str = "CRITICAL"
