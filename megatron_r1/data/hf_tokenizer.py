"""Tokenizers from a local Hugging Face model directory (no hub access).

``load_tokenizer(path)`` checks that the files transformers needs are there (``tokenizer_config.json`` and
either ``tokenizer.json`` or a slow-tokenizer vocabulary) and names the missing one, then loads with
``AutoTokenizer.from_pretrained(path, local_files_only=True)``. A pad token is set to EOS when the tokenizer
has none (batched rollouts pad).
"""

from __future__ import annotations

from pathlib import Path

from megatron_r1.config import ConfigError

# Files that can stand in for tokenizer.json (slow tokenizers: sentencepiece or BPE vocab + merges).
_SLOW_VOCAB = ("tokenizer.model", "vocab.json")


def check_tokenizer_files(path: str | Path) -> None:
    """Raise :class:`ConfigError` naming the first missing tokenizer file of a local directory."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"tokenizer directory {root} does not exist")
    if not (root / "tokenizer_config.json").is_file():
        raise ConfigError(f"{root / 'tokenizer_config.json'} is missing (needed to load the tokenizer)")
    if not (root / "tokenizer.json").is_file() and not any((root / n).is_file() for n in _SLOW_VOCAB):
        raise ConfigError(f"{root / 'tokenizer.json'} is missing (needed to load the tokenizer)")


def load_tokenizer(path: str | Path):
    """A transformers tokenizer from a local HF directory (local files only)."""
    from transformers import AutoTokenizer

    check_tokenizer_files(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
