"""Tokenizers from a local HF directory: loads offline, names the missing file."""

from __future__ import annotations

import json

import pytest

from megatron_r1.config import ConfigError
from megatron_r1.data.hf_tokenizer import load_tokenizer


def _write_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "unk_token": "<unk>"})
    )


def test_loads_local_tokenizer_and_sets_pad(tmp_path):
    _write_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer("hello world")["input_ids"] == [2, 3]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_missing_file_is_named(tmp_path, missing):
    _write_tokenizer(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ConfigError, match=missing.replace(".", r"\.")):
        load_tokenizer(tmp_path)
