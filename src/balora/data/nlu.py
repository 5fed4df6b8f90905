"""Sentence(-pair) classification and regression data (design §4, NLU; section 7 file format).

A table with a ``text`` column (and optionally ``text_pair``) and a ``label`` column is validated and
turned into ``input_ids``/``attention_mask``/``labels``; padding is left to
``transformers.DataCollatorWithPadding``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NLUColumns:
    """Which columns hold the text, the optional second text and the label."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"

    @classmethod
    def infer(cls, column_names: Sequence[str], text: str = "text", label: str = "label",
              text_pair: str | None = None) -> NLUColumns:
        """The columns to read: ``text_pair`` as given, else the data's ``text_pair`` column when it has one."""
        if text_pair is None and "text_pair" in column_names:
            text_pair = "text_pair"
        return cls(text, text_pair, label)

    def names(self) -> list[str]:
        return [c for c in (self.text, self.text_pair, self.label) if c is not None]


def check_columns(dataset: datasets.Dataset, required: Sequence[str]) -> None:
    """DataError naming the missing columns and the ones the data has."""
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise DataError(f"column(s) {missing} not found; the data has the columns {dataset.column_names}")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def replace_column(dataset: datasets.Dataset, name: str, values: list[Any], feature: Any) -> datasets.Dataset:
    """``dataset`` with column ``name`` replaced by ``values`` (same column order)."""
    order = dataset.column_names
    out = dataset.remove_columns(name).add_column(name, values, feature=feature)
    return out.select_columns(order)


RARE_ROWS = 5  # a class seen in fewer rows than this, or in under RARE_SHARE of them, is named in a warning
RARE_SHARE = 0.001


def _where(values: list[Any], bad: list[Any], rows: list[int]) -> str:
    """'x' (row 17), 'y' (rows 3, 9, ...): where each bad value first occurs, counting data rows from 0."""
    parts = []
    for value in bad[:5]:
        hits = [rows[i] for i, v in enumerate(values) if v == value]
        shown = ", ".join(map(str, hits[:3])) + (", ..." if len(hits) > 3 else "")
        parts.append(f"{value!r} (row{'s' if len(hits) > 1 else ''} {shown})")
    return ", ".join(parts) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def rare_classes(ids: list[int], names: list[str]) -> list[tuple[str, int]]:
    """(class, rows) of each class seen in fewer than RARE_ROWS rows or under RARE_SHARE of them."""
    counts = [0] * len(names)
    for i in ids:
        counts[i] += 1
    return [(n, c) for n, c in zip(names, counts, strict=True) if c < RARE_ROWS or c < RARE_SHARE * len(ids)]


def _class_ids(values: list[Any], label_names: list[str] | None, num_labels: int | None, column: str,
               rows: list[int] | None = None) -> tuple[list[int], list[str]]:
    rows = rows if rows is not None else list(range(len(values)))
    if all(isinstance(v, bool) for v in values):
        values = [int(v) for v in values]  # json true/false
        label_names = label_names or ["False", "True"]
    if all(isinstance(v, str) for v in values):
        names = list(label_names) if label_names is not None else sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise DataError(f"label(s) {_where(values, unknown, rows)} in column {column!r} (rows counted from 0) "
                            f"are not among the classes {names}; fix those rows or the class list")
        return [index[v] for v in values], names
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise DataError(f"column {column!r} mixes label types {kinds}; use all strings or all integers")
    if any(float(v) != int(v) for v in values):
        bad = next(v for v in values if float(v) != int(v))
        raise DataError(f"label {bad} in column {column!r} is not an integer class id; "
                        "for a numeric target use task='regression'")
    ids = [int(v) for v in values]
    if label_names is not None:
        if num_labels is not None and num_labels != len(label_names):
            raise ConfigError(f"num_labels={num_labels} but {len(label_names)} label_names were given")
        num_labels = len(label_names)
    elif num_labels is None:
        num_labels = max(max(ids) + 1, 2)
    bad = sorted({i for i in ids if not 0 <= i < num_labels})
    if bad:
        raise DataError(f"label id(s) {bad[:10]} in column {column!r} are outside [0, {num_labels}) "
                        f"({_where(ids, bad, rows)}, rows counted from 0); give the right num_labels/label_names "
                        "or fix the labels")
    return ids, list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]


