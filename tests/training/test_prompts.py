"""Prompt sources of a run: deterministic per step (a resumed run sees the same data), held-out set disjoint,
templates applied, duplicates and over-long prompts dropped, bad files reported with file:line."""

import json

import pytest

from megatron_r1.config import ConfigError, load_config
from megatron_r1.data.jsonl import DataError
from megatron_r1.data.tokenizer import CharTokenizer
from megatron_r1.training.prompts import build_prompt_source


def test_arithmetic_rows_are_a_function_of_the_step_and_avoid_the_held_out_set():
    cfg = load_config(None, ["data.eval_size=16"])
    src = build_prompt_source(cfg, CharTokenizer())
    assert src.rows(3, 8) == src.rows(3, 8) and src.rows(3, 8) != src.rows(4, 8)
    held_out = {r["prompt"] for r in src.eval_rows}
    assert len(src.eval_rows) == 16
    assert not any(r["prompt"] in held_out for step in range(20) for r in src.rows(step, 8))
    assert src.encode({"prompt": "12+34="}) == CharTokenizer().encode("12+34=")


def test_jsonl_source_dedups_filters_length_and_splits(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)]
    rows += [{"prompt": "1+1=", "answer": "2"}, {"prompt": "9" * 300 + "+1=", "answer": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(None, ["data.source=jsonl", f"data.path={path}", "data.eval_size=8"])
    src = build_prompt_source(cfg, CharTokenizer())
    train = {r["prompt"] for step in range(500) for r in src.rows(step, 4)}
    seen = train | {r["prompt"] for r in src.eval_rows}
    assert len(seen) == 40  # the duplicate collapsed, the 303-character prompt dropped
    assert not {r["prompt"] for r in src.eval_rows} & train


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n{not json\n')
    cfg = load_config(None, ["data.source=jsonl", f"data.path={path}"])
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        build_prompt_source(cfg, CharTokenizer())


def test_too_few_prompts_is_a_config_error(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    cfg = load_config(None, ["data.source=jsonl", f"data.path={path}"])
    with pytest.raises(ConfigError, match="need > data.eval_size"):
        build_prompt_source(cfg, CharTokenizer())


def test_reasoning_gym_source_with_r1_zero_template():
    class WordTokenizer:  # the R1-Zero template has characters the demo tokenizer lacks
        def encode(self, text):
            return list(range(len(text.split())))

    cfg = load_config(
        None, ["data.source=reasoning_gym", "data.task=basic_arithmetic", "data.template=r1_zero"]
    )
    src = build_prompt_source(cfg, WordTokenizer())
    row = src.rows(0, 1)[0]
    assert row["answer"] and "prompt" in row
    assert len(src.encode(row)) > 40  # the paper's template around the question
