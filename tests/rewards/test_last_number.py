"""``last_number``: the last integer written must equal the answer — and the ways to game that score 0."""

from __future__ import annotations

import pytest

from megatron_r1.rewards import get
from megatron_r1.rewards.basic import last_number

ROW = {"prompt": "What is 7 + 5? Answer with just the number.", "answer": 12}

RIGHT = [
    "12",
    " 12\n",
    "7 + 5 = 12",
    "The answer is 12.",
    "12!",
    "**12**",
    "(12)",
    "012",
    "It is 50% of 24, which is 12",
]
WRONG = [
    "",
    "twelve",
    "12 or 13",  # a list of guesses is judged by its last
    "12, no wait, 11",
    "7 + 5 = 12 - 0.5",  # the last number is 0.5
    "12.0",  # a decimal is not an integer answer
    "12.5",
    "12.5x",
    "The sum is 12.3",
    "-12",
    "x12",  # glued to a word: not a number
    "12th",
    "size_12",
    "١٢",  # Arabic-Indic digits are not ASCII digits
    "1 2",
    "15 - 3",  # an expression whose value is the answer is still not the answer
]


@pytest.mark.parametrize("completion", RIGHT)
def test_the_answer_as_last_number_scores_one(completion):
    assert get("last_number")(completion, ROW) == 1.0


@pytest.mark.parametrize("completion", WRONG)
def test_anything_else_scores_zero(completion):
    assert get("last_number")(completion, ROW) == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [("9-4", "4"), ("9 - 4", "4"), ("9 -4", "4"), ("= -3", "-3"), ("(-3)", "-3"), ("(2)-3", "3")],
)
def test_a_minus_sign_is_a_sign_only_where_no_operand_precedes_it(text, number):
    assert last_number(text) == number


def test_negative_and_string_answers():
    assert get("last_number")("3 - 5 = -2", {"answer": -2}) == 1.0
    assert get("last_number")("3 - 5 = 2", {"answer": -2}) == 0.0
    assert get("last_number")("12", {"answer": " 12 "}) == 1.0


@pytest.mark.parametrize("answer", ["12.5", "twelve", 12.0, ""])
def test_a_non_integer_answer_is_an_error_naming_it(answer):
    with pytest.raises(ValueError, match="last_number: row\\['answer'\\]"):
        get("last_number")("12", {"answer": answer})
