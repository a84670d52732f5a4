"""``csttool``: command-line entry point (parsing only; the work happens elsewhere)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
from ..config import (
    CLIP_ENDS, DENOISE_METHODS, METRICS_WEIGHTINGS, MIDLINE_RULES, PREPROC_REGIONS, PREPROCESSING_OFF,
    PREPROCESSING_ON, STAGES, TENSOR_FIT_METHODS, TRACKING_METHODS, ExecutionConfig, PipelineConfig, available_cpus,
)
from .logging_setup import setup_logging
from .options import (
    ArgumentParser, absolute_paths, add_timeout_option, check_pipeline_options, positive_float, positive_int, resolve_timeout,
    read_filters, run_command,
)
from .plugin_options import add_cpu_options, add_plugin_options, cpus_from_args, plugin_from_args

LOGGER = logging.getLogger("csttool")


def add_pipeline_options(parser: argparse.ArgumentParser, explicit_only: bool = False) -> None:
    """Flags that fill :class:`PipelineConfig` (defaults come from the config object).

    With ``explicit_only`` the flags have no defaults (argparse.SUPPRESS), so a batch
    can tell which options the user typed and let them override a manifest's.
    """
    d = PipelineConfig()
    if explicit_only:
        d = _Suppressed()
    g = parser.add_argument_group("pipeline options (part of the config hash)")
    g.add_argument("--denoise-method", "--denoise_method", dest="denoise_method", choices=DENOISE_METHODS,
                   default=d.denoise_method, help=f"denoising method (default: {PipelineConfig().denoise_method})")
    g.add_argument("--no-gibbs", "--no_gibbs", dest="gibbs", action="store_false", default=d.gibbs,
                   help="skip Gibbs unringing")
    g.add_argument("--no-motion-correction", "--no_motion_correction", dest="motion_correction",
                   action="store_false", default=d.motion_correction, help="skip motion correction")
    g.add_argument("--no-eddy-correction", "--no_eddy_correction", dest="eddy_correction", action="store_false",
                   default=d.eddy_correction, help="motion correction without the eddy-current terms")
    g.add_argument("--b0-threshold", dest="b0_threshold", type=float, default=d.b0_threshold,
                   help=f"b-values ≤ this count as b0, s/mm² (default: {PipelineConfig().b0_threshold:g})")
    g.add_argument("--tensor-fit", dest="tensor_fit_method", choices=TENSOR_FIT_METHODS,
                   default=d.tensor_fit_method, help=f"tensor fit method (default: {PipelineConfig().tensor_fit_method})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {PipelineConfig().seed})")
    g.add_argument("--stages", nargs="+", choices=STAGES, default=d.stages, metavar="STAGE",
                   help=f"run these stages and what they need ({', '.join(STAGES)}; default: all)")
    g.add_argument("--tracking-method", dest="tracking_method", choices=TRACKING_METHODS,
                   default=d.tracking_method, help="tractography (default: deterministic)")
    D = PipelineConfig()
    for flag, name, kind, text in (
        ("--seed-density", "seed_density", float, "whole-brain seeds per mm³ where FA is above the threshold "
         "(1/9: 3 per 3 mm voxel)"),
        ("--cst-seed-density", "cst_seed_density", float, "CST seeds per mm³ of the internal capsules' posterior "
         "limbs where FA is above the threshold"),
        ("--mppca-stride", "mppca_patch_stride", int, "MP-PCA patch centres every X voxels per axis (1: dipy's "
         "every voxel)"),
        ("--step-size", "step_size_mm", float, "tracking step, mm"),
        ("--fa-threshold", "fa_threshold", float, "tracking stops (and seeding needs) FA above this"),
        ("--max-angle", "max_angle_deg", float, "largest turn per step, degrees"),
        ("--min-length", "min_length_mm", float, "shortest whole-brain streamline kept, mm"),
        ("--max-length", "max_length_mm", float, "longest whole-brain streamline kept, mm"),
        ("--tracking-smoothing", "tracking_smoothing_mm", float, "Gaussian sigma of the tensor-field smoothing "
         "that deterministic tracking follows, mm (0: none)"),
        ("--cst-min-length", "cst_min_length_mm", float, "shortest CST streamline, mm"),
        ("--min-streamlines", "min_streamlines", int, "fewer CST streamlines on a side raise a flag"),
        ("--template-resolution", "template_resolution_mm", float, "MNI template grid for registration, mm"),
        ("--gibbs-slice-axis", "gibbs_slice_axis", int, "voxel axis (0, 1, 2 of the RAS+ image) across which "
         "slices were acquired, for Gibbs removal; -1: from the sidecar or the coarsest axis"),
        ("--mask-median-radius", "mask_median_radius", int, "median filter radius of the brain mask, voxels"),
        ("--mask-numpass", "mask_numpass", int, "median filter passes of the brain mask"),
        ("--min-registration-dice", "min_registration_dice", float, "white-matter Dice after registration below "
         "which the subject is flagged"),
    ):
        g.add_argument(flag, dest=name, type=kind, default=getattr(d, name), metavar="X",
                       help=f"{text} (default: {getattr(D, name):g})")
    g.add_argument("--cst-clip-end", dest="cst_clip_end", choices=CLIP_ENDS, default=d.cst_clip_end,
                   help="cut CST streamlines where they first reach the precentral gyrus or at their last point "
                        f"in it (default: {D.cst_clip_end})")
    g.add_argument("--cst-midline", dest="cst_midline", choices=MIDLINE_RULES, default=d.cst_midline,
                   help="cut a CST streamline where it crosses the midline above the decussation, or drop it "
                        f"(default: {D.cst_midline})")
    g.add_argument("--preproc-region", dest="preproc_region", choices=PREPROC_REGIONS, default=d.preproc_region,
                   help="denoise and unring only a dilated brain mask of the raw series, or the whole field of "
                        f"view (default: {D.preproc_region})")
    g.add_argument("--metrics-weighting", dest="metrics_weighting", choices=METRICS_WEIGHTINGS,
                   default=d.metrics_weighting,
                   help=f"bundle means weighted by streamlines per voxel or per voxel (default: {D.metrics_weighting})")


class _Suppressed:
    """Stands in for PipelineConfig defaults: every attribute is argparse.SUPPRESS."""

    def __getattr__(self, name):
        return argparse.SUPPRESS


def explicit_options(args) -> dict:
    """Pipeline options the user gave on the command line (with ``explicit_only`` flags)."""
    from dataclasses import fields

    names = {f.name for f in fields(PipelineConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def pipeline_config_from_args(args) -> PipelineConfig:
    return PipelineConfig(**explicit_options(args))


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("execution")
    g.add_argument("--nprocs", "--n-procs", dest="nprocs", type=positive_int, default=available_cpus(),
                   help="CPUs for the whole command: Nipype MultiProc processes and threads of multithreaded "
                        "steps (1 = Linear plugin; default: all available, here %(default)s)")
    g.add_argument("--mem-gb", dest="mem_gb", type=positive_float, default=None, help="memory cap for MultiProc (GB)")
    g.add_argument("--work-dir", "-w", dest="work_dir", type=Path, default=None,
                   help="Nipype working directory (default: OUT/_work)")
    g.add_argument("--write-graph", action="store_true", help="also draw the workflow graph into OUT/figures")


def execution_config_from_args(args) -> ExecutionConfig:
    plugin = "MultiProc" if args.nprocs > 1 else "Linear"
    level = {0: "CRITICAL", 1: "INFO"}.get(args.verbose, "DEBUG")
    return ExecutionConfig(plugin=plugin, nprocs=args.nprocs, omp_nthreads=args.nprocs, mem_gb=args.mem_gb,
                           write_graph=args.write_graph, nipype_log_level=level)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="csttool", description="Corticospinal tract assessment from diffusion MRI (Nipype + DIPY)."
    )
    parser.add_argument("--version", action="version", version=f"csttool-nipype {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="process one subject")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--dwi", "--nifti", dest="dwi", type=Path, help="4D diffusion NIfTI")
    src.add_argument("--dicom", type=Path, help="DICOM folder or (gzipped) DICOM file")
    run.add_argument("--bval", type=Path, help="b-values (default: next to the NIfTI, same stem)")
    run.add_argument("--bvec", type=Path, help="b-vectors, FSL convention (default: same stem)")
    run.add_argument("--json", dest="sidecar", type=Path, help="JSON sidecar (default: same stem)")
    run.add_argument("--series", help="DICOM series number or description when a folder holds several")
    run.add_argument("--out", required=True, type=Path, help="output (BIDS derivatives) folder")
    run.add_argument("--subject-id", "--subject_id", dest="subject", default="sub-01", help="default: sub-01")
    run.add_argument("--session", help="session label (optional)")
    add_pipeline_options(run)
    add_execution_options(run)
    run.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
    run.set_defaults(func=_cmd_run)

    ph = sub.add_parser("phantom", help="write a digital phantom with known ground truth")
    ph.add_argument("out", type=Path, help="output folder (a BIDS dataset)")
    ph.add_argument("--subjects", type=int, default=1, help="number of subjects (default: 1)")
    ph.add_argument("--voxel-size", type=float, default=3.0, help="isotropic voxel size, mm (default: 3)")
    ph.add_argument("--directions", type=int, default=30, help="directions per shell (default: 30)")
    ph.add_argument("--bvals", type=float, nargs="+", default=[1000.0], help="shells, s/mm² (default: 1000)")
    ph.add_argument("--snr", type=float, default=30.0, help="b0 white-matter SNR (default: 30; 0 = no noise)")
    ph.add_argument("--rotation", type=float, default=0.0, help="max random head rotation, degrees")
    ph.add_argument("--translation", type=float, default=0.0, help="max random head translation, mm")
    ph.add_argument("--orientation", default="RAS", help="voxel axis codes, e.g. RAS, LAS, LPS, PSR")
    ph.add_argument("--lesion-side", choices=("left", "right"), help="add a CST lesion on this side")
    ph.add_argument("--lesion-fa-reduction", type=float, default=0.3, help="fractional FA drop (default 0.3)")
    ph.add_argument("--gibbs", action="store_true", help="simulate Gibbs ringing")
    ph.add_argument("--motion", type=float, default=0.0, help="max per-volume rotation, degrees")
    ph.add_argument("--seed", type=int, default=0)
    ph.set_defaults(func=_cmd_phantom)

    batch = sub.add_parser("batch", help="process many subjects in parallel (manifest or BIDS folder)")
    src = batch.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="JSON manifest: {global_options, subjects: [...]}")
    src.add_argument("--bids-dir", "--bids_dir", dest="bids_dir", type=Path, help="BIDS (or BIDS-like) folder")
    batch.add_argument("--out", required=True, type=Path, help="output folder")
    sel = batch.add_argument_group("subject selection (BIDS)")
    sel.add_argument("--include", action="append", default=[], help='glob on subject id, e.g. "sub-0*" (repeatable)')
    sel.add_argument("--exclude", action="append", default=[], help='glob on subject id (repeatable)')
    sel.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+")
    sel.add_argument("--session-label", "--session_label", dest="session_label", nargs="+")
    sel.add_argument("--bids-filter-file", dest="bids_filter_file", type=Path, help="JSON of pybids entity filters")
    sel.add_argument("--bids-database-dir", dest="bids_database_dir", type=Path, metavar="DIR",
                     help="keep pybids' index of the BIDS folder in DIR and reuse it (large datasets)")
    run_g = batch.add_argument_group("batch")
    add_cpu_options(run_g, "--n-procs")
    add_timeout_option(run_g)
    run_g.add_argument("--force", action="store_true", help="rerun subjects that are already done")
    run_g.add_argument("--strict", action="store_true", help="run nothing if any entry is invalid")
    run_g.add_argument("--dry-run", "--validate-only", dest="dry_run", action="store_true",
                       help="validate and print the plan, process nothing")
    run_g.add_argument("--keep-work", action="store_true", help="keep each subject's _work after success")
    run_g.add_argument("--verify", action="store_true",
                       help="before skipping a done subject, check every output's SHA-256 (default: size only)")
    add_plugin_options(run_g)
    prep = batch.add_mutually_exclusive_group()
    prep.add_argument("--preprocessing", dest="preprocessing", action="store_true", default=None,
                      help="denoise + Gibbs + motion correction (the default)")
    prep.add_argument("--no-preprocessing", dest="preprocessing", action="store_false",
                      help="skip denoising, Gibbs unringing and motion correction")
    add_pipeline_options(batch, explicit_only=True)
    batch.set_defaults(func=_cmd_batch)

    report = sub.add_parser("report", help="rebuild the tables and reports of a batch output folder (no reprocessing)",
                            description="Rebuild OUT/batch_metrics.csv, OUT/batch_profiles.tsv and "
                                        "OUT/batch_report.html from the files a batch left in OUT, and write the "
                                        "subject reports (OUT/sub-X/sub-X_report.html) that are missing.")
    report.add_argument("out", type=Path, help="a batch output folder")
    report.add_argument("--subject-reports", choices=("missing", "all", "none"), default="missing",
                        help="successful subjects whose report is (re)written (default: missing)")
    report.add_argument("--pdf", action="store_true",
                        help="also print batch_report.html and the subject reports to PDF with headless "
                             "Chromium (needs the 'chromium' package)")
    report.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="make a small phantom cohort and run the batch on it")
    demo.add_argument("out", type=Path, nargs="?", default=Path("csttool_demo"),
                      help="output folder (phantoms in OUT/rawdata, results in OUT/derivatives; default: csttool_demo)")
    demo.add_argument("--subjects", type=positive_int, default=4,
                      help="phantom subjects (default: 4; sub-03 has a lesion, sub-04 a corrupt file)")
    demo.add_argument("--nprocs", type=positive_int, default=2,
                      help="CPUs (default: 2, i.e. two subjects at a time, one CPU each)")
    demo.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_run(args) -> int:
    from ..run import run_subject
    from ..workflows.base import DWIInputs

    inputs = DWIInputs(
        nifti=_str(args.dwi), bval=_str(args.bval), bvec=_str(args.bvec), sidecar=_str(args.sidecar),
        dicom=_str(args.dicom), series=args.series,
    )
    from ..batch.console import StageStatus

    with StageStatus(args.subject) as status:   # the current stage, on a terminal
        run = run_subject(args.subject, inputs, args.out, pipeline_config_from_args(args),
                          execution_config_from_args(args), session=args.session, work_dir=args.work_dir,
                          on_stage=status.update)
    LOGGER.info("done: outputs in %s", run.folder)
    return 0


def batch_options(manifest_options: dict, args) -> dict:
    """Options of a batch: the manifest's ``global_options`` ← ``--[no-]preprocessing`` ← typed flags."""
    options = dict(manifest_options)
    if args.preprocessing is False:
        options.pop("preprocessing", None)
        options.update(PREPROCESSING_OFF)
    elif args.preprocessing:
        options.pop("preprocessing", None)
        options.update(PREPROCESSING_ON)
        if options.get("denoise_method") == "none":
            options.pop("denoise_method")
    options.update(explicit_options(args))
    return options


