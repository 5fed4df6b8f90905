"""Generated tasks of reasoning-gym 0.1.25 (Apache-2.0) as instruction/response data (design §5).

:func:`load_gym_task` turns any reasoning-gym task into rows {prompt, response, answer}: prompt = the
task's question, answer = its reference answer (a string), response = the answer itself, or a short
rationale ending ``#### answer`` where the task ships one (``rationale_key``, a metadata field; a final
``#### ...`` line of its own is rewritten to the answer, as gsm_symbolic writes ``#### 8.0`` for ``8``). The
same (task, config, size, seed) always gives the same rows; ``size`` rows are generated, so a split
never runs short. :data:`GYM_TASKS` fixes the configurations the packaged names stand for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError
from .files import require_datasets

if TYPE_CHECKING:
    import datasets

GYM_DEFAULT_SIZE = 1000
GYM_PIP = "pip install reasoning-gym==0.1.25"
_FINAL = re.compile(r"####\s*([^\n]*?)\s*$")


@dataclass(frozen=True)
class GymTask:
    """A reasoning-gym task at one fixed difficulty: its generator name and config keywords."""

    generator: str
    config: dict[str, Any] = field(default_factory=dict)
    rationale_key: str | None = None  #: metadata field with a worked solution, when the task has one


#: packaged name -> task. Difficulties chosen on validation (experiments/nlg-*.yaml give the probes).
GYM_TASKS: dict[str, GymTask] = {
    "chain-sum": GymTask("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}),
    "word-sorting": GymTask("word_sorting", {"min_words": 3, "max_words": 4, "min_word_length": 3,
                                             "max_word_length": 8}),
}


def load_gym_task(generator: str, size: int | None = None, seed: int = 0, config: dict[str, Any] | None = None,
                  rationale_key: str | None = None) -> datasets.Dataset:
    """``size`` (default 1,000) problems of the reasoning-gym task ``generator`` with ``config``, seeded.

    Columns: prompt, response (the answer, or the ``rationale_key`` text with ``#### answer`` as its last
    line), answer (a string, as reasoning-gym gives it).
    """
    ds_lib = require_datasets()
    try:
        from reasoning_gym import create_dataset
    except ImportError as exc:
        raise DataError(f"reasoning-gym tasks need reasoning-gym: `{GYM_PIP}`") from exc
    if size is not None and size < 1:
        raise ConfigError(f"size must be a positive number of rows; got {size}")
    try:
        items = list(create_dataset(generator, size=size or GYM_DEFAULT_SIZE, seed=seed, **(config or {})))
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"reasoning-gym task {generator!r} with {config or {}}: {exc}") from exc
    data: dict[str, list[str]] = {"prompt": [], "response": [], "answer": []}
    for item in items:
        answer = str(item["answer"]).strip()
        rationale = str(item["metadata"].get(rationale_key) or "").rstrip() if rationale_key else ""
        if _FINAL.search(rationale):
            response = _FINAL.sub(lambda _m, a=answer: f"#### {a}", rationale)
        else:
            response = f"{rationale}\n#### {answer}" if rationale else answer
        data["prompt"].append(item["question"])
        data["response"].append(response)
        data["answer"].append(answer)
    return ds_lib.Dataset.from_dict(data)


def gym_loader(name: str) -> Any:
    """The ``loader(size=, seed=)`` of the packaged name ``name`` (a key of :data:`GYM_TASKS`)."""
    task = GYM_TASKS[name]

    def load(size: int | None = None, seed: int = 0) -> datasets.Dataset:
        return load_gym_task(task.generator, size=size, seed=seed, config=task.config,
                             rationale_key=task.rationale_key)

    load.__name__ = load.__qualname__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"reasoning-gym {task.generator!r} with {task.config} (see :func:`load_gym_task`)."
    return load
