"""``csttool-nipype BIDS_DIR OUTPUT_DIR participant|group``: the BIDS-App entry point.

``participant`` runs the same batch engine as ``csttool batch --bids-dir`` (done
markers, locks, promotion, config hash, logs), locally or through SLURM; several
participant-level runs may write into one OUTPUT_DIR at once (SLURM array jobs do).
``group`` rebuilds the cohort outputs from what is on disk. Argument parsing and
checks only: the work happens in :mod:`csttool_nipype.cohort` and the engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from ..errors import InputError, check_writable_dir
from ..execution import SLURM_PLUGINS
from .logging_setup import setup_logging
from .main import add_pipeline_options, explicit_options
from .options import (
    ArgumentParser, absolute_paths, add_timeout_option, check_pipeline_options, positive_float, positive_int, resolve_timeout,
    read_filters, run_command,
)
from .plugin_options import add_cpu_options, add_plugin_options, cpus_from_args, plugin_from_args

LOGGER = logging.getLogger("csttool-nipype")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="csttool-nipype", description="Corticospinal tract assessment from diffusion MRI, as a BIDS App.",
        epilog="Exit status: 0 all selected subjects succeeded (or were already done), 1 some failed, "
               "2 bad arguments.")
    parser.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="the derivatives dataset (outside bids_dir, or under its derivatives/ folder)")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: process subjects; group: cohort table and report from OUTPUT_DIR")
    parser.add_argument("--version", action="version", version=f"csttool-nipype {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                     metavar="LABEL", help="subjects to process (with or without 'sub-'; default: all)")
    sel.add_argument("--session-label", "--session_label", dest="session_label", nargs="+", metavar="LABEL",
                     help="sessions to process (with or without 'ses-'; default: all)")
    sel.add_argument("--bids-filter-file", "--bids_filter_file", dest="bids_filter_file", type=Path, metavar="FILE",
                     help='JSON of pybids entity filters for the DWI query, e.g. {"dwi": {"acquisition": "hardi"}}')
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
                     action="store_true",
                     help="index a BIDS-like tree without checking its dataset_description.json")
    sel.add_argument("--bids-database-dir", "--bids_database_dir", dest="bids_database_dir", type=Path, metavar="DIR",
                     help="keep pybids' index of bids_dir in DIR and reuse it (large datasets, array jobs)")

    ex = parser.add_argument_group("execution (not part of the config hash)")
    ex.add_argument("-w", "--work-dir", "--work_dir", dest="work_dir", type=Path, metavar="WORK_DIR",
                    help="Nipype caches in WORK_DIR/sub-XX (kept, so a rerun resumes; must not be inside "
                         "bids_dir). Default: OUTPUT_DIR/sub-XX/_work, removed after success")
    add_cpu_options(ex, "--nthreads", "--n-cpus", "--n_cpus")
    ex.add_argument("--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=positive_int, default=None,
                    help="threads per process for NumPy/BLAS (default: a subject's share of --nprocs; 1 on SLURM)")
    ex.add_argument("--mem-gb", "--mem_gb", dest="mem_gb", type=positive_float, default=None, metavar="G",
                    help="memory limit per subject for MultiProc, or largest request per SLURM job (GB)")
    add_plugin_options(ex)
    add_timeout_option(ex)
    ex.add_argument("--verify", action="store_true",
                    help="before skipping a done subject, check every output's SHA-256 (default: size only)")
    ex.add_argument("--stop-on-first-crash", "--stop_on_first_crash", dest="stop_on_first_crash",
                    action="store_true",
                    help="stop a subject's workflow at its first failing node (default: let its independent "
                         "branches finish, so that a rerun resumes from them)")
    ex.add_argument("--write-graph", "--write_graph", dest="write_graph", action="store_true",
                    help="draw each subject's workflow (colored and flat; dot, png, svg) into "
                         "OUTPUT_DIR/sub-XX/figures")
    add_pipeline_options(parser, explicit_only=True)
    return parser


def check_locations(bids_dir: Path, output_dir: Path, work_dir: Path | None = None) -> None:
    """Refuse an output folder equal to or inside the raw dataset (a ``derivatives/<name>``
    subfolder excepted), and a work folder anywhere inside it."""
    bids, out = bids_dir.resolve(), output_dir.resolve()
    derivatives = bids / "derivatives"
    if out == bids:
        raise InputError(output_dir, "output folder must not be the BIDS folder itself")
    if out == derivatives:
        raise InputError(output_dir, "use a folder of its own under derivatives/, e.g. derivatives/csttool")
    if bids in out.parents and derivatives not in out.parents:
        raise InputError(output_dir, f"output folder is inside the raw BIDS tree {bids_dir}; "
                                     "use a folder outside it or under its derivatives/")
    if work_dir is not None:
        work = work_dir.resolve()
        if work == bids or bids in work.parents:
            raise InputError(work_dir, f"work folder must not be inside the BIDS folder {bids_dir}")


def check_bids_dir(bids_dir: Path, skip_validation: bool) -> None:
    """The raw dataset exists and, unless skipped, has a readable ``dataset_description.json``."""
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder not found")
    if skip_validation:
        return
    description = bids_dir / "dataset_description.json"
    try:
        content = json.loads(description.read_text())
    except FileNotFoundError:
        raise InputError(bids_dir, "not a BIDS dataset: no dataset_description.json "
                                   "(--skip-bids-validation indexes a BIDS-like tree anyway)") from None
    except (OSError, ValueError) as exc:
        raise InputError(description, f"not readable JSON ({exc})") from None
    if not isinstance(content, dict) or "BIDSVersion" not in content:
        raise InputError(description, "has no BIDSVersion (--skip-bids-validation to go on anyway)")


def participant(args) -> int:
    """Select subjects, make OUTPUT_DIR a derivatives dataset, run the cohort."""
    from ..bids import discover_bids, write_dataset_description
    from ..cohort import CohortOptions, run_cohort

    plugin, plugin_args = plugin_from_args(args)
    slurm = plugin in SLURM_PLUGINS
    specs = discover_bids(args.bids_dir, args.participant_label, args.session_label,
                          bids_filters=read_filters(args.bids_filter_file), database_dir=args.bids_database_dir)
    if not specs:
        raise InputError(args.bids_dir, "no subjects with a DWI run match the selection")
    nprocs, subjects_at_once = cpus_from_args(args, plugin, len(specs))   # usage errors before anything is written
    check_writable_dir(args.output_dir)
    write_dataset_description(args.output_dir, source_dir=args.bids_dir)
    execution = {"plugin": plugin, "plugin_args": plugin_args, "mem_gb": args.mem_gb,
                 "stop_on_first_crash": args.stop_on_first_crash, "write_graph": args.write_graph}
    return run_cohort(specs, explicit_options(args), args.output_dir, CohortOptions(
        nprocs=nprocs, subjects_at_once=subjects_at_once, timeout_minutes=resolve_timeout(args.timeout_minutes, slurm),
        execution=execution,
        work_root=str(args.work_dir.absolute()) if args.work_dir else None,
        threads_per_job=args.omp_nthreads or (1 if slurm else None), verify=args.verify))


def group(args) -> int:
    """Rebuild the cohort outputs of OUTPUT_DIR from disk."""
    from ..reports import build_cohort_reports

    if not args.output_dir.is_dir():
        raise InputError(args.output_dir, "output folder not found: run the participant level first")
    check_writable_dir(args.output_dir)
    paths = build_cohort_reports(args.output_dir)
    LOGGER.info("cohort table: %s; report: %s", paths["metrics"], paths.get("report"))
    return 0 if "report" in paths else 1


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_pipeline_options(parser, explicit_options(args))   # before anything is written
    absolute_paths(args, "bids_dir", "output_dir", "work_dir", "bids_filter_file")
    setup_logging(args.verbose, quiet=args.analysis_level == "participant")
    return run_command(_dispatch, args, LOGGER)


def _dispatch(args) -> int:
    check_bids_dir(args.bids_dir, args.skip_bids_validation)
    check_locations(args.bids_dir, args.output_dir, args.work_dir)
    return group(args) if args.analysis_level == "group" else participant(args)


if __name__ == "__main__":
    sys.exit(main())
