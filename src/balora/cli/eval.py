"""``balora eval``: evaluate a saved adapter (any method), or the base model alone, on a data set."""

from __future__ import annotations

import argparse
import json
import tempfile

from ..experiment.settings import TrainSettings
from .common import DeprecatedAlias, add_config_option
from .train import add_settings_arguments

#: the ``balora train`` options that evaluation reads: the same names, types, help and validation
EVAL_OPTIONS = ("model", "dataset", "task", "eval_size", "generate_size", "max_new_tokens", "answer_type",
                "max_length", "eval_batch_size", "data_seed", "dtype", "text_column", "text_pair_column",
                "label_column", "prompt_column", "response_column", "trust_remote_code", "allow_unsafe_sandbox")

EXAMPLES = """examples:
  balora eval --model minilm --adapter runs/tweets/adapter --dataset tweets --eval-size 500
  balora eval --model minilm --adapter runs/tweets/adapter --dataset other.csv --output ood.json
  balora eval --model smollm2-135m --dataset problems.jsonl --output base.json   # the base model, no adapter
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a saved adapter on a data set",
                                   description=__doc__, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(parser)
    parser.add_argument("--adapter", default=None,
                        help="adapter directory (a run's adapter/ folder); omit it to evaluate the base model "
                             "itself (generation tasks only)")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--allow-other-base", action="store_true",
                        help="load an adapter whose adapter_config.json names another base model (its shapes "
                             "must still match), e.g. the same model moved to another folder")
    add_settings_arguments(parser, only=EVAL_OPTIONS)
    parser.add_argument("--batch-size", dest="eval_batch_size", type=int, action=DeprecatedAlias,
                        new="--eval-batch-size", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from ..experiment.standalone import evaluate_adapter

    values = {k: v for k, v in vars(args).items() if k in EVAL_OPTIONS}
    settings = TrainSettings.from_dict({**values, "output": tempfile.gettempdir()})
    metrics = evaluate_adapter(settings, args.adapter, output=args.output, allow_other_base=args.allow_other_base)
    print(json.dumps(metrics, indent=2))
    return 0