def _cmd_batch(args) -> int:
    from ..bids import discover_bids
    from ..cohort import CohortOptions, run_cohort
    from ..errors import InputError
    from ..execution import SLURM_PLUGINS
    from ..subject_job import check_options
    from ..subjects import load_manifest

    plugin, plugin_args = plugin_from_args(args)   # bad values: InputError, a usage error (exit 2)
    global_options = {}
    if args.manifest:
        global_options, specs = load_manifest(args.manifest)
    else:
        specs = discover_bids(args.bids_dir, args.participant_label, args.session_label, args.include,
                              args.exclude, read_filters(args.bids_filter_file), database_dir=args.bids_database_dir)
        if not specs:
            raise InputError(args.bids_dir, "no subjects with a DWI run match the selection")
    global_options = batch_options(global_options, args)
    check_options(global_options, specs, args.manifest or "command line")   # bad values: usage errors
    nprocs, subjects_at_once = cpus_from_args(args, plugin, len(specs))
    return run_cohort(specs, global_options, args.out, CohortOptions(
        nprocs=nprocs, subjects_at_once=subjects_at_once,
        timeout_minutes=resolve_timeout(args.timeout_minutes, slurm=plugin in SLURM_PLUGINS), force=args.force,
        strict=args.strict, dry_run=args.dry_run, keep_work=args.keep_work, verify=args.verify,
        execution={"plugin": plugin, "plugin_args": plugin_args} if plugin or plugin_args else {},
        threads_per_job=1 if plugin in SLURM_PLUGINS else None))   # as the BIDS-App: the nodes run elsewhere


