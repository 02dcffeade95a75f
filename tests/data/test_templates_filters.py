"""Prompt templates (R1-Zero, chat template of an HF tokenizer) and row filters."""

from __future__ import annotations

import functools

import pytest

from megatron_r1.data.filters import dedup_rows, filter_by_length, normalise_question
from megatron_r1.data.templates import (
    R1_ZERO_TEMPLATE,
    chat_prompt,
    messages_of,
    question_of,
    r1_zero_prompt,
    render_prompt,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tiny word-level HF tokenizer with a chat template, saved and reloaded like a model's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"])
    tok.train_from_iterator(["what is two plus two", "be brief", "hello there"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_r1_zero_template_is_the_papers():
    prompt = r1_zero_prompt("What is 2+2?")
    assert prompt.startswith("A conversation between User and Assistant. The user asks a question")
    assert "<think> reasoning process here </think> <answer> answer here </answer>." in prompt
    assert prompt.endswith("User: What is 2+2?. Assistant:")
    assert r1_zero_prompt("Add 1 and 2.").endswith("User: Add 1 and 2. Assistant:")
    assert R1_ZERO_TEMPLATE.count("{prompt}") == 1


def test_question_and_messages_of():
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    assert question_of({"prompt": "p"}) == "p" and question_of(chat) == "q"
    assert messages_of({"prompt": "p"}, system="sys") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "p"},
    ]
    assert messages_of(chat, system="other") == chat["messages"]


def test_chat_template(tokenizer):
    text = chat_prompt(tokenizer, {"prompt": "what is two plus two"}, system="be brief")
    assert text == "<|system|>be brief<|end|><|user|>what is two plus two<|end|><|assistant|>"
    assert render_prompt({"prompt": "hi"}, "chat", tokenizer) == "<|user|>hi<|end|><|assistant|>"


def test_render_prompt_errors(tokenizer):
    assert render_prompt({"prompt": "hi"}, "plain") == "hi"
    with pytest.raises(ValueError, match="needs a tokenizer"):
        render_prompt({"prompt": "hi"}, "chat")
    with pytest.raises(ValueError, match="unknown template"):
        render_prompt({"prompt": "hi"}, "alpaca")
    tokenizer_without = type("T", (), {"chat_template": None})()
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(tokenizer_without, {"prompt": "hi"})


def test_dedup_rows():
    rows = [
        {"prompt": "What is  2+2?", "answer": "4"},
        {"prompt": "what is 2+2?", "answer": "4", "source": "other"},
        {"messages": [{"role": "user", "content": "WHAT IS 2+2?"}]},
        {"prompt": "What is 3+3?"},
    ]
    assert dedup_rows(rows) == [rows[0], rows[3]]
    assert dedup_rows(rows, key=lambda r: r.get("source", "")) == [rows[0], rows[1]]
    assert normalise_question(" Ｑ  x ") == "q x"


def test_filter_by_length(tokenizer):
    rows = [{"prompt": "what is two plus two"}, {"prompt": "hello"}, {"prompt": " "}]
    count = lambda s: len(tokenizer(s).input_ids)
    assert filter_by_length(rows, max_tokens=3, count_tokens=count) == [rows[1]]
    assert filter_by_length(rows, max_tokens=10, count_tokens=count) == rows[:2]
    render = functools.partial(render_prompt, template="r1_zero")
    assert filter_by_length(rows, max_tokens=10, count_tokens=lambda s: len(s.split()), render=render) == []
