"""Training: the Trainer subclass, regularizer settings, weight presets and schedules, callbacks."""

from .callbacks import DualLoraWarmupCallback
from .config import BALoRAConfig
from .trainer import BALoRATrainer
from .weights import PRESETS, TERMS, WeightSchedule, make_schedule

__all__ = ["BALoRAConfig", "BALoRATrainer", "DualLoraWarmupCallback", "PRESETS", "TERMS", "WeightSchedule",
           "make_schedule"]
