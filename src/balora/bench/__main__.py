"""``python -m balora.bench --worker SPEC_JSON --result FILE``: one measurement in a fresh process.

Used by :func:`balora.bench.run_benchmark`; writes ``{"row": {...}}`` or ``{"error": "..."}`` to FILE.
Users run ``balora bench`` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balora.bench", description=__doc__)
    parser.add_argument("--worker", required=True, help="the BenchSpec as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for noisy in ("transformers", "peft", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from ..errors import ConfigError
    from .worker import BenchSpec, run_spec

    try:
        outcome = {"row": run_spec(BenchSpec(**json.loads(args.worker)))}
    except ConfigError as exc:
        outcome = {"error": str(exc), "config_error": True}
    except Exception as exc:  # reported to the parent, which records the method as failed
        traceback.print_exc(file=sys.stderr)
        outcome = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    args.result.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
