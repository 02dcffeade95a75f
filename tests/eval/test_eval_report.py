"""The eval report: pass@1 / pass@k / cons@k overall and per source, lengths, format and language rates."""

import pytest

from megatron_r1.eval.report import build_report, to_markdown


def test_report_overall_and_per_source():
    # 3 problems, k = 2: a (both right), b (one right, majority tie → first answer "7" wrong), c (none)
    sources = ["arith", "arith", "gsm"]
    answers = ["5", "5", "7", "8", None, "3"]
    correct = [1, 1, 0, 1, 0, 0]
    lengths = [10, 12, 20, 30, 5, 7]
    formats = [1, 1, 1, 0, 0, 1]
    languages = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    r = build_report(sources, answers, correct, lengths, formats, languages, k=2)
    o = r["overall"]
    assert o["pass@1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert o["pass@2"] == pytest.approx(2 / 3)
    assert o["cons@2"] == pytest.approx(1 / 3)
    assert o["problems"] == 3 and o["samples"] == 6
    assert o["length/mean"] == pytest.approx(14.0) and o["length/max"] == 30.0
    assert o["format_rate"] == pytest.approx(4 / 6) and o["language_consistency"] == pytest.approx(5.5 / 6)
    assert r["per_source"]["arith"]["pass@1"] == pytest.approx(0.75)
    assert r["per_source"]["gsm"]["pass@2"] == 0.0 and r["per_source"]["gsm"]["problems"] == 1
    md = to_markdown(r)
    assert md.splitlines()[0].startswith("| source | problems | pass@1 | pass@2 | cons@2 |")
    assert "| **all** | 3 | 0.500 | 0.667 | 0.333 |" in md


def test_report_checks_its_shapes():
    with pytest.raises(ValueError, match="5 samples for 3 problems"):
        build_report(["a"] * 3, [None] * 5, [0] * 5, [1] * 5, [0] * 5, [0] * 5, k=2)


def test_language_rate_skips_samples_without_words():
    r = build_report(["a"], ["1", "1"], [1, 1], [3, 3], [1, 1], [None, 0.5], k=2)
    assert r["overall"]["language_consistency"] == 0.5
    r = build_report(["a"], ["1", "1"], [1, 1], [3, 3], [1, 1], [None, None], k=2)
    assert r["overall"]["language_consistency"] is None
    assert "| **all** | 1 | 1.000 | 1.000 | 1.000 | 1.000 | — |" in to_markdown(r)
