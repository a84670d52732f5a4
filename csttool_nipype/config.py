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
PREPROC_REGIONS = ("brain", "all")
TRACKING_METHODS = ("deterministic", "probabilistic")
TENSOR_FIT_METHODS = ("WLS", "OLS", "NLLS", "RESTORE")
CLIP_ENDS = ("first", "last")
MIDLINE_RULES = ("reject", "cut")
METRICS_WEIGHTINGS = ("streamlines", "voxel")
#: Volumes with b ≤ this (s/mm²) count as b=0 unless ``b0_threshold`` says otherwise.
B0_THRESHOLD = 50.0

#: The original tool's preprocessing switch (``--preprocessing`` / ``--no-preprocessing``, a
#: manifest's ``"preprocessing": true|false``): off sets these options; on turns Gibbs removal
#: and motion correction on and keeps the denoiser (the default one if it was ``none``).
PREPROCESSING_OFF = {"denoise_method": "none", "gibbs": False, "motion_correction": False}
PREPROCESSING_ON = {"gibbs": True, "motion_correction": True}
#: Per-subject time limit of a local batch when none is given (minutes; the walkthrough's
#: 120m). 0 given on the command line means no limit.
DEFAULT_TIMEOUT_MINUTES = 120.0
#: Memory (GB) set aside per subject running at once when a batch chooses how many run side
#: by side: the measured subject peaks are 0.8-1.6 GB (``peak_rss_mb`` in ``_done.json``).
SUBJECT_MEMORY_GB = 2.0
#: Option names accepted in manifests besides the :class:`PipelineConfig` fields.
OPTION_ALIASES = ("preprocessing",)

#: Pipeline stages in order, and what each needs before it.
STAGES = ("import", "preprocess", "tensor", "register", "track", "cst", "metrics")
#: stage -> the stages it needs. The CST is tracked from its own seeds (the internal
#: capsules), so ``cst`` does not need the whole-brain tractogram of ``track``.
STAGE_REQUIRES = {
    "import": (), "preprocess": ("import",), "tensor": ("preprocess",), "register": ("tensor",),
    "track": ("tensor",), "cst": ("register",), "metrics": ("cst",),
}


