"""Chat data: a ``messages`` column of system/user/assistant turns, through the tokenizer's chat template,
with the loss on the assistant turns only (design §9).

For assistant turn i the scored tokens are those the template adds between the conversation up to turn i-1
with the assistant header (``add_generation_prompt=True``) and the conversation up to turn i: the turn's
content and its end-of-turn marker, never the header. Each rendering must extend the previous one token
for token; a template that rewrites earlier turns (e.g. drops past reasoning) is named in the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataError, ModelError
from .nlg import IGNORE_INDEX

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


def check_turns(messages: Any, row: int) -> list[dict[str, str]]:
    """The conversation of one row as [{"role", "content"}], or a one-line error naming the row and turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"row {row}: 'messages' must be a non-empty list of turns, got {type(messages).__name__}.")
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"row {row}, turn {i}: a turn is {{\"role\": {'/'.join(ROLES)}, \"content\": text}}, "
                            f"got {str(turn)[:80]!r}.")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"row {row}: the conversation has no assistant turn to learn from.")
    return turns


def _ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]],
                row: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are the ids on assistant turns, -100 elsewhere."""
    ids: list[int] = []
    labels: list[int] = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        prompt = _ids(tokenizer, turns[:i], generation_prompt=True)
        full = _ids(tokenizer, turns[: i + 1], generation_prompt=False)
        if prompt[: len(ids)] != ids or full[: len(prompt)] != prompt:
            raise DataError(f"row {row}, turn {i}: the chat template renders the earlier turns differently once "
                            "this turn is added, so the assistant tokens cannot be told apart.")
        labels += [IGNORE_INDEX] * (len(prompt) - len(ids)) + full[len(prompt):]
        ids = full
    return ids, labels


def tokenize_chat(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, messages_column: str = "messages",
                  max_length: int = 512) -> datasets.Dataset:
    """Columns input_ids, attention_mask, labels; truncated from the right to ``max_length``; a row with no
    assistant token left is dropped. Unpadded: use :func:`balora.data.sft_collator`."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"the tokenizer has no chat template, so the {messages_column!r} column cannot be "
                         "rendered; use a chat model or prompt/response columns.")
    if messages_column not in dataset.column_names:
        raise DataError(f"no {messages_column!r} column; the columns are: {', '.join(dataset.column_names)}.")

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for messages, row in zip(batch[messages_column], indices, strict=True):
            ids, labels = encode_chat(tokenizer, check_turns(messages, row), row)
            ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                continue
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    result = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                         desc="tokenizing chats")
    if result.num_rows == 0:
        raise DataError(f"no conversation keeps an assistant token within max_length={max_length}; raise it.")
    return result
