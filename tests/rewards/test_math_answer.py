"""Math accuracy reward: extraction, math-verify equivalence, gaming attempts, bounded time."""

from __future__ import annotations

import pytest

from megatron_r1.rewards import get
from megatron_r1.rewards.math_answer import answers_equivalent, extract_final_answer, find_boxed

# (gold, answer) pairs in competition formats that must be judged equal.
EQUIVALENT = [
    ("42", "42"),
    ("42", "42.0"),
    ("42", " 42 "),
    ("-7", "-7"),
    ("0", "0.0"),
    ("1000", "1,000"),
    ("1000000", "1{,}000{,}000"),
    ("10", "10."),
    ("1/2", "0.5"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "\\tfrac12"),
    ("\\frac12", "1/2"),
    ("\\frac{3}{4}", "0.75"),
    ("\\frac{-3}{4}", "-\\frac{3}{4}"),
    ("-\\frac{3}{4}", "-0.75"),
    ("\\frac{7}{3}", "\\frac{14}{6}"),
    ("0.25", "\\frac{1}{4}"),
    ("0.125", "1/8"),
    ("2.50", "2.5"),
    ("50\\%", "50"),
    ("50\\%", "50\\%"),
    ("25\\%", "25"),
    ("\\sqrt{2}", "\\sqrt2"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("3\\sqrt{2}", "\\sqrt{18}"),
    ("\\pi", "\\pi"),
    ("2\\pi", "2 \\pi"),
    ("\\frac{\\pi}{4}", "\\pi/4"),
    ("\\infty", "\\infty"),
    ("e^2", "e^{2}"),
    ("2^{10}", "1024"),
    ("3^4", "81"),
    ("5!", "120"),
    ("\\binom{5}{2}", "10"),
    ("\\log_2 8", "3"),
    ("x^2+2x+1", "(x+1)^2"),
    ("x^2-1", "(x-1)(x+1)"),
    ("2x+1", "1+2x"),
    ("\\frac{x}{2}", "0.5x"),
    ("y=2x+1", "y = 1+2x"),
    ("x=3", "3"),
    ("3", "x=3"),
    ("(0,1]", "(0,1]"),
    ("[0,1]", "[0, 1]"),
    ("(-\\infty, 2)", "(-\\infty,2)"),
    ("[2,\\infty)", "[2, \\infty)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("(1,2)", "(1, 2)"),
    ("(3,-4)", "(3, -4)"),
    ("5", "5\\text{ cm}"),
    ("5", "5 \\text{ cm}"),
    ("12", "12\\text{ meters}"),
    ("90", "90^\\circ"),
    ("90", "90^{\\circ}"),
    ("45^\\circ", "45"),
    ("A", "\\text{(A)}"),
    ("B", "B"),
    ("\\text{B}", "B"),
    ("i", "i"),
    ("1+i", "i+1"),
    ("\\frac{1+\\sqrt{5}}{2}", "\\frac{\\sqrt{5}+1}{2}"),
    ("2\\sqrt{2}+1", "1+2\\sqrt{2}"),
    ("\\frac{2}{3}", "\\frac{4}{6}"),
    ("\\frac{10}{4}", "2.5"),
    ("0.333333", "0.333333"),
    ("\\frac{1}{3}", "0.3333333"),
    ("-1", "-1.0"),
    ("100", "10^2"),
    ("1.5", "\\frac{3}{2}"),
    ("\\$5", "5"),
    ("5", "\\$5"),
    ("\\$1.50", "1.5"),
    ("8", "8.000"),
    ("10^3", "1000"),
    ("2", "\\sqrt{4}"),
    ("\\sqrt[3]{8}", "2"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("\\cos 0", "1"),
]

# (gold, answer) pairs that must be judged different.
NOT_EQUIVALENT = [
    ("42", "43"),
    ("42", "-42"),
    ("42", "4.2"),
    ("42", "420"),
    ("1/2", "1/3"),
    ("\\frac{1}{2}", "2"),
    ("0.5", "0.55"),
    ("50\\%", "0.6"),
    ("\\sqrt{2}", "2"),
    ("\\sqrt{2}", "1.41"),
    ("\\pi", "3.14"),
    ("\\pi", "3.14159"),
    ("2\\pi", "\\pi"),
    ("x^2+2x+1", "(x-1)^2"),
    ("2x+1", "2x-1"),
    ("y=2x+1", "y=2x+2"),
    ("x=3", "4"),
    ("(0,1]", "[0,1]"),
    ("(0,1]", "(0,1)"),
    ("[0,1]", "[0,2]"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("(1,2)", "(2,1)"),
    ("(3,-4)", "(3,4)"),
    ("5", "6\\text{ cm}"),
    ("90", "180"),
    ("A", "B"),
    ("A", "C"),
    ("i", "-i"),
    ("1+i", "1-i"),
    ("\\frac{1+\\sqrt{5}}{2}", "\\frac{1-\\sqrt{5}}{2}"),
    ("\\infty", "-\\infty"),
    ("100", "10^3"),
    ("2", "\\text{two}"),
    ("7", ""),
    ("7", "7, 8"),
    ("42", "1, 2, 3, 42"),
    ("3", "9^{9^{9^{9}}}"),
    ("3", "100000!"),
    ("65536", "2^{2^{2^{2}}}"),
]


@pytest.mark.parametrize("gold, answer", EQUIVALENT)
def test_equivalent(gold, answer):
    assert answers_equivalent(gold, answer), (gold, answer)


@pytest.mark.parametrize("gold, answer", NOT_EQUIVALENT)
def test_not_equivalent(gold, answer):
    assert not answers_equivalent(gold, answer), (gold, answer)


def test_pair_count():
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 100


def test_find_boxed_nested():
    text = r"so \boxed{\frac{1}{\sqrt{2}}} and \fbox{3} and \boxed{ {a}{b} }"
    assert find_boxed(text) == [r"\frac{1}{\sqrt{2}}", "3", "{a}{b}"]
    assert find_boxed(r"\boxed{unclosed") == []


@pytest.mark.parametrize(
    "completion, expected",
    [
        (r"<think>2+2</think><answer>4</answer>", "4"),
        (r"<think>\boxed{5}</think><answer>The answer is \boxed{4}.</answer>", "4"),
        (r"Therefore the answer is $\boxed{\dfrac{3}{4}}$.", r"\dfrac{3}{4}"),
        (r"\boxed{4} hmm, so \boxed{ 4 }", "4"),
        (r"\boxed{4} or maybe \boxed{5}", None),
        ("the answer is 4", None),
        ("<answer></answer>", None),
    ],
)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


def test_math_reward_end_to_end():
    math = get("math")
    assert math(r"<think>half</think><answer>\boxed{\frac12}</answer>", {"answer": "0.5"}) == 1.0
    assert math(r"The probability is $\boxed{50\%}$", {"answer": "\\frac{1}{2}"}) in (0.0, 1.0)
    assert math(r"So $x = \boxed{7}$.", {"answer": 7}) == 1.0
    assert math(r"So $x = \boxed{8}$.", {"answer": 7}) == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        r"\boxed{6} \boxed{7} \boxed{8}",  # several different boxed answers
        r"\boxed{" + ", ".join(str(i) for i in range(1000)) + "}",  # every integer
        r"<answer>" + " ".join(str(i) for i in range(200)) + "</answer>",
        "Let me compute: the answer is 7.",  # answer only in the reasoning
        "<think>the answer is 7</think>",
        r"\boxed{" + "7" * 2_000_000 + "}",  # MB-long answer
        r"\boxed{9^{9^{9^{9^{9}}}}}",  # tower of powers
        r"\boxed{123456789!}",  # huge factorial
        r"\boxed{" * 5000 + "7" + "}" * 5000,  # deep nesting
    ],
)
def test_gaming_attempts_score_zero(completion):
    assert get("math")(completion, {"answer": "7"}) == 0.0
