"""Behaviour of the native rollout engine: sampling, stopping, ordering, weights, registry."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS, CharTokenizer, make_engine, make_hf_model
from transformers import GenerationConfig

from megatron_r1.rollout.engine import (
    Completion,
    Engine,
    SamplingParams,
    available_engines,
    build_engine,
    make_decode,
)
from megatron_r1.rollout.native import NativeEngine, sample_tokens
from megatron_r1.rollout.sampling import nucleus_mask


def _hf_greedy(hf, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    # No EOS: HF would stop there, or suppress it under min_new_tokens; the engine has no EOS here.
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    config.eos_token_id = None
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_matches_transformers_generate(family: str) -> None:
    hf = make_hf_model(family, tied=family == "qwen2")
    engine = make_engine(hf, max_batch_size=2)  # several chunks, mixed prompt lengths
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=24))
    assert len(out) == len(PROMPTS)
    for prompt, completion in zip(PROMPTS, out):
        assert completion.token_ids == _hf_greedy(hf, prompt, 24)
        assert completion.finish_reason == "length"
        assert completion.text == CharTokenizer().decode(completion.token_ids)


def test_engine_satisfies_protocol(llama_engine) -> None:
    assert isinstance(llama_engine, Engine)


def test_sampler_logprobs_match_full_forward(llama, llama_engine) -> None:
    temperature = 0.7
    sampling = SamplingParams(n=3, temperature=temperature, top_p=0.9, max_new_tokens=16, seed=0)
    out = llama_engine.generate(PROMPTS, sampling)
    for completion in out:
        prompt = PROMPTS[completion.prompt_index]
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.no_grad():
            logits = llama(ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits / temperature, dim=-1)
        expected = expected.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
        assert len(completion.logprobs) == len(completion.token_ids)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)


def test_same_seed_same_output_different_seed_differs(llama_engine) -> None:
    def run(seed: int) -> list[list[int]]:
        sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=seed)
        return [c.token_ids for c in llama_engine.generate(PROMPTS, sampling)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_tiny_top_p_is_greedy(llama_engine) -> None:
    greedy = llama_engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=12))
    nucleus = llama_engine.generate(
        PROMPTS, SamplingParams(n=2, temperature=1.3, top_p=1e-6, max_new_tokens=12, seed=5)
    )
    for i, completion in enumerate(nucleus):
        assert completion.token_ids == greedy[i // 2].token_ids


def test_n_samples_are_prompt_major(llama_engine) -> None:
    out = llama_engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=4, seed=0))
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(isinstance(c, Completion) and len(c.token_ids) == 4 for c in out)


def test_stop_token_is_kept_and_truncates(llama_engine) -> None:
    greedy = llama_engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=24))
    tokens = greedy[0].token_ids
    # The latest token in the greedy output that appears there for the first time.
    cut = max(i for i, t in enumerate(tokens) if t not in tokens[:i])
    out = llama_engine.generate(
        PROMPTS[:1],
        SamplingParams(temperature=0, max_new_tokens=24, stop_token_ids=(tokens[cut], 127)),
    )[0]
    assert out.token_ids == tokens[: cut + 1]
    assert out.finish_reason == "stop"
    assert len(out.logprobs) == cut + 1


def test_stop_string_truncates_after_completing_token(llama_engine) -> None:
    tok = CharTokenizer()
    greedy = llama_engine.generate(PROMPTS[1:2], SamplingParams(temperature=0, max_new_tokens=24))
    tokens = greedy[0].token_ids
    text = tok.decode(tokens)
    stop = text[9:12]  # a 3-character stretch of the greedy text
    cut = next(k for k in range(len(tokens)) if stop in tok.decode(tokens[: k + 1]))
    sampling = SamplingParams(temperature=0, max_new_tokens=24, stop_strings=("zzzzzzzz", stop))
    out = llama_engine.generate(PROMPTS[1:2], sampling)[0]
    assert out.token_ids == tokens[: cut + 1]
    assert out.finish_reason == "stop"
    assert stop in out.text and out.text == tok.decode(out.token_ids)


def test_rows_finish_independently(llama_engine) -> None:
    """Rows that stop early leave the batch; the others continue exactly as alone."""
    greedy = llama_engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=20))
    stop = greedy[0].token_ids[2]
    sampling = SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=(stop,))
    out = llama_engine.generate(PROMPTS, sampling)
    for ref, completion in zip(greedy, out):
        if stop in ref.token_ids:
            k = ref.token_ids.index(stop)
            assert completion.token_ids == ref.token_ids[: k + 1]
            assert completion.finish_reason == "stop"
        else:
            assert completion.token_ids == ref.token_ids
            assert completion.finish_reason == "length"


def test_context_limit_finishes_with_length() -> None:
    engine = make_engine(make_hf_model("llama", tied=False, max_position_embeddings=12))
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=50, seed=0))
    assert [len(c.token_ids) for c in out] == [12 - len(p) for p in PROMPTS]
    assert all(c.finish_reason == "length" for c in out)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine.generate([[1] * 12], SamplingParams())


def test_update_weights_buckets_and_errors() -> None:
    hf_a = make_hf_model("qwen2", tied=True, seed=0)
    hf_b = make_hf_model("qwen2", tied=True, seed=1)
    engine = make_engine(hf_a)
    items = list(hf_b.state_dict().items())
    for i in range(0, len(items), 5):  # bucketed sync over several calls
        engine.update_weights(iter(items[i : i + 5]))
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf_b(ids).logits, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match=r"unknown tensor name 'model\.layers\.7\.mlp\.up_proj"):
        engine.update_weights([("model.layers.7.mlp.up_proj.weight", torch.zeros(1))])
    name = "model.layers.0.self_attn.k_proj.weight"
    with pytest.raises(ValueError, match=r"k_proj.weight'.*\(64, 64\).*\(32, 64\)") as err:
        engine.update_weights([(name, torch.zeros(64, 64))])
    assert "\n" not in str(err.value)


def test_update_weights_converts_dtype(llama) -> None:
    engine = NativeEngine(llama.config.to_dict(), CharTokenizer(), dtype=torch.bfloat16)
    engine.update_weights((k, v.double()) for k, v in llama.state_dict().items())
    weight = engine.model.model.norm.weight
    assert weight.dtype == torch.bfloat16
    torch.testing.assert_close(weight.float(), llama.model.norm.weight.bfloat16().float())
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5, seed=0))
    assert all(len(c.token_ids) == 5 for c in out)


def test_sleep_and_wake_up(llama_engine) -> None:
    sampling = SamplingParams(temperature=0, max_new_tokens=6)
    before = [c.token_ids for c in llama_engine.generate(PROMPTS, sampling)]
    llama_engine.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        llama_engine.generate(PROMPTS, sampling)
    llama_engine.wake_up()
    assert [c.token_ids for c in llama_engine.generate(PROMPTS, sampling)] == before


def test_registry(llama) -> None:
    assert {"native", "vllm"} <= set(available_engines())
    engine = build_engine("native", model_config=llama.config.to_dict(), tokenizer=CharTokenizer())
    assert isinstance(engine, NativeEngine)
    with pytest.raises(KeyError, match="unknown rollout engine"):
        build_engine("nope")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="`vllm` extra"):
            build_engine("vllm")


def test_sampling_params_validation() -> None:
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    assert SamplingParams(stop_token_ids=[2, 3]).stop_token_ids == (2, 3)


def test_decode_keeps_special_tokens() -> None:
    class HFLike:
        def decode(self, ids, skip_special_tokens=True, **kwargs):
            return f"{ids}:{skip_special_tokens}"

    assert make_decode(HFLike())([1, 2]) == "[1, 2]:False"
    assert make_decode(CharTokenizer())([0, 1]) == "abb"


def test_sample_tokens_nucleus_and_logprobs() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(2000, 4)
    tokens, logprobs = sample_tokens(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[2:].sum() == 0  # outside the 0.7 nucleus {0, 1}
    assert abs(counts[0] / 2000 - 0.5 / 0.8) < 0.05  # renormalised within the nucleus
    torch.testing.assert_close(logprobs, probs.log()[tokens])  # but logprobs are not renormalised
    tokens, logprobs = sample_tokens(logits, 0.5, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logprobs, torch.log_softmax(logits / 0.5, -1)[0][tokens])
    assert set(tokens.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0])  # nucleus beyond 4096 tokens, within 4096, within 256
@pytest.mark.parametrize("top_p", [0.5, 0.95, 0.999])
def test_nucleus_mask_equals_a_full_sort(scale: float, top_p: float) -> None:
    logprobs = torch.log_softmax(torch.randn(6, 6000, generator=torch.Generator().manual_seed(1)) * scale, -1)
    sorted_logp, order = logprobs.sort(dim=-1, descending=True)
    sorted_p = sorted_logp.exp()
    keep_sorted = (sorted_p.cumsum(dim=-1) - sorted_p) < top_p
    expected = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    assert torch.equal(nucleus_mask(logprobs, top_p), expected)


def test_n_rows_split_across_chunks_share_the_prompt(llama) -> None:
    engine = make_engine(llama, max_batch_size=2)
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    out = engine.generate(PROMPTS, SamplingParams(n=3, temperature=0, max_new_tokens=8))
    assert [c.token_ids for c in out] == [g.token_ids for g in greedy for _ in range(3)]
    assert engine.generate([], SamplingParams()) == []
