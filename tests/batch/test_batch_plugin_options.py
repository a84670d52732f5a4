"""``csttool batch --plugin/--plugin-args``: the BIDS-App's option definitions and parsing, and bad
values are usage errors (one line, exit code 2, nothing written)."""

import json
import shutil

import pytest

from csttool_nipype.cli import bids_app, main as cli_main
from csttool_nipype.execution import PLUGINS


def _options(parser):
    return {a.dest: a for a in parser._actions}


def test_batch_and_bids_app_share_the_plugin_options():
    batch = cli_main.build_parser()._subparsers._group_actions[0].choices["batch"]
    mine, theirs = _options(batch), _options(bids_app.build_parser())
    assert tuple(mine["plugin"].choices) == tuple(theirs["plugin"].choices) == PLUGINS
    assert mine["plugin_args"].option_strings == theirs["plugin_args"].option_strings
    assert mine["plugin"].help == theirs["plugin"].help


@pytest.mark.parametrize("value, problem", [
    ("{not json", "not a JSON object or a JSON file"),
    ("[1, 2]", "must be a JSON object"),
    ("FILE", "is not one of"),
])
def test_bad_plugin_args_are_one_line_and_exit_2(value, problem, tmp_path, capsys):
    if value == "FILE":
        value = str(tmp_path / "plugin.json")
        (tmp_path / "plugin.json").write_text(json.dumps({"plugin": "Condor", "plugin_args": {}}))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-01", "nifti": str(tmp_path / "dwi.nii.gz")}]}))
    out = tmp_path / "OUT"
    code = cli_main.main(["batch", "--manifest", str(manifest), "--out", str(out), "--plugin-args", value])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and problem in lines[0] and "Traceback" not in captured.err, captured.err
    assert not out.exists(), "nothing is written for a usage error"


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="sbatch is installed here")
def test_slurm_without_sbatch_is_a_usage_error(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-01", "nifti": str(tmp_path / "dwi.nii.gz")}]}))
    code = cli_main.main(["batch", "--manifest", str(manifest), "--out", str(tmp_path / "OUT"), "--plugin", "SLURM"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sbatch" in err[0]
