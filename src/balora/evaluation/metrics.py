"""GLUE-style metrics for classification and regression heads (design §4, NLU rows).

Every value returned is a plain Python ``float`` so the dictionaries can be written to ``metrics.json``
as they are. scikit-learn and scipy are imported inside the functions: ``import balora`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from balora.errors import DataError


def _as_arrays(predictions: Any, labels: Any) -> tuple[Any, Any]:
    import numpy as np

    preds = np.asarray(_to_numpy(predictions))
    labs = np.asarray(_to_numpy(labels))
    if preds.ndim == 0 or labs.ndim == 0:
        raise DataError("predictions and labels must be sequences (one entry per example), not scalars")
    if preds.size == 0 or labs.size == 0:
        raise DataError("cannot compute metrics on an empty evaluation set; check the evaluation data")
    if len(preds) != len(labs):
        raise DataError(
            f"{len(preds)} predictions but {len(labs)} labels; they must be aligned one to one"
        )
    return preds, labs


def _to_numpy(x: Any) -> Any:
    """Accept lists, numpy arrays and torch tensors (detached to CPU) alike."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return x


def classification_metrics(
    predictions: Sequence[int] | Any, labels: Sequence[int] | Any, num_labels: int | None = None
) -> dict[str, float]:
    """Accuracy, F1, Matthews correlation and per-class precision/recall/F1.

    ``predictions``: class ids, shape (N,), or logits, shape (N, C) (the argmax is taken).
    ``labels``: class ids, shape (N,). ``num_labels``: C; inferred from the data when omitted.

    ``f1`` is what GLUE reports: the F1 of the positive class (label 1) for two labels (MRPC, QQP),
    the macro F1 otherwise; ``f1_macro`` is always the macro F1. ``balanced_accuracy`` is the mean
    recall over the classes present in ``labels``. Per-class keys (``precision_class_0``,
    ``recall_class_0``, ``f1_class_0``, ...) serve the imbalanced-data experiments; a class that is
    never predicted has precision 0.
    """
    import numpy as np
    from sklearn.metrics import matthews_corrcoef, precision_recall_fscore_support

    preds, labs = _as_arrays(predictions, labels)
    if preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or labs.ndim != 1:
        raise DataError(
            f"classification predictions must have shape (N,) or (N, C) and labels (N,); "
            f"got {preds.shape} and {labs.shape}"
        )
    for name, arr in (("predictions", preds), ("labels", labs)):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise DataError(f"classification {name} must be integer class ids; got e.g. {arr[:3].tolist()}")
    preds, labs = preds.astype(np.int64), labs.astype(np.int64)
    if num_labels is None:
        num_labels = max(2, int(max(preds.max(), labs.max())) + 1)
    if num_labels < 2:
        raise DataError(f"num_labels must be at least 2, got {num_labels}")
    for name, arr in (("predictions", preds), ("labels", labs)):
        if arr.min() < 0 or arr.max() >= num_labels:
            raise DataError(
                f"{name} contain class ids outside 0..{num_labels - 1} "
                f"(min {int(arr.min())}, max {int(arr.max())}); check num_labels and the label column"
            )

    classes = list(range(num_labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        labs, preds, labels=classes, average=None, zero_division=0
    )
    f1_macro = float(np.mean(f1))
    present = support > 0
    out: dict[str, float] = {
        "accuracy": float(np.mean(preds == labs)),
        "f1": float(f1[1]) if num_labels == 2 else f1_macro,
        "f1_macro": f1_macro,
        "matthews_correlation": float(matthews_corrcoef(labs, preds)),
        "balanced_accuracy": float(np.mean(recall[present])),
    }
    for c in classes:
        out[f"precision_class_{c}"] = float(precision[c])
        out[f"recall_class_{c}"] = float(recall[c])
        out[f"f1_class_{c}"] = float(f1[c])
    return out


def regression_metrics(predictions: Sequence[float] | Any, labels: Sequence[float] | Any) -> dict[str, float]:
    """Pearson and Spearman correlation (as GLUE reports STS-B), their mean, and the MSE.

    Shapes (N,) or (N, 1); N >= 2. The correlation of a constant series is undefined; it is
    reported as 0.0 (no association) rather than NaN so ``metrics.json`` stays strict JSON.
    """
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    preds, labs = _as_arrays(predictions, labels)
    preds = preds.astype(np.float64).reshape(len(preds), -1)
    labs = labs.astype(np.float64).reshape(len(labs), -1)
    if preds.shape[1] != 1 or labs.shape[1] != 1:
        raise DataError(f"regression predictions and labels must be one value per example; got {preds.shape}")
    preds, labs = preds[:, 0], labs[:, 0]
    if len(preds) < 2:
        raise DataError("correlations need at least 2 examples")
    if not (np.all(np.isfinite(preds)) and np.all(np.isfinite(labs))):
        raise DataError("regression predictions or labels contain NaN or infinite values")

    def corr(fn: Any) -> float:
        if np.ptp(preds) == 0 or np.ptp(labs) == 0:
            return 0.0
        value = float(fn(preds, labs)[0])
        return 0.0 if math.isnan(value) else value

    pearson, spearman = corr(pearsonr), corr(spearmanr)
    return {
        "pearson": pearson,
        "spearman": spearman,
        "pearson_spearman_mean": (pearson + spearman) / 2.0,
        "mse": float(np.mean((preds - labs) ** 2)),
    }
