"""The outputs of one subject: one record per file (or folder), used by the writer and the readers.

Every file a subject run leaves in its folder (``OUT/sub-X[/ses-Y]/``) is described here
once: the folder it goes in, its BIDS entities, suffix and extension, whether a JSON sidecar
goes with it and what that sidecar says. The subject workflow names its outputs from this
registry (:mod:`csttool_nipype.workflows.outputs`), and the reports, the cohort tables and the
benchmarks find them with :func:`find`, so a name is spelled in one place.

Examples
--------
>>> path("OUT/sub-01", "fa", "sub-01").as_posix()
'OUT/sub-01/dwi/sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz'
>>> OUTPUTS["summary"].pattern
'*_desc-summary_metrics.tsv'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Entities of every map in the subject's diffusion space.
_DWI = (("space", "dwi"),)
_TENSOR = (*_DWI, ("model", "tensor"))


@dataclass(frozen=True)
class Output:
    """One output of a subject run.

    Attributes
    ----------
    folder : str
        Folder under the subject (session) folder: ``dwi``, ``figures``, ``xfm``, or ``""``.
    suffix : str
        BIDS suffix (``dwimap``, ``mask``...); for a folder output, the folder's name.
    extension : str
        ``.nii.gz``, ``.trk``, ``.tsv``...; ``""`` for a folder output, copied as it is.
    entities : tuple of (key, value)
        BIDS entities after ``sub-``/``ses-``, in file-name order.
    description : str
        What the file holds (units, space); the sidecar's ``Description`` when it has one.
    sidecar : bool
        A JSON sidecar (same name, ``.json``) is written next to the file.
    metadata : tuple of (key, value)
        Further sidecar keys, after ``Description`` (``Units``, ``Type``).
    """

    folder: str
    suffix: str
    extension: str
    entities: tuple[tuple[str, str], ...] = ()
    description: str = ""
    sidecar: bool = False
    metadata: tuple[tuple[str, object], ...] = ()

    @property
    def is_folder(self) -> bool:
        return not self.extension

    @property
    def stem(self) -> str:
        """The name after ``sub-X[_ses-Y]_``, without extension: ``space-dwi_desc-brain_mask``."""
        return "_".join([*(f"{k}-{v}" for k, v in self.entities), self.suffix])

    @property
    def pattern(self) -> str:
        """Glob of the file's name in its folder, any subject and session."""
        return self.suffix if self.is_folder else f"*_{self.stem}{self.extension}"

    def sidecar_fields(self) -> dict:
        """The sidecar's fixed keys (empty when the output has no sidecar)."""
        return {"Description": self.description, **dict(self.metadata)} if self.sidecar else {}

    def name(self, subject: str, session: str | None = None, extension: str | None = None) -> str:
        """``sub-X[_ses-Y]_<entities>_<suffix><extension>`` (a folder output: its name)."""
        if self.is_folder:
            return self.suffix
        parts = [prefixed(subject, "sub-"), *([prefixed(session, "ses-")] if session else []), self.stem]
        return "_".join(parts) + (self.extension if extension is None else extension)


def prefixed(label: str, prefix: str) -> str:
    """``01`` → ``sub-01`` (``prefix`` added when missing)."""
    label = str(label)
    return label if label.startswith(prefix) else f"{prefix}{label}"


def _map(description: str, entities, suffix="dwimap", extension=".nii.gz", **metadata) -> Output:
    return Output("dwi", suffix, extension, tuple(entities), description, True, tuple(metadata.items()))


_IMPORT = (*_DWI, ("desc", "import"))
_PREPROC = (*_DWI, ("desc", "preproc"))

