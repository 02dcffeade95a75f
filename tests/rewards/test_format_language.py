"""Format rewards (R1-Zero template, R1 pattern) and the language-consistency reward."""

from __future__ import annotations

import pytest

from megatron_r1.rewards import get, names
from megatron_r1.rewards.language import chain_of_thought, language_consistency, word_scripts


def test_builtin_names():
    assert {"math", "code", "format", "format_r1", "language", "exact"} <= set(names())


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("<think>2 + 2 = 4</think><answer>4</answer>", True),
        ("  <think>\nreason\n</think>\n<answer> 4 </answer>\n", True),
        ("<think>r</think><answer>4</answer> trailing", False),
        ("preamble <think>r</think><answer>4</answer>", False),
        ("<think>r</think>", False),
        ("<answer>4</answer>", False),
        ("<think></think><answer>4</answer>", False),
        ("<think>r</think><answer></answer>", False),
        ("<think>r<think>x</think><answer>4</answer>", False),
        ("<think>r</think><answer>4</answer><answer>5</answer>", False),
        ("<think>r</think><think>s</think><answer>4</answer>", False),
        ("<answer>4</answer><think>r</think>", False),
    ],
)
def test_r1_zero_format(completion, ok):
    assert get("format")(completion, {}) == float(ok)


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("<think>\nlet me see\n</think>\n\nThe answer is 4.", True),
        ("let me see\n</think>\nThe answer is 4.", True),  # <think> was in the prompt
        ("<think>r</think>", False),  # no summary
        ("<think></think>summary", False),
        ("no tags at all", False),
        ("<think>a</think>b</think>c", False),
        ("junk<think>a</think>b", False),
        ("<think>a</think>b<think>c", False),
    ],
)
def test_r1_format(completion, ok):
    assert get("format_r1")(completion, {}) == float(ok)
    assert get("format")(completion, {"format": "r1"}) == float(ok)


def test_exact_still_works():
    assert get("exact")("<think>x</think><answer> 85 </answer>", {"answer": 85}) == 1.0
    assert get("exact")("<answer>86</answer>", {"answer": "85"}) == 0.0


def test_chain_of_thought():
    assert chain_of_thought("<think>abc</think>sum") == "abc"
    assert chain_of_thought("abc</think>sum") == "abc"
    assert chain_of_thought("<think>abc") == "abc"
    assert chain_of_thought("plain") == "plain"


def test_word_scripts():
    assert word_scripts("Let's add 2 + 2") == ["latin", "latin"]
    assert word_scripts("我们计算") == ["han"] * 4
    assert word_scripts(r"so $\frac{a}{b}$ then \sqrt x") == ["latin", "latin", "latin"]
    assert word_scripts("Привет мир") == ["cyrillic", "cyrillic"]
    assert word_scripts("こんにちは世界") == ["kana", "han", "han"]
    assert word_scripts("안녕 하세요") == ["hangul", "hangul"]


def test_language_consistency():
    assert language_consistency("all english words here", "en") == 1.0
    assert language_consistency("我们先算 then check", "zh") == pytest.approx(4 / 6)
    assert language_consistency("我们先算 then check", "en") == pytest.approx(2 / 6)
    assert language_consistency("12345 + 6", "en") == 0.0
    assert language_consistency("Это тест", "ru") == 1.0
    assert language_consistency("日本語のテスト", "ja-JP") == 1.0
    with pytest.raises(ValueError):
        language_consistency("x", "klingon")


def test_language_reward_reads_only_the_chain_of_thought():
    completion = "<think>首先 compute 总和</think>The sum is 答案"
    assert get("language")(completion, {"language": "zh"}) == pytest.approx(4 / 5)
    assert get("language")("<think>only english</think>中文总结", {}) == 1.0
