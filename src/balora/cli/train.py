"""``balora train``: fine-tune one model with one method; options are :class:`TrainSettings` fields."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing

from ..experiment.settings import TrainSettings
from .common import add_config_option

logger = logging.getLogger("balora")

EXAMPLES = """examples:
  balora train --model minilm --dataset tweets --method ba-lora --output runs/tweets --max-steps 200
  balora train --model minilm --dataset boolq --method lora --label-noise 0.2 --output runs/boolq-noisy
  balora train --model smollm2-135m --dataset gsm-symbolic --train-size 500 --method pissa --output runs/gsm
  balora train --config run.yaml --resume
"""


def _base_type(annotation: str) -> type:
    hint = eval(annotation, {"typing": typing})  # annotations are postponed strings of builtins
    if isinstance(hint, types.UnionType):
        hint = next(a for a in hint.__args__ if a is not type(None))
    return hint


def add_settings_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per :class:`TrainSettings` field, with its help text."""
    for f in dataclasses.fields(TrainSettings):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        meta = f.metadata
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=f.default, help=meta["help"])
            continue
        parser.add_argument(flag, type=kind, default=f.default, choices=meta.get("choices"),
                            required=meta.get("required", False), help=meta["help"])


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in vars(args).items() if k in names})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model with one method and evaluate it",
                                   description=__doc__, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(parser)
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..experiment import run_training

    settings = settings_from_args(args)
    metrics = run_training(settings)
    headline = {k: v for k, v in metrics.items() if not k.startswith(("val_", "ood_", "train_runtime"))}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in list(headline.items())[:4])
    print(f"balora train: {settings.method} on {settings.dataset}: {shown} "
          f"({metrics['train_runtime_s']:.0f} s) -> {settings.output}/metrics.json")
    return 0