#: Every output of a subject run, by key. The keys are the subject workflow's output fields.
OUTPUTS: dict[str, Output] = {
    # written only when the run stops after the import (``--stages import``)
    "import_dwi": _map("Imported diffusion-weighted series: validated, derived volumes dropped, RAS+ voxel order, "
                       "not resampled or preprocessed", _IMPORT, "dwi"),
    "import_bval": Output("dwi", "dwi", ".bval", _IMPORT, "b-values of the imported series, s/mm²"),
    "import_bvec": Output("dwi", "dwi", ".bvec", _IMPORT, "b-vectors of the imported series (FSL convention)"),
    # preprocessing
    "dwi": _map("Preprocessed diffusion-weighted series, RAS+ voxel order", _PREPROC, "dwi"),
    "bval": Output("dwi", "dwi", ".bval", _PREPROC, "b-values of the preprocessed series, s/mm²"),
    "bvec": Output("dwi", "dwi", ".bvec", _PREPROC,
                   "b-vectors of the preprocessed series (FSL convention, rotated with the head motion)"),
    "mask": _map("Brain mask (median Otsu on the mean b=0)", (*_DWI, ("desc", "brain")), "mask", Type="Brain"),
    "b0": _map("Mean of the preprocessed b=0 volumes", (*_DWI, ("desc", "mean")), "dwiref"),
    # tensor
    "fa": _map("Fractional anisotropy of the diffusion tensor", (*_TENSOR, ("param", "fa")), Units="arbitrary"),
    "md": _map("Mean diffusivity of the diffusion tensor", (*_TENSOR, ("param", "md")), Units="mm^2/s"),
    "rd": _map("Radial diffusivity (mean of the two smaller eigenvalues)", (*_TENSOR, ("param", "rd")),
               Units="mm^2/s"),
    "ad": _map("Axial diffusivity (largest eigenvalue)", (*_TENSOR, ("param", "ad")), Units="mm^2/s"),
    "colorfa": _map("Colour FA: RGB = FA x |principal eigenvector| along world R-L, A-P, S-I",
                    (*_TENSOR, ("param", "colorfa"))),
    "v1": _map("Principal eigenvector in the image's voxel axes (i, j, k)", (*_TENSOR, ("param", "v1"))),
    "evals": _map("Tensor eigenvalues, largest first", (*_TENSOR, ("param", "evals")), Units="mm^2/s"),
    "tensor_qc": Output("figures", "qc", ".png", (("desc", "tensor"),), "QC figure: FA and colour FA, three planes"),
    # registration and ROIs
    "registration": Output("xfm", "registration", "", (),
                           "Subject-to-MNI transforms (affine text/npy, SyN fields) and registration.json"),
    "registration_qc": Output("figures", "qc", ".png", (("desc", "registration"),),
                              "QC figure: template white-matter outline over the subject FA"),
    "template_wm": _map("MNI152 2009 white-matter probability warped to the subject",
                        (*_DWI, ("label", "WM"), ("desc", "template")), "probseg"),
    "roi_labels": _map("Atlas ROIs in subject space: 1 brainstem, 2/3 precentral L/R, 4/5 internal capsule L/R, "
                       "6/7 cerebral peduncle L/R, 8 midline, 9/10 postcentral gyrus and supplementary motor area "
                       "L/R (with 2/3 the sensorimotor cortex, where the CST ends), 11 thalamus (no CST streamline "
                       "touches it)", (*_DWI, ("desc", "cstrois")), "dseg"),
    "coverage": Output("dwi", "qc", ".json", (("desc", "roicoverage"),),
                       "Field-of-view coverage of the atlas ROIs and of the template CST (MNI extent imaged, flags)"),
    # tractography and CST
    "tractogram": _map("Whole-brain tractogram (TrackVis .trk, RAS+ mm)", (*_DWI, ("desc", "wholebrain")),
                       "streamlines", ".trk"),
    "cst_left": _map("Left corticospinal tract streamlines (RAS+ mm, oriented inferior to superior)",
                     (*_DWI, ("bundle", "CSTleft")), "streamlines", ".trk"),
    "cst_right": _map("Right corticospinal tract streamlines (RAS+ mm, oriented inferior to superior)",
                      (*_DWI, ("bundle", "CSTright")), "streamlines", ".trk"),
    "cst_left_density": _map("Streamlines of the left CST per voxel",
                             (*_DWI, ("bundle", "CSTleft"), ("param", "density"))),
    "cst_right_density": _map("Streamlines of the right CST per voxel",
                              (*_DWI, ("bundle", "CSTright"), ("param", "density"))),
    "profiles": _map("Along-tract profiles of the CSTs: one row per subject, session, side, node, metric",
                     (*_DWI, ("bundle", "CST")), "tractprofile", ".tsv"),
    "summary": _map("Per-side CST summary metrics, laterality indices and flags (one row)",
                    (("desc", "summary"),), "metrics", ".tsv"),
    # written after the workflow, by csttool_nipype.reports
    "report": Output("", "report", ".html", (), "Self-contained QC report of the subject"),
}

#: The registration's own record inside the ``registration`` folder (quality numbers and the
#: grids and timings; written by :mod:`csttool_nipype.science.transforms` with the transforms).
REGISTRATION_RECORD = "registration.json"

#: Outputs the subject workflow writes (the report is written after it, from these).
WORKFLOW_OUTPUTS = tuple(key for key in OUTPUTS if key != "report")


def path(subject_dir, key: str, subject: str, session: str | None = None, sidecar: bool = False) -> Path:
    """Where output ``key`` of ``subject`` (``session``) goes in ``subject_dir``.

    ``sidecar``: the path of its JSON sidecar instead.
    """
    out = OUTPUTS[key]
    name = out.name(subject, session, ".json" if sidecar else None)
    return Path(subject_dir, out.folder, name) if out.folder else Path(subject_dir, name)


def find(subject_dir, key: str, sidecar: bool = False) -> Path | None:
    """Output ``key`` (or its JSON sidecar) in a subject (session) folder; None when absent.

    Any subject and session label matches (a batch's staging folder is not named after
    its subject); with several matches the first in sorted order is returned.
    """
    out = OUTPUTS[key]
    folder = Path(subject_dir, out.folder) if out.folder else Path(subject_dir)
    if out.is_folder:
        found = folder / out.suffix
        return found if found.is_dir() else None
    pattern = out.pattern if not sidecar else f"*_{out.stem}.json"
    matches = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
    return matches[0] if matches else None
