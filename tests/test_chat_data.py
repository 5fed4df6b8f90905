"""Chat data (a ``messages`` column) through the chat template with the loss on assistant turns only, TRL's
prompt/completion columns, and one-line errors for a missing template or a malformed turn."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from balora.cli.main import main
from balora.data import tokenize_chat
from balora.data.chat import encode_chat
from balora.errors import DataError, ModelError
from balora.models import tiny_model, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<a>{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"}]


def _decode(tokenizer, ids):
    return tokenizer.decode(ids)


def test_only_assistant_turns_and_their_end_markers_are_scored():
    tokenizer = tiny_tokenizer("llama", chat_template=TEMPLATE)
    ids, labels = encode_chat(tokenizer, CHAT)
    assert _decode(tokenizer, ids) == "<s>Be brief.</s><u>2+2?</s><a>4</s><u>3+3?</s><a>6</s>"
    scored = [i for i, label in enumerate(labels) if label != -100]
    assert [labels[i] for i in scored] == [ids[i] for i in scored]
    assert _decode(tokenizer, [ids[i] for i in scored]) == "4</s>6</s>"  # no header, no user text
    short = tokenize_chat(Dataset.from_list([{"messages": CHAT}]), tokenizer, max_length=24)
    assert len(short[0]["input_ids"]) == 24 and _decode(tokenizer, [t for t in short[0]["labels"] if t != -100]) \
        == "4</s>"


@pytest.mark.parametrize(("messages", "message"), [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "row 0, turn 1"),
    ([{"role": "assistant", "content": 3}], "row 0, turn 0"),
    ("hello", "non-empty list of turns"),
])
def test_malformed_conversations_are_named(messages, message):
    tokenizer = tiny_tokenizer("llama", chat_template=TEMPLATE)
    with pytest.raises(DataError, match=message):
        tokenize_chat(Dataset.from_list([{"messages": messages}]), tokenizer)


def test_a_tokenizer_without_chat_template_is_an_error():
    with pytest.raises(ModelError, match="no chat template"):
        tokenize_chat(Dataset.from_list([{"messages": CHAT}]), tiny_tokenizer("llama"))


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinychat")
    model, _ = tiny_model("llama", "causal-lm")
    model.save_pretrained(folder)
    tiny_tokenizer("llama", chat_template=TEMPLATE).save_pretrained(folder)
    return folder


def test_balora_train_reads_messages_and_trl_prompt_completion(chat_model_dir, tmp_path, capsys):
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+1?"},
                                                      {"role": "assistant", "content": str(a + 1)}]}) + "\n"
                             for a in range(30)))
    out = tmp_path / "chat"
    common = ["--model", str(chat_model_dir), "--method", "ba-lora", "--max-steps", "2", "--batch-size", "4",
              "--rank", "4", "--max-length", "32", "--generate-size", "2", "--max-new-tokens", "2"]
    assert main(["train", "--dataset", str(chats), "--output", str(out), *common]) == 0
    assert json.loads((out / "run_info.json").read_text())["task"] == "chat"
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] > 0

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+1?", "completion": str(a + 1)}) + "\n" for a in range(30)))
    assert main(["train", "--dataset", str(pairs), "--output", str(tmp_path / "pc"), *common]) == 0
    assert json.loads((tmp_path / "pc" / "run_info.json").read_text())["task"] == "sft"

    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}) + "\n"
                           for _ in range(10)))
    capsys.readouterr()
    assert main(["train", "--dataset", str(bad), "--output", str(tmp_path / "bad"), *common]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "row 0, turn 1" in errors[0] and "Traceback" not in errors[0]
