"""Instruction/response pairs as causal-LM examples with the loss on the response only (design §4, NLG).

Each example is ``prompt_ids + response_ids + [eos]`` with ``labels = [-100] * len(prompt_ids) +
response_ids + [eos]`` (unshifted; the model shifts). Prompt and response are tokenized separately, so the
boundary is exact. Batches are padded by :func:`sft_collator` (``DataCollatorForSeq2Seq`` with
``label_pad_token_id=-100``, right padding).
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from ..errors import DataError, ModelError
from .nlu import check_columns

if TYPE_CHECKING:
    import datasets
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. BOS); trailing ones (EOS, SEP) are left out."""
    with_special = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True) -> str:
    """The prompt as the model sees it: a user turn plus the assistant header when there is a chat template."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt exactly as :func:`tokenize_sft` builds them (for generation at evaluation)."""
    has_template = use_chat_template and getattr(tokenizer, "chat_template", None)
    prefix = [] if has_template else _leading_special_ids(tokenizer)
    text = render_prompt(tokenizer, prompt, use_chat_template)
    return prefix + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_sft(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    prompt_column: str = "prompt",
    response_column: str = "response",
    max_length: int = 512,
    use_chat_template: bool = True,
) -> datasets.Dataset:
    """Columns input_ids, attention_mask, labels (-100 on every prompt token); other columns removed.

    With a chat template (and ``use_chat_template``) the prompt is rendered as a user message with
    ``add_generation_prompt=True``; without one it is the raw text after the tokenizer's leading special
    tokens (e.g. BOS). The response is followed by eos. Truncation keeps the whole prompt and cuts the
    response from the right; an example with no response token left, or a null prompt/response, is
    dropped (count logged). Unpadded: use :func:`sft_collator`.
    """
    check_columns(dataset, [prompt_column, response_column])
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no eos token; set tokenizer.eos_token before building SFT data")
    if max_length < 2:
        raise DataError(f"max_length={max_length} leaves no room for a prompt and a response")
    eos = tokenizer.eos_token_id
    has_template = use_chat_template and getattr(tokenizer, "chat_template", None)
    prefix = [] if has_template else _leading_special_ids(tokenizer)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for prompt, response in zip(batch[prompt_column], batch[response_column], strict=True):
            if not isinstance(prompt, str) or not isinstance(response, str):
                continue
            text = render_prompt(tokenizer, prompt, use_chat_template)
            prompt_ids = prefix + list(tokenizer(text, add_special_tokens=False)["input_ids"])
            room = max_length - len(prompt_ids)
            if room <= 0:
                continue
            response_ids = (list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [eos])[:room]
            ids = prompt_ids + response_ids
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append([IGNORE_INDEX] * len(prompt_ids) + response_ids)
        return out

    before = dataset.num_rows
    result = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    dropped = before - result.num_rows
    if dropped:
        log.info("dropped %d of %d examples: null prompt/response, or no response token left within "
                 "max_length=%d", dropped, before, max_length)
    if result.num_rows == 0:
        raise DataError(f"no example left: every prompt fills max_length={max_length} (raise it) or is null")
    return result


def sft_collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None
                 ) -> DataCollatorForSeq2Seq:
    """Pads input_ids/attention_mask with the pad token and labels with -100, on the right."""
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.pad_token_id is None:
        raise ModelError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    right = copy.copy(tokenizer)
    right.padding_side = "right"
    return DataCollatorForSeq2Seq(right, padding=True, label_pad_token_id=IGNORE_INDEX,
                                  pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
