"""``balora plot KIND PATH``: PNG figures from a training run or a comparison directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import EXIT_OK, add_config_option, positive_int

KINDS = {
    "curves": ("RUN", "training loss and each regularizer term against step", "curves.png"),
    "tsne": ("RUN [RUN ...]", "t-SNE of the recorded representations per checkpoint (rows: runs)", "tsne.png"),
    "noise": ("CMP", "metric (mean ± std over seeds) against label_noise, one line per method", "noise.png"),
    "rank": ("CMP", "metric against rank on a log2 axis, one line per method", "rank.png"),
    "bars": ("CMP", "metric per method, grouped by the other settings that vary", "bars.png"),
}

EPILOG = "kinds:\n" + "\n".join(f"  {k:<7}{v[0]:<15}{v[1]} -> {v[2]}" for k, v in KINDS.items()) + """

RUN is a `balora train --output` directory; CMP a `balora compare` output directory (or its results.csv).
examples:
  balora plot curves runs/tweets
  balora plot tsne runs/lora runs/ba-lora --output figures
  balora plot noise runs/noise-study --metric f1
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot", help="draw PNG figures from training runs and comparisons",
        description="Draw a PNG figure from the files `balora train` or `balora compare` wrote.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=sorted(KINDS), metavar="KIND", help="one of: " + ", ".join(KINDS))
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a run directory (curves, tsne: one or more) or a comparison directory")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the PNG (default: the first PATH's directory)")
    parser.add_argument("--metric", default="accuracy",
                        help="results column to plot for noise, rank and bars (default: accuracy)")
    parser.add_argument("--by", nargs="+", default=None, metavar="COLUMN",
                        help="bars: settings to group by (default: every setting that varies)")
    parser.add_argument("--max-points", type=positive_int, default=500,
                        help="tsne: points per panel, subsampled per label (default: 500)")
    parser.add_argument("--max-checkpoints", type=positive_int, default=6,
                        help="tsne: checkpoints per run, evenly spaced (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="tsne: seed of the subsample and t-SNE (default: 0)")
    add_config_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from .. import plots

    kind, paths = args.kind, list(args.paths)
    if kind != "tsne" and len(paths) != 1:
        raise ConfigError(f"`balora plot {kind}` takes one PATH, got {len(paths)}; only tsne takes several runs.")
    if args.by is not None and kind != "bars":
        raise ConfigError("--by applies to `balora plot bars` only.")
    first = paths[0]
    out_dir = args.output if args.output is not None else (first.parent if first.is_file() else first)
    out = out_dir / KINDS[kind][2]
    if kind == "curves":
        written = plots.plot_curves(first, out)
    elif kind == "tsne":
        if args.max_points < 5:
            raise ConfigError(f"--max-points must be at least 5, got {args.max_points}.")
        written = plots.plot_tsne(paths, out, max_points=args.max_points, seed=args.seed,
                                  max_checkpoints=args.max_checkpoints)
    elif kind == "bars":
        written = plots.plot_bars(plots.load_results(first), args.metric, out, by=args.by)
    else:
        x = "label_noise" if kind == "noise" else "rank"
        written = plots.plot_metric_vs(plots.load_results(first), x, args.metric, out, log2=kind == "rank")
    print(written)
    return EXIT_OK
