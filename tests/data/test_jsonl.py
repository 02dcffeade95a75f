"""JSONL prompt datasets: schema validation with file:line errors, round trip."""

from __future__ import annotations

import json

import pytest

from megatron_r1.data.jsonl import DataError, read_jsonl, validate_row, write_jsonl

GOOD = [
    {"prompt": "What is 2+2?", "answer": "4", "language": "en", "source": "hand"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    {"prompt": "Sum two ints.", "tests": [{"input": "1 2", "output": "3"}], "all_or_nothing": True},
    {"prompt": "Write add.", "tests": ["assert add(1, 2) == 3"], "timeout_s": 5},
    {"prompt": "f", "test": "def check(c): pass", "entry_point": "f", "code_prefix": "def f():\n"},
    {"prompt": "问题", "answer": 3, "language": "zh", "metadata": {"level": 2}, "id": 7, "format": "r1"},
]


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_good_rows_round_trip(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(GOOD, path) == len(GOOD)
    assert read_jsonl(path) == GOOD


def test_blank_lines_are_skipped(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD[0]), "", "   ", json.dumps(GOOD[1])])
    assert len(read_jsonl(path)) == 2


@pytest.mark.parametrize(
    "row, message",
    [
        ({"answer": "4"}, "exactly one of 'prompt' and 'messages'"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "exactly one"),
        ({"prompt": "  "}, "'prompt' is empty"),
        ({"prompt": "a", "anwser": "4"}, "did you mean 'answer'"),
        ({"prompt": "a", "difficulty": 3}, "put extra fields in 'metadata'"),
        ({"prompt": 5}, "field 'prompt' must be str"),
        ({"prompt": "a", "answer": [1]}, "field 'answer' must be"),
        ({"prompt": "a", "answer": True}, "field 'answer' must be"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "role must be one of"),
        ({"messages": [{"role": "user"}]}, "messages[0] must be"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "user's"),
        ({"prompt": "a", "tests": []}, "non-empty list"),
        ({"prompt": "a", "tests": [{"input": "1"}]}, "tests[0] must be"),
        ({"prompt": "a", "tests": [{"input": "1", "output": 2}]}, "tests[0] must be"),
        ({"prompt": "a", "tests": ["x", {"input": "", "output": ""}]}, "non-empty list"),
        ({"prompt": "a", "test": "def check(c): pass"}, "go together"),
        ({"prompt": "a", "language": "klingon"}, "unknown language"),
        ({"prompt": "a", "format": "xml"}, "'format' must be"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path, [json.dumps(GOOD[0]), json.dumps(row)])
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_json_and_non_objects(tmp_path):
    with pytest.raises(DataError, match=r"data.jsonl:1: invalid JSON"):
        read_jsonl(_write(tmp_path, ['{"prompt": "a"']))
    with pytest.raises(DataError, match=r"data.jsonl:1: a row must be a JSON object"):
        read_jsonl(_write(tmp_path, ["[1, 2]"]))


def test_validate_row_default_location():
    with pytest.raises(DataError, match=r"^<row>: "):
        validate_row({})
