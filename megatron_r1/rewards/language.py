"""Language-consistency reward (R1 paper §2.3.2): the share of chain-of-thought words written in the
target language ``row["language"]`` (default ``"en"``).

Words are found and classified by Unicode script, no model involved: runs of Latin, Cyrillic, Greek,
Arabic, Hebrew, Devanagari, Thai, Hangul or kana letters are one word each; every Han character is a
word (Chinese is written without spaces). A language maps to the scripts it is written in (``ja``:
Han + kana, ``ko``: Hangul + Han). Numbers, punctuation, LaTeX commands (``\\frac``) and ``$...$``
math are not words. The chain of thought is the text inside ``<think> ... </think>`` (or before
``</think>`` when the opening tag was in the prompt); without think tags, the whole completion.
A CoT without words scores 0.0. Departure from the paper: languages sharing a script (English vs
French) are not told apart.
"""

from __future__ import annotations

import re

from megatron_r1.rewards import register

_SCRIPTS = {
    "latin": r"[A-Za-z\u00C0-\u024F\u1E00-\u1EFF]+(?:['’][A-Za-z]+)?",
    "han": r"[\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]",
    "kana": r"[\u3040-\u309F\u30A0-\u30FF\u31F0-\u31FF]+",
    "hangul": r"[\uAC00-\uD7AF\u1100-\u11FF\u3130-\u318F]+",
    "cyrillic": r"[\u0400-\u04FF]+",
    "greek": r"[\u0370-\u03FF]+",
    "arabic": r"[\u0600-\u06FF\u0750-\u077F]+",
    "hebrew": r"[\u0590-\u05FF]+",
    "devanagari": r"[\u0900-\u097F]+",
    "thai": r"[\u0E00-\u0E7F]+",
}
_WORD_RE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _SCRIPTS.items()))
_MATH_RE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.S)
_LATIN_LANGUAGES = "en fr de es it pt nl sv da no fi pl cs ro hu tr id vi ms sw".split()
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: frozenset({"latin"}) for code in _LATIN_LANGUAGES},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul", "han"}),
    "ru": frozenset({"cyrillic"}),
    "uk": frozenset({"cyrillic"}),
    "el": frozenset({"greek"}),
    "ar": frozenset({"arabic"}),
    "he": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
}


def chain_of_thought(completion: str) -> str:
    """The reasoning part of ``completion`` (see module docstring)."""
    if "</think>" in completion:
        reasoning = completion.split("</think>")[0]
        return reasoning.split("<think>")[-1]
    if "<think>" in completion:
        return completion.split("<think>")[-1]
    return completion


def word_scripts(text: str) -> list[str]:
    """The script of every word of ``text``, in order."""
    text = _MATH_RE.sub(" ", text)
    return [match.lastgroup for match in _WORD_RE.finditer(text)]


def language_consistency(text: str, language: str = "en") -> float:
    """Share of the words of ``text`` written in a script of ``language`` (0.0 without words)."""
    code = language.lower().replace("_", "-").split("-")[0]
    if code not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    scripts = word_scripts(text)
    if not scripts:
        return 0.0
    target = LANGUAGE_SCRIPTS[code]
    return sum(s in target for s in scripts) / len(scripts)


@register("language")
def language_reward(completion: str, row: dict) -> float:
    """Share of chain-of-thought words in ``row["language"]`` (default English)."""
    return language_consistency(chain_of_thought(completion), row.get("language") or "en")
