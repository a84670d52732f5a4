"""``csttool-nipype BIDS_DIR OUTPUT_DIR participant``: BIDS-App style entry point.

This first version runs the participant level subject by subject; the batch engine
(parallel, resumable, isolated subjects) and the ``group`` level come with the batch
and report features.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
from ..errors import CsttoolError, InputError
from .logging_setup import setup_logging
from .main import add_execution_options, add_pipeline_options, execution_config_from_args, pipeline_config_from_args

LOGGER = logging.getLogger("csttool-nipype")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csttool-nipype", description="CST assessment as a BIDS App.")
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("analysis_level", choices=("participant",))
    parser.add_argument("--participant-label", "--participant_label", nargs="+", default=None,
                        help="subjects to process (with or without 'sub-')")
    parser.add_argument("--version", action="version", version=f"csttool-nipype {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    add_pipeline_options(parser)
    add_execution_options(parser)
    return parser


def discover(bids_dir: Path, labels=None) -> list[tuple[str, str | None, Path]]:
    """(subject, session, dwi NIfTI) for every DWI run in a BIDS(-like) tree, via pybids."""
    from bids import BIDSLayout

    if not bids_dir.is_dir():
        raise InputError(bids_dir, "is not a folder")
    layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False, index_metadata=False)
    query = {"suffix": "dwi", "extension": [".nii", ".nii.gz"], "return_type": "object"}
    if labels:
        query["subject"] = [label.removeprefix("sub-") for label in labels]
    runs = [(f"sub-{f.entities['subject']}", f.entities.get("session"), Path(f.path)) for f in layout.get(**query)]
    if not runs:
        raise InputError(bids_dir, "no diffusion runs (sub-*/[ses-*/]dwi/*_dwi.nii[.gz]) found")
    return runs


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ..run import run_subject
    from ..workflows.base import DWIInputs

    failed = []
    try:
        runs = discover(args.bids_dir, args.participant_label)
    except CsttoolError as exc:
        LOGGER.error("%s", exc)
        return 1
    for subject, session, nifti in runs:
        try:
            run_subject(subject, DWIInputs(nifti=str(nifti)), args.output_dir, pipeline_config_from_args(args),
                        execution_config_from_args(args), session=session)
        except CsttoolError as exc:
            LOGGER.error("%s: FAILED: %s", subject, exc)
            failed.append(subject)
    LOGGER.info("%d run(s), %d failed", len(runs), len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
