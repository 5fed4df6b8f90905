"""``balora train``: fine-tune one model with one method; options are :class:`TrainSettings` fields."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ..errors import ConfigError
from ..experiment.schema import Option, options, parse_value
from ..experiment.settings import TrainSettings
from .common import add_config_option

logger = logging.getLogger("balora")

EXAMPLES = """examples:
  balora train --model minilm --dataset tweets --method ba-lora --output runs/tweets --max-steps 200
  balora train --model minilm --dataset boolq --method lora --label-noise 0.2 --output runs/boolq-noisy
  balora train --model smollm2-135m --dataset gsm-symbolic --train-size 500 --method pissa --output runs/gsm
  balora train --config run.yaml --resume
"""


def _parser_type(opt: Option):
    """argparse ``type=``: the schema's parser, its one-line message as argparse's."""
    def parse(text: str):
        try:
            return parse_value(opt, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{opt.flag}: ")) from None

    parse.__name__ = opt.type.__name__
    return parse


def add_settings_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                           skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per :class:`TrainSettings` option (groups flattened), with its help text."""
    groups: dict[str | None, argparse._ArgumentGroup] = {
        None: parser, "adapter": parser.add_argument_group("adapter options"),
        "regularizers": parser.add_argument_group("regularizer options (BA-LoRA; any method with a weight)"),
    } if only is None else {}
    for opt in options(TrainSettings):
        if opt.name in skip or (only is not None and opt.name not in only):
            continue
        target = groups.get(opt.group, parser)
        if opt.type is bool:
            target.add_argument(opt.flag, action="store_true", default=opt.default, help=opt.help)
            continue
        metavar = "{" + ",".join(map(str, opt.choices)) + "}" if opt.choices else None
        required = opt.field.metadata.get("required", False)
        target.add_argument(opt.flag, type=_parser_type(opt), default=None if required else _default(opt),
                            metavar=metavar, required=required, help=opt.help)


def _default(opt: Option):
    return opt.field.default_factory() if opt.default is dataclasses.MISSING else opt.default


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    names = {opt.name for opt in options(TrainSettings)}
    return TrainSettings.from_dict({k: v for k, v in vars(args).items() if k in names})


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
