"""``balora compare``: methods x seeds x settings, each cell a training run; prints mean ± std per method."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..methods import METHODS
from .common import EXIT_FAILURE, add_config_option
from .train import add_settings_arguments, settings_from_args

logger = logging.getLogger("balora")

EXAMPLES = """examples:
  balora compare --config experiments/demo.yaml
  balora compare --model minilm --dataset tweets --train-size 2000 --output runs/cmp \\
      --methods lora pissa ba-lora --seeds 0 1 2 --grid label_noise=0,0.2,0.4
  re-running the same command skips finished cells and resumes an interrupted one.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="compare methods over seeds and settings",
                                   description=__doc__, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(parser)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["lora", "pissa", "ba-lora"],
                        help="methods to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (one run each)")
    parser.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2",
                        help="settings to vary, e.g. label_noise=0,0.2 rank=4,16 (YAML: a mapping)")
    parser.add_argument("--metric", default=None,
                        help="metric of the summary table (default: the packaged data set's, e.g. exact_match for "
                             "generated tasks, pass@1 for humaneval; else accuracy)")
    add_settings_arguments(parser, skip=("method", "seed", "resume", "overwrite"))


def run(args: argparse.Namespace) -> int:
    from ..experiment.compare import format_table, parse_grid, run_grid
    from ..experiment.data import default_metric

    base = settings_from_args(args)
    grid = parse_grid(args.grid)
    metric = args.metric or default_metric(base.dataset)
    rows, failed = run_grid(base, args.methods, args.seeds, grid, Path(base.output), metric)
    print(format_table(rows, metric, list(grid)))
    print(f"balora compare: {len(rows)} finished cells -> {base.output}/results.csv, summary.csv")
    if failed:
        print(f"balora compare: {len(failed)} cell(s) failed: {', '.join(failed)} (re-run to retry)")
        return EXIT_FAILURE
    return 0
