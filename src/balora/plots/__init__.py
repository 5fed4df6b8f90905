"""Figures from the files ``balora train`` and ``balora compare`` write (PNG, Agg canvas, no pyplot).

matplotlib and scikit-learn are imported inside the functions, so importing this package stays light.
"""

from __future__ import annotations

from ..experiment.results import Summary, load_results, metric_columns, summarize, varying_settings
from .compare import plot_bars, plot_metric_vs
from .run import load_log_history, load_representations, plot_curves, plot_tsne, regularizer_terms, subsample

__all__ = [
    "Summary",
    "load_log_history",
    "load_representations",
    "load_results",
    "metric_columns",
    "plot_bars",
    "plot_curves",
    "plot_metric_vs",
    "plot_tsne",
    "regularizer_terms",
    "subsample",
    "summarize",
    "varying_settings",
]
