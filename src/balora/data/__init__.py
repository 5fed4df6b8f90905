"""Data for the experiments (design §4, §5, §7): packaged sets, local files, NLU/NLG tokenization,
label noise, imbalance and splits. ``datasets`` is imported only when a function needs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .chat import tokenize_chat
from .files import load_table
from .nlg import encode_prompt, render_prompt, sft_collator, tokenize_sft
from .nlu import NLUColumns, prepare_nlu, tokenize_nlu
from .packaged import PACKAGED_DATASETS, PackagedDataset, load_packaged, subsample
from .transforms import add_label_noise, imbalanced_counts, make_imbalanced, split

if TYPE_CHECKING:
    import datasets

__all__ = [
    "PACKAGED_DATASETS",
    "NLUColumns",
    "PackagedDataset",
    "add_label_noise",
    "encode_prompt",
    "imbalanced_counts",
    "load_dataset_any",
    "load_packaged",
    "load_table",
    "make_imbalanced",
    "prepare_nlu",
    "render_prompt",
    "sft_collator",
    "split",
    "subsample",
    "tokenize_chat",
    "tokenize_nlu",
    "tokenize_sft",
]


def load_dataset_any(
    name_or_path: str | os.PathLike[str], split: str | None = None, size: int | None = None, seed: int = 0,
    **options: Any,
) -> datasets.Dataset:
    """A packaged data set by name (``size``/``seed`` subsample or generate), else a local file or folder
    read by :func:`load_table` (``split``, ``options``). A packaged name wins over a same-named file;
    write ``./boolq`` for the file."""
    name = str(name_or_path)
    if name in PACKAGED_DATASETS:
        return load_packaged(name, size=size, seed=seed)
    if not Path(name).expanduser().exists():
        raise DataError(f"data set {name!r} is neither a packaged data set ({', '.join(PACKAGED_DATASETS)}) "
                        "nor an existing file or folder")
    dataset = load_table(name, split=split, **options)
    if size is not None and size < dataset.num_rows:
        dataset = subsample(dataset, size, seed, name)
    return dataset
