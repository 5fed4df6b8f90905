"""Batched greedy generation for the NLG evaluations (design §4): math answers and code.

Works with any transformers causal LM and a peft model wrapping one. Prompts are left-padded, so each
batch's new tokens start at the same column and every row sees exactly the positions it would see
alone (position ids follow the attention mask); batched output equals one-by-one output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from balora.errors import ConfigError


def format_prompt(tokenizer: Any, prompt: str, use_chat_template: bool = True) -> tuple[str, bool]:
    """(text to tokenize, whether a chat template was applied).

    With a chat template the prompt becomes one user turn followed by the assistant's generation
    prompt; the template supplies the special tokens, so the caller must not add them again.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return text, True
    return prompt, False


def truncate_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """``text`` up to (not including) the earliest of ``stop_strings``."""
    if not stop_strings:
        return text
    cut = min((i for s in stop_strings if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _stop_criteria(tokenizer: Any, prompt_len: int, stop_strings: Sequence[str]) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopOnStrings(StoppingCriteria):
        """Marks a row finished once its new text contains a stop string (the rest is cut later)."""

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            done = [any(s in t for s in stop_strings) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopOnStrings()])


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 8,
    use_chat_template: bool = True,
    stop_strings: Sequence[str] | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts``, in order: only the new text, special tokens skipped.

    Batches of ``batch_size`` prompts of similar length (sorted, then restored to the input order),
    left-padded; the tokenizer's pad token falls back to its eos token. ``stop_strings`` end a row's
    generation early and are cut from the returned text. The model runs in eval mode under
    ``torch.inference_mode()``; its training mode and the tokenizer's padding side and pad token are
    restored afterwards.
    """
    import torch
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return []
    formatted = [format_prompt(tokenizer, p, use_chat_template) for p in prompts]
    add_special = not formatted[0][1]
    texts = [t for t, _ in formatted]

    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    modes = [(m, m.training) for m in model.modules()]  # restored module by module
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        device = next(model.parameters()).device
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        outputs: list[str] = [""] * len(texts)
        model.eval()
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for idx in tqdm(batches, desc="generate", disable=not progress or None):
                enc = tokenizer(
                    [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=add_special
                )
                input_ids = enc["input_ids"].to(device)
                attention_mask = enc["attention_mask"].to(device)
                prompt_len = input_ids.shape[1]
                kwargs: dict[str, Any] = {}
                if stop_strings:
                    kwargs["stopping_criteria"] = _stop_criteria(tokenizer, prompt_len, stop_strings)
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    **kwargs,
                )
                new_tokens = generated[:, prompt_len:]
                decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i, text in zip(idx, decoded, strict=True):
                    outputs[i] = truncate_at_stop(text, stop_strings)
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None
        for module, mode in modes:
            module.training = mode
    return outputs