def prepare_nlu(
    dataset: datasets.Dataset,
    columns: NLUColumns | None = None,
    task: Literal["classification", "regression"] = "classification",
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
) -> tuple[datasets.Dataset, list[str] | None]:
    """Validate columns and labels; return (dataset, label_names) with integer ids (or floats).

    Rows with a null label or text are dropped (counts logged). Classification: string labels map to
    ``label_names`` (default: sorted unique names), a ClassLabel column keeps its names, json booleans map
    to 0/1, integer labels must lie in [0, num_labels) (num_labels defaults to len(label_names) or
    max + 1). The label column becomes a ClassLabel. Regression: float32 labels, label_names None. A label
    outside the given classes is a DataError naming it and its rows; when the classes come from the data,
    a class seen in fewer than 5 rows (or under 0.1 %) is named in a warning (often a typo).
    """
    from datasets import ClassLabel, Value

    if task not in ("classification", "regression"):
        raise ConfigError(f"task {task!r} is not one of classification, regression")
    columns = columns or NLUColumns.infer(dataset.column_names)
    check_columns(dataset, columns.names())
    if dataset.num_rows == 0:
        raise DataError("the data set has no rows")
    labels = list(dataset[columns.label])
    texts = [c for c in (columns.text, columns.text_pair) if c is not None]
    text_values = [list(dataset[c]) for c in texts]
    feature = dataset.features[columns.label]
    is_class = isinstance(feature, ClassLabel)  # -1 there means "no label" (datasets' convention)
    keep = [i for i, v in enumerate(labels) if not _is_null(v) and not (is_class and v < 0)]
    if len(keep) < len(labels):
        log.info("dropped %d of %d rows with a null label in column %r", len(labels) - len(keep), len(labels),
                 columns.label)
    kept_text = [i for i in keep if not any(_is_null(t[i]) for t in text_values)]
    if len(kept_text) < len(keep):
        log.info("dropped %d rows with a null text", len(keep) - len(kept_text))
    if not kept_text:
        raise DataError(f"no rows left: every row has a null label ({columns.label!r}) or text")
    if len(kept_text) < len(labels):
        dataset = dataset.select(kept_text)
    values = [labels[i] for i in kept_text]
    if is_class:
        values = [feature.names[v] for v in values]
        label_names = label_names or feature.names
    if task == "regression":
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise DataError(f"regression needs numeric labels in column {columns.label!r}: {exc}") from exc
        return replace_column(dataset, columns.label, floats, Value("float32")), None
    inferred = label_names is None  # the classes are whatever values the data holds: a typo becomes a class
    ids, names = _class_ids(values, list(label_names) if label_names is not None else None, num_labels,
                            columns.label, kept_text)
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 classes; column {columns.label!r} has only {names}")
    rare = rare_classes(ids, names) if inferred else []
    if rare:
        log.warning("label(s) %s in column %r: seen in fewer than %d rows or under %.1f%% of %d; a typo makes a "
                    "class of its own. Fix those rows, or fix the classes with the labels setting (--labels %s)",
                    ", ".join(f"{n!r} ({c} row{'s' if c != 1 else ''})" for n, c in rare), columns.label,
                    RARE_ROWS, 100 * RARE_SHARE, len(ids), ",".join(n for n in names if n not in dict(rare)))
    return replace_column(dataset, columns.label, ids, ClassLabel(names=names)), names


def tokenize_nlu(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    columns: NLUColumns | None = None,
    max_length: int = 128,
) -> datasets.Dataset:
    """Tokenize (text[, text_pair]) with truncation to ``max_length``; columns input_ids, attention_mask
    (token_type_ids where the tokenizer makes them) and labels; other columns are removed. Unpadded."""
    columns = columns or NLUColumns.infer(dataset.column_names)
    check_columns(dataset, columns.names())

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pair = batch[columns.text_pair] if columns.text_pair else None
        enc = dict(tokenizer(batch[columns.text], pair, truncation=True, max_length=max_length))
        enc["labels"] = batch[columns.label]
        return enc

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
