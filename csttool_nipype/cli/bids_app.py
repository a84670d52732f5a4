"""``csttool-nipype BIDS_DIR OUTPUT_DIR participant|group``: the BIDS-App entry point.

``participant`` runs the same batch engine as ``csttool batch --bids-dir`` (done
markers, locks, promotion, config hash, logs); ``group`` rebuilds the cohort table
from what is on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from ..errors import CsttoolError, InputError
from .logging_setup import setup_logging
from .main import add_pipeline_options, explicit_options

LOGGER = logging.getLogger("csttool-nipype")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csttool-nipype", description="CST assessment from diffusion MRI, as a BIDS App.")
    parser.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives go (not inside bids_dir)")
    parser.add_argument("analysis_level", choices=("participant", "group"))
    parser.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                        help="subjects to process (with or without 'sub-')")
    parser.add_argument("--session-label", "--session_label", dest="session_label", nargs="+")
    parser.add_argument("--bids-filter-file", dest="bids_filter_file", type=Path)
    parser.add_argument("--nprocs", "--n-procs", "--nthreads", dest="nprocs", type=int, default=1,
                        help="subjects at once")
    parser.add_argument("--timeout-minutes", dest="timeout_minutes", type=float, default=120.0)
    parser.add_argument("--skip-bids-validation", action="store_true",
                        help="accepted for compatibility: the dataset is indexed without validation anyway")
    parser.add_argument("--version", action="version", version=f"csttool-nipype {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    add_pipeline_options(parser, explicit_only=True)
    return parser


def check_locations(bids_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder equal to or inside the raw dataset (derivatives/ excepted)."""
    bids, out = bids_dir.resolve(), output_dir.resolve()
    if out == bids:
        raise InputError(output_dir, "output folder must not be the BIDS folder itself")
    if bids in out.parents and (bids / "derivatives") not in [out, *out.parents]:
        raise InputError(output_dir, f"output folder is inside the raw BIDS tree {bids_dir}; "
                                     "use a folder outside it or under its derivatives/")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ..reports.aggregate import write_batch_metrics

    try:
        check_locations(args.bids_dir, args.output_dir)
        if args.analysis_level == "group":
            path = write_batch_metrics(args.output_dir)
            LOGGER.info("cohort table: %s", path)
            return 0
        from ..batch.subjects import discover_bids
        from ..cohort import CohortOptions, run_cohort
        from ..workflows.outputs import write_dataset_description

        filters = None
        if args.bids_filter_file:
            try:
                filters = json.loads(args.bids_filter_file.read_text()).get("dwi", {})
            except (OSError, ValueError, AttributeError) as exc:
                raise InputError(args.bids_filter_file, f"not a readable BIDS filter file ({exc})") from None
        specs = discover_bids(args.bids_dir, args.participant_label, args.session_label, bids_filters=filters)
        if not specs:
            raise InputError(args.bids_dir, "no subjects with a DWI run match the selection")
        write_dataset_description(args.output_dir)
        return run_cohort(specs, explicit_options(args), args.output_dir,
                          CohortOptions(nprocs=args.nprocs, timeout_minutes=args.timeout_minutes))
    except CsttoolError as exc:
        LOGGER.error("%s", exc)
        return 2 if isinstance(exc, InputError) else 1


if __name__ == "__main__":
    sys.exit(main())