def _cmd_report(args) -> int:
    from ..derivatives import find
    from ..errors import InputError, check_writable_dir
    from ..reports import build_cohort_reports
    from ..reports.pdf import html_to_pdf, pdf_engine

    if not args.out.is_dir():
        raise InputError(args.out, "output folder not found")
    check_writable_dir(args.out)
    if args.pdf and pdf_engine() is None:
        raise InputError(None, "--pdf needs Chromium (apt-get install chromium); nothing was written")
    paths = build_cohort_reports(args.out, subject_reports=args.subject_reports)
    LOGGER.info("cohort table: %s; profiles: %s; report: %s (%d subject reports written)", paths["metrics"],
                paths["profiles"], paths.get("report", "FAILED, see the messages above"), len(paths["subject_reports"]))
    if args.pdf:
        folders = sorted([*args.out.glob("sub-*"), *args.out.glob("sub-*/ses-*")])   # subjects and sessions
        for html in [paths.get("report"), *(find(folder, "report") for folder in folders)]:
            if html:
                html_to_pdf(html)
    return 0 if "report" in paths else 1


def _phantom_spec(args):
    from ..sims.model import LesionSpec, PhantomSpec

    lesion = LesionSpec(side=args.lesion_side, fa_reduction=args.lesion_fa_reduction) if args.lesion_side else None
    return PhantomSpec(
        voxel_size=args.voxel_size, n_directions=args.directions, bvals=tuple(args.bvals),
        snr=args.snr or None, rotation_deg=args.rotation, translation_mm=args.translation,
        orientation=args.orientation, seed=args.seed, lesion=lesion, gibbs=args.gibbs, motion_deg=args.motion,
    )


def _cmd_phantom(args) -> int:
    from ..sims.writer import write_bids_dataset

    path = write_bids_dataset(args.out, args.subjects, spec=_phantom_spec(args), seed=args.seed)
    LOGGER.info("phantom dataset written to %s (ground truth in derivatives/phantom-truth)", path)
    return 0


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args.out, n_subjects=args.subjects, nprocs=args.nprocs)


def _str(value) -> str | None:
    return None if value is None else str(value)


#: Path arguments, made absolute at the entry point (jobs and nodes run in other folders).
PATH_ARGUMENTS = ("dwi", "dicom", "bval", "bvec", "sidecar", "out", "work_dir", "manifest", "bids_dir",
                  "bids_filter_file")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # option values the config object rejects are bad arguments (exit 2), found before anything is written
    check_pipeline_options(parser, explicit_options(args))
    absolute_paths(args, *PATH_ARGUMENTS)
    setup_logging(args.verbose, quiet=args.command in ("batch", "demo"))
    return run_command(args.func, args, LOGGER)


if __name__ == "__main__":
    sys.exit(main())
