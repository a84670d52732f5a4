"""The phantom on disk: BIDS raw data and its ground truth as a BIDS derivative."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from csttool_nipype.derivatives import prefixed
from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.sims.model import COMPARTMENTS, FIXED_AXES_MNI, S0_CSF, S0_GM, S0_WM, Phantom, PhantomSpec
from csttool_nipype.sims.phantom import make_phantom

logger = logging.getLogger(__name__)

#: The generator named in the raw data's sidecars, dataset description and README.
GENERATOR = "csttool_nipype.sims"



_TRUTH_FILES = {
    "brain_mask": "space-dwi_desc-brain_mask",
    "wm": "space-dwi_label-WM_probseg",
    "gm": "space-dwi_label-GM_probseg",
    "csf": "space-dwi_label-CSF_probseg",
    "f_cst_left": "space-dwi_label-CSTleft_probseg",
    "f_cst_right": "space-dwi_label-CSTright_probseg",
    "f_callosum": "space-dwi_label-callosum_probseg",
    "f_wm_other": "space-dwi_label-WMother_probseg",
    "cst_left": "space-dwi_desc-CSTleft_mask",
    "cst_right": "space-dwi_desc-CSTright_mask",
    "callosum": "space-dwi_desc-callosum_mask",
    "lesion": "space-dwi_desc-lesion_mask",
    "fa": "space-dwi_model-truth_param-fa_dwimap",
    "md": "space-dwi_model-truth_param-md_dwimap",
    "v1_world": "space-dwi_model-truth_param-v1world_dwimap",
}

_BIDS_VERSION = "1.9.0"


def _write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    data_ = array.astype(np.uint8) if array.dtype == bool else array
    img = nib.Nifti1Image(data_, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def _sidecar(phantom: Phantom) -> dict:
    """dcm2niix-like JSON sidecar; phase encoding along the in-plane axis closest to A-P."""
    rot = phantom.affine[:3, :3] / np.linalg.norm(phantom.affine[:3, :3], axis=0)
    pe_axis = int(np.argmax(np.abs(rot[1, :2])))
    polarity = "-" if rot[1, pe_axis] > 0 else ""   # anterior -> posterior blips
    zooms = np.linalg.norm(phantom.affine[:3, :3], axis=0)
    n_pe = phantom.dwi.shape[pe_axis]
    readout = 0.05
    return {
        "Modality": "MR",
        "Manufacturer": "csttool-phantom",
        "ManufacturersModelName": "digital phantom",
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "2D",
        "SeriesDescription": "dwi_phantom",
        "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
        "EchoTime": 0.08,
        "RepetitionTime": 8.0,
        "FlipAngle": 90,
        "SliceThickness": float(zooms[2]),
        "PhaseEncodingDirection": "ijk"[pe_axis] + polarity,
        "SliceEncodingDirection": "k",
        "TotalReadoutTime": readout,
        "EffectiveEchoSpacing": readout / max(n_pe - 1, 1),
        "ConversionSoftware": GENERATOR,
    }


def _truth_record(phantom: Phantom) -> dict:
    return {
        "pose": phantom.pose.tolist(),
        "pose_description": "rigid 4x4, MNI mm -> subject world RAS+ mm",
        "motion": phantom.motion.tolist(),
        "motion_description": "per volume rigid 4x4 in world mm: a point x of the reference head "
                              "appears at motion[n] @ x in volume n",
        "sigma": phantom.sigma,
        "spec": dataclasses.asdict(phantom.spec),
        "s0": {"wm": S0_WM, "gm": S0_GM, "csf": S0_CSF},
        "compartments": [dataclasses.asdict(c) | {"fa": c.fa, "md": c.md} for c in COMPARTMENTS],
        "fixed_axes_mni": FIXED_AXES_MNI,
        "axes_description": "cst_left/right follow the normalised gradient of a flow potential through their "
                            "corridor, from the medulla to the precentral cortex (MNI frame, see v1world); "
                            "wm_other turns from anterior-posterior to the brainstem's axis inside the brainstem",
        "symmetric": "left-right symmetric head (atlas maps averaged with their mirror images)",
        "units": {"diffusivity": "mm^2/s", "bval": "s/mm^2", "length": "mm"},
        "fa_md_definition": "FA/MD/v1 of the fraction-weighted mean tensor sum_k f_k D_k / sum_k f_k",
    }


def _ensure_description(root: Path, name: str, dataset_type: str) -> None:
    path = root / "dataset_description.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        content = {"Name": name, "BIDSVersion": _BIDS_VERSION, "DatasetType": dataset_type,
                   "GeneratedBy": [{"Name": "csttool-phantom", "Description": GENERATOR}]}
        _write_json(path, content)


def write_phantom(phantom: Phantom, out_dir, subject: str = "sub-01", session: str | None = None) -> dict[str, Path]:
    """Write one phantom subject as BIDS raw data plus its ground truth.

    Layout::

        {out}/sub-01[/ses-x]/dwi/sub-01[_ses-x]_dwi.{nii.gz,bval,bvec,json}
        {out}/derivatives/phantom-truth/sub-01[/ses-x]/dwi/sub-01[_ses-x]_<entities>.nii.gz
        {out}/derivatives/phantom-truth/sub-01[/ses-x]/dwi/sub-01[_ses-x]_desc-truth_phantom.json

    The ``.bvec`` holds the b-vectors in the FSL convention
    (:func:`gradients.voxel_to_fsl`). Truth maps share the dwi's grid and affine. Both
    dataset roots get a ``dataset_description.json`` if they have none.

    Parameters
    ----------
    phantom : Phantom
    out_dir : path-like
        BIDS dataset root.
    subject, session : str
        Labels, with or without the ``sub-``/``ses-`` prefix.

    Returns
    -------
    dict of str -> Path
        ``dwi``, ``bval``, ``bvec``, ``json``, ``truth_json`` and one key per truth map
        (same keys as :attr:`Phantom.truth`).
    """
    out = Path(out_dir)
    sub = prefixed(subject, "sub-")
    ses = None if session is None else prefixed(session, "ses-")
    stem = f"{sub}_{ses}" if ses else sub
    rel = Path(sub) / ses / "dwi" if ses else Path(sub) / "dwi"
    raw_dir, truth_root = out / rel, out / "derivatives" / "phantom-truth"
    truth_dir = truth_root / rel
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    _ensure_description(out, "csttool phantom", "raw")
    _ensure_description(truth_root, "csttool phantom ground truth", "derivative")

    paths = {"dwi": _save_nifti(phantom.dwi, phantom.affine, raw_dir / f"{stem}_dwi.nii.gz")}
    paths["bval"] = raw_dir / f"{stem}_dwi.bval"
    paths["bval"].write_text(" ".join(f"{b:g}" for b in phantom.bvals) + "\n")
    fsl = gradients.voxel_to_fsl(phantom.bvecs_voxel, phantom.affine)
    paths["bvec"] = raw_dir / f"{stem}_dwi.bvec"
    paths["bvec"].write_text("\n".join(" ".join(f"{v:.8f}" for v in row) for row in fsl.T) + "\n")
    paths["json"] = _write_json(raw_dir / f"{stem}_dwi.json", _sidecar(phantom))
    for key, array in phantom.truth.items():
        name = _TRUTH_FILES.get(key, f"space-dwi_desc-{key.replace('_', '')}truth_maps")
        paths[key] = _save_nifti(array, phantom.affine, truth_dir / f"{stem}_{name}.nii.gz")
    paths["truth_json"] = _write_json(truth_dir / f"{stem}_desc-truth_phantom.json", _truth_record(phantom))
    return paths


def write_bids_dataset(out_dir, n_subjects: int, spec: PhantomSpec = PhantomSpec(), seed: int = 0) -> Path:
    """Write ``n_subjects`` phantom subjects (seeds ``seed + i``) as a BIDS dataset.

    Subjects are ``sub-01`` ... (3 digits from 100 subjects on); each differs in pose,
    motion and noise through its seed. Writes ``dataset_description.json``,
    ``participants.tsv`` (with each subject's seed and lesion side) and a README.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if n_subjects < 1:
        raise InputError(out_dir, "number of phantom subjects must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_description(out, "csttool phantom", "raw")
    (out / "README").write_text(
        f"Digital diffusion MRI phantom written by {GENERATOR}.\n"
        "Ground truth: derivatives/phantom-truth.\n")
    width = 3 if n_subjects >= 100 else 2
    rows = ["participant_id\tseed\tlesion_side"]
    for i in range(n_subjects):
        sub = f"sub-{i + 1:0{width}d}"
        sub_spec = dataclasses.replace(spec, seed=seed + i)
        write_phantom(make_phantom(sub_spec), out, subject=sub)
        rows.append(f"{sub}\t{seed + i}\t{spec.lesion.side if spec.lesion else 'n/a'}")
        logger.info("phantom %s written (%d/%d)", sub, i + 1, n_subjects)
    (out / "participants.tsv").write_text("\n".join(rows) + "\n")
    return out