def resolve_stages(requested) -> tuple[str, ...]:
    """The requested stages plus everything they need, in pipeline order."""
    unknown = sorted(set(requested) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    needed: set[str] = set()
    todo = list(requested)
    while todo:
        stage = todo.pop()
        if stage not in needed:
            needed.add(stage)
            todo.extend(STAGE_REQUIRES[stage])
    return tuple(s for s in STAGES if s in needed)


@dataclass(frozen=True)
class PipelineConfig:
    """Options of the per-subject pipeline (all defaults live here).

    Attributes
    ----------
    denoise_method : str
        One of ``patch2self``, ``nlmeans``, ``mppca``, ``none``.
    mppca_patch_stride : int
        MP-PCA patch centres on every n-th voxel along each axis (1: every voxel, dipy's
        result). Every voxel is still the weighted mean of several overlapping patch
        estimates (why 2: docs/decisions.md).
    gibbs : bool
        Gibbs unringing (dipy's sub-voxel shift method) on the acquisition plane.
    gibbs_slice_axis : int
        Voxel axis (after RAS reorientation) across which slices were acquired, or -1 to
        take it from the sidecar's ``SliceEncodingDirection`` / the lowest resolution axis.
    motion_correction : bool
        Rigid registration of every volume to the b0 reference, with b-vector rotation.
    eddy_correction : bool
        With motion correction: each diffusion-weighted volume's registration also has the
        eddy-current terms (scale and shears along the phase-encoding axis named by the
        sidecar), the gradient-linear shift along that axis is reported as eddy current,
        not head motion; b-vectors turn with the head rotation only
        (:mod:`csttool_nipype.science.eddy`). No effect without phase-encoding metadata.
    b0_threshold : float
        Volumes with b ≤ this (s/mm²) count as b0.
    mask_median_radius, mask_numpass : int
        ``median_otsu`` parameters for the brain mask.
    preproc_region : str
        ``"brain"``: denoising and Gibbs removal work only inside the brain mask of the raw
        series dilated by 4 voxels (which holds the final brain mask and everything
        motion correction interpolates into it; with ``mppca_patch_stride`` 1, MP-PCA
        there equals its whole-image result; with a coarser stride the lattice of patch
        centres starts at the region's corner), skipping the background - 2-4x less work
        at clinical fields of view.
        ``"all"``: the whole field of view.
    tensor_fit_method : str
        dipy ``TensorModel`` fit method.
    template_resolution_mm : float
        Resolution the MNI template is resampled to for the non-linear registration.
    tracking_method : str
        ``deterministic`` (tensor principal direction) or ``probabilistic`` (CSA ODF).
    seed_density : float
        Whole-brain seeds per mm³ of the seed region (brain mask where FA > threshold), at
        random positions: 1/9 is 3 seeds per 3 mm voxel and 0.85 per 1.75x1.75x2.5 mm
        voxel. A density rather than a count per voxel keeps streamline counts comparable
        between resolutions (why this density: docs/decisions.md).
    step_size_mm, fa_threshold, max_angle_deg, min_length_mm, max_length_mm
        Whole-brain tractography stopping and length parameters.
    tracking_smoothing_mm : float
        Gaussian sigma (mm) of the smoothing of the tensor field that deterministic tracking
        follows (its directions, and the FA that seeds and stops it); streamline ends are
        trimmed back to where the fitted FA is above the threshold, and the metrics always
        use the unsmoothed maps. 0 (default) tracks the fitted tensors as they are (why:
        docs/decisions.md).
    cst_seed_density : float
        Seeds per mm³ of the CST tractography, seeded in the posterior limbs of both internal
        capsules (the Juelich CST waypoints, where FA is above the threshold), which every
        corticospinal fibre passes; 2 is 54 seeds per 3 mm voxel (about 2000 per side). The
        CST count is the number of these streamlines that meet the CST definition, so it
        compares between scans of one protocol (why: docs/decisions.md, "#17 bundle definition").
    cst_midline : {"reject", "cut"}
        A CST streamline that crosses the midline above the decussation is cut there
        (default), keeping its longest piece that still runs from the brainstem to the
        sensorimotor cortex, or dropped whole (as AFQ does); see ``science.bundles.extract_cst``.
    cst_min_length_mm : float
        Shortest streamline kept in a CST.
    cst_clip_end : {"first", "last"}
        Each CST streamline is cut where it first reaches the precentral ROI (``first``)
        or at its last point in it (``last``); see ``science.bundles.clip_to_rois``.
    metrics_weighting : {"streamlines", "voxel"}
        Bundle means over voxels weighted by their streamline count (the mean along the
        tract) or each visited voxel once; see ``science.profiles.bundle_metrics``.
    min_streamlines : int
        A side with fewer CST streamlines is flagged.
    min_registration_dice : float
        White-matter Dice (template vs subject, after warping) below which registration is flagged.
    stages : tuple of str
        Stages to run (their prerequisites are added): see :data:`STAGES`.
    seed : int
        Seed for every random step (bit-identical reruns).
    """

    denoise_method: str = "mppca"
    mppca_patch_stride: int = 2
    gibbs: bool = True
    gibbs_slice_axis: int = -1
    motion_correction: bool = True
    eddy_correction: bool = True
    b0_threshold: float = B0_THRESHOLD
    mask_median_radius: int = 2
    mask_numpass: int = 1
    preproc_region: str = "brain"
    tensor_fit_method: str = "WLS"
    template_resolution_mm: float = 2.0
    tracking_method: str = "deterministic"
    seed_density: float = 1 / 9
    step_size_mm: float = 0.5
    fa_threshold: float = 0.2
    max_angle_deg: float = 45.0
    min_length_mm: float = 20.0
    max_length_mm: float = 250.0
    tracking_smoothing_mm: float = 0.0
    cst_min_length_mm: float = 40.0
    cst_clip_end: str = "first"
    cst_seed_density: float = 2.0
    cst_midline: str = "cut"
    metrics_weighting: str = "streamlines"
    min_streamlines: int = 10
    min_registration_dice: float = 0.5
    stages: tuple = STAGES
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
        if self.tracking_method not in TRACKING_METHODS:
            raise ValueError(f"tracking_method must be one of {', '.join(TRACKING_METHODS)}")
        for name, choices in (("cst_clip_end", CLIP_ENDS), ("cst_midline", MIDLINE_RULES),
                              ("metrics_weighting", METRICS_WEIGHTINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        if not self.tracking_smoothing_mm >= 0:
            raise ValueError("tracking_smoothing_mm must be ≥ 0")
        if self.preproc_region not in PREPROC_REGIONS:
            raise ValueError(f"preproc_region must be one of {', '.join(PREPROC_REGIONS)}")
        if int(self.mppca_patch_stride) != self.mppca_patch_stride or self.mppca_patch_stride < 1:
            raise ValueError("mppca_patch_stride must be a whole number ≥ 1")
        for name in ("seed_density", "cst_seed_density", "step_size_mm", "max_angle_deg", "max_length_mm", "template_resolution_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.fa_threshold < 1:
            raise ValueError("fa_threshold must be in [0, 1)")
        if not 0 < self.max_angle_deg <= 90:
            raise ValueError("max_angle_deg must be in (0, 90]")
        for name in ("min_length_mm", "cst_min_length_mm", "min_streamlines", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0")
        if not 0 <= self.min_registration_dice <= 1:
            raise ValueError("min_registration_dice must be in [0, 1]")
        if self.gibbs_slice_axis not in (-1, 0, 1, 2):
            raise ValueError("gibbs_slice_axis must be -1 (from the acquisition), 0, 1 or 2")
        for name in ("mask_median_radius", "mask_numpass"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.min_length_mm > self.max_length_mm:
            raise ValueError("min_length_mm must not exceed max_length_mm")
        object.__setattr__(self, "stages", resolve_stages(tuple(self.stages)))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stages"] = list(self.stages)
        return out

    def runs(self, stage: str) -> bool:
        """True when ``stage`` is part of this run."""
        return stage in self.stages

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "PipelineConfig":
        """Build from a mapping (manifest / JSON).

        Accepts the :data:`OPTION_ALIASES` (see :func:`expand_aliases`); unknown keys and
        values of the wrong type (``"gibbs": "no"``) are errors naming them.
        """
        options = expand_aliases(options)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}; known: "
                             f"{', '.join(sorted([*known, *OPTION_ALIASES]))}")
        for name, value in options.items():
            _check_type(name, value, getattr(cls, name))
        return cls(**options)

    def replace(self, **changes) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)

    def config_hash(self) -> str:
        """Short SHA-256 of the options and the package's major.minor version."""
        major_minor = ".".join(__version__.split(".")[:2])
        payload = json.dumps({"options": self.to_dict(), "version": major_minor}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def expand_aliases(options: dict[str, Any]) -> dict[str, Any]:
    """Options with ``preprocessing: true|false`` replaced by what it means.

    ``false`` sets :data:`PREPROCESSING_OFF`; ``true`` turns Gibbs removal and motion
    correction on (the denoiser stays as given, or the default). Options given by name
    beside it win, so ``{"preprocessing": true, "gibbs": false}`` skips only Gibbs removal.
    """
    options = dict(options)
    if "preprocessing" not in options:
        return options
    switch = options.pop("preprocessing")
    if not isinstance(switch, bool):
        raise ValueError(f"preprocessing must be true or false, not {switch!r}")
    implied = dict(PREPROCESSING_ON if switch else PREPROCESSING_OFF)
    return {**implied, **options}


def _check_type(name: str, value: Any, default: Any) -> None:
    """A manifest value must have its option's type (ints are accepted for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:   # stages: a list of stage names
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(f"{name} must be {_TYPE_WORDS[type(default)]}, not {value!r}")


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
               tuple: "a list of names"}


def available_memory_gb() -> float:
    """Physical memory of this machine (GB), or of the cgroup this process is limited to."""
    import psutil

    total = psutil.virtual_memory().total
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total / 2**30


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ExecutionConfig:
    """How to run (does not change results, not hashed)."""

    plugin: str = "Linear"
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin_args: dict = field(default_factory=dict)
    write_graph: bool = False
    #: Nipype's resource monitor (psutil sampling of every node's process tree, 0.2 s per
    #: node to start). Not needed for peak memory: every stage records its own exactly.
    resource_monitor: bool = False
    #: Nipype's own log level. Node failures are reported by csttool in one line (the
    #: crash file has the traceback), so Nipype is quiet unless asked (-v/-vv).
    nipype_log_level: str = "CRITICAL"
