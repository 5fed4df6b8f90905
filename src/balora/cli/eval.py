"""``balora eval``: evaluate a saved adapter (any method), or the base model alone, on a data set."""

from __future__ import annotations

import argparse
import json

from .common import add_config_option

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
    parser.add_argument("--model", required=True, help="the ORIGINAL base model the adapter was trained on")
    parser.add_argument("--adapter", default=None,
                        help="adapter directory (a run's adapter/ folder); omit it to evaluate the base model "
                             "itself (generation tasks only)")
    parser.add_argument("--dataset", required=True, help="packaged data set or local file to evaluate on")
    parser.add_argument("--task", default="auto", help="task; default: the run's, else from the data set")
    parser.add_argument("--eval-size", type=int, default=None, help="evaluate on at most this many rows")
    parser.add_argument("--generate-size", type=int, default=100, help="generation prompts (math, code)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation length")
    parser.add_argument("--max-length", type=int, default=128, help="maximum tokens per example")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the --eval-size subsample")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--allow-other-base", action="store_true",
                        help="load an adapter whose adapter_config.json names another base model (its shapes "
                             "must still match), e.g. the same model moved to another folder")


def run(args: argparse.Namespace) -> int:
    from ..experiment.standalone import evaluate_adapter

    metrics = evaluate_adapter(
        model=args.model, adapter=args.adapter, dataset=args.dataset, task=args.task, eval_size=args.eval_size,
        generate_size=args.generate_size, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
        batch_size=args.batch_size, data_seed=args.data_seed, output=args.output,
        allow_other_base=args.allow_other_base,
    )
    print(json.dumps(metrics, indent=2))
    return 0
