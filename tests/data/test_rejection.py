"""Rejection-sampling filters: only correct, readable, distinct, complete responses are kept."""

from megatron_r1.config import RejectionConfig
from megatron_r1.data.rejection import Candidate, longest_paragraph, select

ROW = {"prompt": "12+30=", "answer": "42"}
GOOD = "<think>2+0+0=2 1+3+0=4</think><answer>42</answer>"


def cand(text=GOOD, correct=1.0, tokens=20, truncated=False, row=ROW):
    return Candidate(text=text, row=row, correct=correct, tokens=tokens, truncated=truncated)


def test_each_filter_rejects_for_its_reason():
    cfg = RejectionConfig(max_keep_per_prompt=0, max_paragraph_chars=40)
    cases = {
        "incorrect": cand(text="<think>2+0+0=2 1+3+0=5</think><answer>52</answer>", correct=0.0),
        "language_mixing": cand(text="<think>first add 2 and 0, 然后 加 1 和 3</think><answer>42</answer>"),
        "long_paragraph": cand(
            text="<think>" + "add the ones digits first " * 3 + "</think><answer>42</answer>"
        ),
        "code_in_reasoning": cand(text="<think>```python\nprint(12+30)\n```</think><answer>42</answer>"),
        "too_long": cand(tokens=65),
    }
    for reason, candidate in cases.items():
        kept, reasons = select([candidate], cfg, max_tokens=64)
        assert kept == [] and reasons == {reason: 1}, (reason, reasons)
    truncated = select([cand(truncated=True)], cfg, max_tokens=64)
    assert truncated[0] == [] and truncated[1] == {"too_long": 1}


def test_keeps_correct_distinct_ones_up_to_the_quota():
    english = (
        "<think>Add the ones: 2 plus 0 is 2.\n\nThen the tens: 1 plus 3 is 4.</think><answer>42</answer>"
    )
    samples = [cand(), cand(text=GOOD + " "), cand(correct=0.0), cand(text=english)]
    kept, reasons = select(samples, RejectionConfig(max_keep_per_prompt=0), max_tokens=64)
    assert kept == [0, 3] and reasons == {"duplicate": 1, "incorrect": 1}
    kept, reasons = select(samples, RejectionConfig(max_keep_per_prompt=1), max_tokens=64)
    assert kept == [0] and reasons == {"duplicate": 1, "incorrect": 1, "over_quota": 1}


def test_digit_only_reasoning_is_not_language_mixing_but_another_script_is():
    cfg = RejectionConfig(max_keep_per_prompt=0)
    assert select([cand()], cfg, 64)[0] == [0]
    russian = cand(text="<think>сложим единицы</think><answer>42</answer>")
    assert select([russian], cfg, 64)[1] == {"language_mixing": 1}
    assert select([cand(text=russian.text, row={**ROW, "language": "ru"})], cfg, 64)[0] == [0]


def test_longest_paragraph():
    assert longest_paragraph("ab\n\ncdef\n  \nxyz") == 4
