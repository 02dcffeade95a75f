"""The tokenizer built into the package, for the embedded demo and the tests.

Characters are tokens; the R1 tags (``<think>``, ``</think>``, ``<answer>``, ``</answer>``) and the control
tokens (``<pad>``, ``<bos>``, ``<eos>``) are single tokens, so a tiny model spends no capacity spelling them.
It has the small part of the Hugging Face tokenizer interface the framework uses (``encode``, ``decode``,
``vocab_size``, ``eos_token_id``, ``pad_token_id``).
"""

from __future__ import annotations

import re
import string

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = string.digits + "+-*/=()., ?:" + string.ascii_letters + "\n"


class CharTokenizer:
    """Character-level tokenizer with the R1 tags as single tokens."""

    def __init__(self) -> None:
        self.vocab = list(SPECIAL_TOKENS) + list(CHARACTERS)
        self._ids = {tok: i for i, tok in enumerate(self.vocab)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
        self.pad_token_id = self._ids["<pad>"]
        self.bos_token_id = self._ids["<bos>"]
        self.eos_token_id = self._ids["<eos>"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary is an error naming it."""
        ids = [self.bos_token_id] if add_special_tokens else []
        for piece in self._split.split(text):
            if piece in self._ids and piece in SPECIAL_TOKENS:
                ids.append(self._ids[piece])
                continue
            for ch in piece:
                if ch not in self._ids:
                    raise ValueError(f"character {ch!r} is not in the built-in tokenizer's vocabulary")
                ids.append(self._ids[ch])
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        skip = {self.pad_token_id, self.bos_token_id, self.eos_token_id} if skip_special_tokens else ()
        return "".join(self.vocab[i] for i in ids if i not in skip)
