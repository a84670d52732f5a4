"""Every pipeline option has one home and reaches the code that uses it.

For each :class:`PipelineConfig` field the tests take a valid non-default value (from the
field's choice list, or derived from its default), and check that

* ``csttool run`` and ``csttool batch`` have a flag that sets it (and a manifest key does);
* building the subject workflow with it changes the workflow: the new value arrives at a
  node input (or, for switches and stage lists, the set of nodes changes);
* library functions in ``csttool_nipype.science`` whose parameters stand for a pipeline
  option default to the pipeline's value, or have no default.

A field added without being wired fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import fields

import pytest

from csttool_nipype import config as cfg
from csttool_nipype.cli.main import build_parser
from csttool_nipype.config import PipelineConfig
from csttool_nipype.workflows.base import DWIInputs, init_subject_wf

DEFAULT = PipelineConfig()
CHOICES = {
    "denoise_method": cfg.DENOISE_METHODS, "preproc_region": cfg.PREPROC_REGIONS,
    "tensor_fit_method": cfg.TENSOR_FIT_METHODS, "tracking_method": cfg.TRACKING_METHODS,
    "cst_clip_end": cfg.CLIP_ENDS, "cst_midline": cfg.MIDLINE_RULES, "metrics_weighting": cfg.METRICS_WEIGHTINGS,
}
#: Fields whose effect is which nodes exist, not a node input value.
STRUCTURAL = {"gibbs", "motion_correction", "stages", "preproc_region"}


def other_value(name: str):
    """A valid value different from the default."""
    default = getattr(DEFAULT, name)
    if name in CHOICES:
        return next(c for c in CHOICES[name] if c != default)
    if isinstance(default, bool):
        return not default
    if name == "gibbs_slice_axis":
        return 1
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return round(default * 1.25 + 0.1, 6)
    if name == "stages":
        return cfg.STAGES[:-1]
    raise AssertionError(f"no test value for option {name}: add one here")


def test_every_field_has_a_test_value_and_is_valid():
    for f in fields(PipelineConfig):
        PipelineConfig(**{f.name: other_value(f.name)})


def _flag_for(parser, dest):
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {}
    for name in ("run", "batch"):
        flags[name] = [a for a in sub.choices[name]._actions if a.dest == dest]
    return flags


@pytest.mark.parametrize("name", [f.name for f in fields(PipelineConfig)])
def test_every_option_is_a_flag_of_run_and_batch(name):
    flags = _flag_for(build_parser(), name)
    assert flags["run"], f"csttool run has no flag for {name}"
    assert flags["batch"], f"csttool batch has no flag for {name}"
    # the flag parses to the option's value
    action = flags["run"][0]
    value = other_value(name)
    argv = ["run", "--dwi", "x.nii.gz", "--out", "o"]
    if isinstance(value, bool):
        if action.const is value:
            argv.append(action.option_strings[0])
    elif isinstance(value, tuple):
        argv += [action.option_strings[0], *value]
    else:
        argv += [action.option_strings[0], str(value)]
    args = build_parser().parse_args(argv)
    got = getattr(args, name)
    assert (tuple(got) if isinstance(value, tuple) else got) == value


def _node_inputs(wf) -> dict:
    out = {}
    for node in wf._get_all_nodes():
        values = node.inputs.get()
        out[node.fullname] = {k: v for k, v in values.items() if k not in ("num_threads",)}
    return out


def _contains(value, wanted) -> bool:
    if isinstance(value, dict):
        return any(_contains(v, wanted) for v in value.values())
    if isinstance(value, (list, tuple)) and not isinstance(wanted, (list, tuple)):
        return any(_contains(v, wanted) for v in value)
    if isinstance(wanted, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return abs(value - wanted) < 1e-9
    return value == wanted


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reach")
    (tmp / "dwi.nii.gz").touch()   # the workflow is only built, never run
    inputs = DWIInputs(nifti=str(tmp / "dwi.nii.gz"))
    return tmp, inputs, _node_inputs(init_subject_wf("sub-01", inputs, str(tmp / "out"), DEFAULT))


@pytest.mark.parametrize("name", [f.name for f in fields(PipelineConfig)])
def test_every_option_reaches_the_workflow(name, baseline):
    tmp, inputs, before = baseline
    value = other_value(name)
    after = _node_inputs(init_subject_wf("sub-01", inputs, str(tmp / "out"),
                                         DEFAULT.replace(**{name: value})))
    if name in STRUCTURAL:
        assert set(after) != set(before), f"{name}={value!r} did not change the workflow's nodes"
        return
    changed = {(node, key): v for node, values in after.items() for key, v in values.items()
               if node in before and before[node].get(key) != v}
    assert changed, f"{name}={value!r} changed no node input: the option is not wired"
    assert any(_contains(v, value) for v in changed.values()), (
        f"{name}={value!r} changed {sorted(changed)} but none holds the value")


def test_manifest_accepts_every_option_and_the_walkthrough_switch():
    for f in fields(PipelineConfig):
        value = other_value(f.name)
        got = PipelineConfig.from_dict({f.name: list(value) if isinstance(value, tuple) else value})
        assert getattr(got, f.name) == value
    off = PipelineConfig.from_dict({"preprocessing": False})
    assert (off.denoise_method, off.gibbs, off.motion_correction) == ("none", False, False)
    on = PipelineConfig.from_dict({"preprocessing": True, "denoise_method": "patch2self"})
    assert (on.denoise_method, on.gibbs, on.motion_correction) == ("patch2self", True, True)
    with pytest.raises(ValueError, match="preprocessing must be true or false"):
        PipelineConfig.from_dict({"preprocessing": "yes"})
    with pytest.raises(ValueError, match="gibbs must be true or false"):
        PipelineConfig.from_dict({"gibbs": "no"})


# ------------------------------------------------------------------ library defaults

#: Parameter names in science functions that stand for a pipeline option, by module where
#: the name means something else elsewhere (bundles: the CST length and clip rules).
PARAMETER_FIELDS = {
    "b0_threshold": "b0_threshold", "fit_method": "tensor_fit_method", "step_size_mm": "step_size_mm",
    "fa_threshold": "fa_threshold", "max_angle_deg": "max_angle_deg", "max_length_mm": "max_length_mm",
    "template_resolution_mm": "template_resolution_mm", "median_radius": "mask_median_radius",
    "numpass": "mask_numpass", "weighting": "metrics_weighting", "seed_density": "seed_density",
    "tracking_method": "tracking_method", "denoise_method": "denoise_method",
}
MODULE_FIELDS = {
    "csttool_nipype.science.bundles": {"min_length_mm": "cst_min_length_mm", "clip_end": "cst_clip_end",
                                       "midline": "cst_midline"},
    "csttool_nipype.science.tracking": {"min_length_mm": "min_length_mm", "method": "tracking_method"},
    "csttool_nipype.science.preprocess": {"method": "denoise_method"},
    "csttool_nipype.science.profiles": {"min_streamlines": "min_streamlines"},
}


def _science_functions():
    import csttool_nipype.science as science

    for info in pkgutil.iter_modules(science.__path__):
        module = importlib.import_module(f"csttool_nipype.science.{info.name}")
        for fname, func in inspect.getmembers(module, inspect.isfunction):
            if func.__module__ == module.__name__:
                yield module.__name__, fname, func


def test_science_defaults_equal_the_pipeline_defaults_or_are_absent():
    wrong = []
    for module, fname, func in _science_functions():
        names = {**PARAMETER_FIELDS, **MODULE_FIELDS.get(module, {})}
        for param in inspect.signature(func).parameters.values():
            field = names.get(param.name)
            if field is None or param.default is inspect.Parameter.empty:
                continue
            if param.default != getattr(DEFAULT, field):
                wrong.append(f"{module}.{fname}({param.name}={param.default!r}) but the pipeline's "
                             f"{field} is {getattr(DEFAULT, field)!r}")
    assert not wrong, "\n".join(wrong)
