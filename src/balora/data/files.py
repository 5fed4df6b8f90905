"""Local data files as ``datasets.Dataset`` (design §7: any csv/json/jsonl file works).

``datasets`` is imported inside the functions: ``import balora`` stays light, and the GPU machine, which
has no ``datasets``, can still import the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError

if TYPE_CHECKING:
    import datasets

# file suffix -> (datasets builder, extra builder options)
_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def require_datasets() -> Any:
    """Import ``datasets`` or say how to install it."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError("reading data sets needs the `datasets` package: `pip install 'balora[data]'`") from exc
    return datasets


def _format_of(path: Path) -> tuple[str, dict[str, Any]]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _FORMATS:
        raise DataError(
            f"{path}: unknown file type {''.join(path.suffixes) or '(no extension)'}; give a "
            f"{', '.join(_FORMATS)} file (optionally .gz), or a folder saved with Dataset.save_to_disk"
        )
    return _FORMATS[suffixes[-1]]


def _load_from_disk(path: Path, split: str | None) -> datasets.Dataset:
    ds_lib = require_datasets()
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(f"{path} is a folder but not one written by Dataset.save_to_disk (no state.json or "
                        "dataset_dict.json); give a data file or such a folder")
    loaded = ds_lib.load_from_disk(str(path))
    if isinstance(loaded, ds_lib.DatasetDict):
        names = list(loaded)
        if split is None:
            if len(names) != 1 and "train" not in names:
                raise DataError(f"{path} holds the splits {names}; choose one with split=...")
            split = "train" if "train" in names else names[0]
        if split not in loaded:
            raise DataError(f"{path} has no split {split!r}; its splits are {names}")
        return loaded[split]
    if split not in (None, "train"):
        raise DataError(f"{path} holds a single data set, not splits; leave split unset")
    return loaded


def load_table(path: str | os.PathLike[str], split: str | None = None, **options: Any) -> datasets.Dataset:
    """Read a csv/tsv/json/jsonl/parquet file (optionally compressed) or a ``save_to_disk`` folder.

    ``split`` picks a split of a saved DatasetDict, or slices a file (``"train[:100]"``); default: all rows.
    ``options`` go to the ``datasets`` builder (e.g. ``encoding="latin-1"`` for csv). Raises DataError for a
    missing or empty file, an unknown extension, an unreadable file or zero rows.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        dataset = _load_from_disk(path, split)
    else:
        builder, defaults = _format_of(path)
        plain_text = builder != "parquet" and path.suffix.lower() not in _COMPRESSED
        if path.stat().st_size == 0 or (plain_text and not path.read_bytes()[:65536].strip()):
            raise DataError(f"data file {path} is empty")
        ds_lib = require_datasets()
        try:
            dataset = ds_lib.load_dataset(builder, data_files=str(path), split=split or "train",
                                          **{**defaults, **options})
        except (ValueError, OSError, StopIteration, ds_lib.exceptions.DatasetsError) as exc:
            if "corresponds to no data" in str(exc):  # a header with no rows
                raise DataError(f"{path} has no rows") from exc
            cause = exc.__cause__ or exc
            raise DataError(f"could not read {path} as {builder}: {type(cause).__name__}: {cause}") from exc
    if dataset.num_rows == 0:
        raise DataError(f"{path} has no rows")
    return dataset
