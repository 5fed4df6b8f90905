"""Experiments: one run end to end (``balora train``) and the pieces ``eval`` and ``compare`` share."""

from .data import ExperimentData, load_experiment_data
from .run import run_training
from .settings import TrainSettings

__all__ = ["ExperimentData", "TrainSettings", "load_experiment_data", "run_training"]
