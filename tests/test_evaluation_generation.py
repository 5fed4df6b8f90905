"""Batched greedy generation (SPEC section 4): left padding must give the one-by-one result."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from balora.errors import ConfigError
from balora.evaluation import format_prompt, generate_greedy, truncate_at_stop

VOCAB = 100
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return LlamaForCausalLM(config)


PROMPTS = ["w5 w6 w7", "w10", "w20 w21 w22 w23 w24 w25 w26 w27", "w40 w41", "w60 w61 w62 w63", "w88"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_batched_equals_one_by_one(model, tokenizer):
    batched = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
              for p in PROMPTS]
    assert batched == single
    assert any(batched)  # not trivially empty
    assert all(n_tokens(tokenizer, t) <= 6 for t in batched)
    assert max(n_tokens(tokenizer, t) for t in batched) == 6


def test_returns_only_the_new_text(model, tokenizer):
    prompt = PROMPTS[2]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=0)
    expected = tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert generate_greedy(model, tokenizer, [prompt], max_new_tokens=5, progress=False) == [expected]


def test_state_is_restored(tokenizer):
    model = tiny_model()
    model.train()
    tok = tiny_tokenizer()
    tok.pad_token = None  # falls back to eos during generation
    tok.padding_side = "right"
    out = generate_greedy(model, tok, PROMPTS[:3], max_new_tokens=3, batch_size=3, progress=False)
    assert len(out) == 3
    assert model.training and all(m.training for m in model.modules())
    assert tok.padding_side == "right" and tok.pad_token is None
    # the eos fallback pads like <pad> does: same greedy text
    assert out == generate_greedy(model, tokenizer, PROMPTS[:3], max_new_tokens=3, progress=False)


def test_chat_template_is_applied(model):
    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<bos> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w9{% endif %}"
    )
    text, templated = format_prompt(tok, "w5 w6")
    assert templated and text.strip() == "<bos> w5 w6 w9"
    assert format_prompt(tok, "w5 w6", use_chat_template=False) == ("w5 w6", False)
    with_template = generate_greedy(model, tok, ["w5 w6"], max_new_tokens=4, progress=False)
    manual = generate_greedy(model, tok, [text], max_new_tokens=4, use_chat_template=False, progress=False)
    assert with_template == manual


def test_stop_strings_cut_the_text(model, tokenizer):
    full = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False)
    row = max(range(len(full)), key=lambda i: n_tokens(tokenizer, full[i]))
    stop = full[row].split()[2]
    stopped = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=[stop], progress=False)
    assert stopped == [truncate_at_stop(t, [stop]) for t in full]
    assert stop not in stopped[row] and len(stopped[row]) < len(full[row])


def test_peft_model_batched_equals_one_by_one(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(1), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so the wrapped path really matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batched = generate_greedy(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=3, progress=False)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=5, progress=False)[0] for p in PROMPTS]
    assert batched == single


def test_truncate_at_stop_and_bad_arguments(model, tokenizer):
    assert truncate_at_stop("abc\n\nQuestion: x", ["\n\nQuestion", "x"]) == "abc"
    assert truncate_at_stop("abc", None) == "abc"
    assert generate_greedy(model, tokenizer, [], max_new_tokens=3) == []
    with pytest.raises(ConfigError):
        generate_greedy(model, tokenizer, ["w5"], max_new_tokens=0)
