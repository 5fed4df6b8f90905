"""``balora`` entry point: one small module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import BaloraError, NonFiniteLossError, TrainingInterrupted, is_disk_full
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK, EXIT_USAGE, apply_yaml_config

COMMANDS = ("train", "eval", "compare", "bench", "plot")

DESCRIPTION = """Fine-tune language models with BA-LoRA, Dual LoRA and their baselines.

examples:
  balora train --model minilm --dataset tweets --method ba-lora --output runs/tweets --epochs 1
  balora eval --model minilm --adapter runs/tweets/adapter --dataset tweets
  balora compare --config experiments/demo.yaml
  balora bench --model tiny --device cpu --json
  balora plot curves runs/tweets

exit codes: 0 success, 1 unexpected error (rerun with --debug), 2 bad input,
            3 loss became NaN/inf, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balora", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def _module(name: str):
    return importlib.import_module(f"balora.cli.{name}")


def _version() -> str:
    from .. import __version__

    return f"balora {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = "--debug" in argv  # accepted before or after the subcommand
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    for noisy in ("transformers", "peft", "accelerate", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not debug else logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = apply_yaml_config(parser, argv)
        return int(_module(args.command).run(args) or EXIT_OK)
    except BaloraError as exc:
        if debug:
            raise
        print(f"balora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        if debug:
            raise
        print(f"balora: error: {exc}", file=sys.stderr)
        return EXIT_NONFINITE
    except TrainingInterrupted as exc:
        print(f"balora: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("balora: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one clear line; the traceback is for --debug
        if debug:
            raise
        if is_disk_full(exc, strict=True):  # where no caller named what it was writing (train names it)
            where = getattr(exc, "filename", None) or "the output"
            print(f"balora: error: disk full while writing {where}; free some space and run the command again.",
                  file=sys.stderr)
            return EXIT_USAGE
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"balora: error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
