"""The config object is the single source of defaults and of the config hash."""

import pytest

from csttool_nipype.cli.main import build_parser, pipeline_config_from_args
from csttool_nipype.config import PipelineConfig


def test_hash_is_stable_and_tracks_every_option():
    base = PipelineConfig()
    assert base.config_hash() == PipelineConfig().config_hash()
    changed = {
        "denoise_method": "nlmeans", "gibbs": False, "motion_correction": False, "b0_threshold": 100.0,
        "tensor_fit_method": "OLS", "seed": 7, "mask_median_radius": 3,
    }
    hashes = {base.replace(**{k: v}).config_hash() for k, v in changed.items()}
    assert base.config_hash() not in hashes
    assert len(hashes) == len(changed)


def test_from_dict_rejects_unknown_and_bad_values():
    assert PipelineConfig.from_dict({"denoise_method": "none"}).denoise_method == "none"
    with pytest.raises(ValueError, match="unknown option.*denoise"):
        PipelineConfig.from_dict({"denoise": "none"})
    with pytest.raises(ValueError, match="denoise_method must be one of"):
        PipelineConfig(denoise_method="bm4d")


def test_cli_defaults_come_from_the_config_object():
    args = build_parser().parse_args(["run", "--dwi", "x.nii.gz", "--out", "o"])
    assert pipeline_config_from_args(args) == PipelineConfig()
    args = build_parser().parse_args(
        ["run", "--dwi", "x.nii.gz", "--out", "o", "--denoise_method", "nlmeans", "--no-gibbs",
         "--no-motion-correction"])
    cfg = pipeline_config_from_args(args)
    assert (cfg.denoise_method, cfg.gibbs, cfg.motion_correction) == ("nlmeans", False, False)


def test_stages_pull_in_what_they_need_and_no_more():
    from csttool_nipype.config import STAGES, resolve_stages

    assert resolve_stages(["metrics"]) == ("import", "preprocess", "tensor", "register", "cst", "metrics")
    assert resolve_stages(["track"]) == ("import", "preprocess", "tensor", "track")
    assert resolve_stages(list(STAGES)) == tuple(STAGES)
    with pytest.raises(ValueError, match="unknown stage"):
        resolve_stages(["tracts"])
