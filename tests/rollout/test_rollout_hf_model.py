"""The in-process engine on transformers' classes (MoE / MLA families): numerical parity with transformers'
own model and ``generate`` (tiny random Qwen3-MoE and DeepSeek-V3, YaRN included), the engine contract
(prompt-major n samples, seeded sampling, HF-named weight updates), and the config.json built from
``ModelConfig`` fields reproducing the original model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf

from megatron_r1.config import ConfigError, ModelConfig
from megatron_r1.convert.hf_config import hf_config_for
from megatron_r1.rollout.backends import backend_for
from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.hf_model import HFModelEngine, checkpoint_views

VOCAB = 96
PROMPTS = [[3, 17, 42, 5, 9], [60, 2], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the trainer runs (train.cpu_threads): on the shared 2-core machine the default
    two spin-waiting threads make a tiny forward ~1000x slower under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CharTokenizer:
    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(97 + t % 26) for t in token_ids)


def make_hf_model(kind: str, tied: bool = False, seed: int = 0):
    """A tiny random ``kind`` model (qwen3_moe | deepseek_v3 | deepseek_v3_yarn) with perturbed weights and a
    random expert bias, so that a mis-mapped tensor or a skipped correction changes the logits."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        moe_intermediate_size=32,
        num_experts_per_tok=2,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
    )
    if kind == "qwen3_moe":
        model = tf.Qwen3MoeForCausalLM(
            tf.Qwen3MoeConfig(**common, num_key_value_heads=2, head_dim=16, num_experts=4)
        )
    else:
        config = tf.DeepseekV3Config(
            **common,
            num_key_value_heads=4,
            n_routed_experts=8,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_parameters=YARN
            if kind == "deepseek_v3_yarn"
            else {"rope_type": "default", "rope_theta": 1e4},
        )
        model = tf.DeepseekV3ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.1)
    return model.eval()


def make_engine(model, **kwargs) -> HFModelEngine:
    engine = HFModelEngine(model.config.to_dict(), CharTokenizer(), **kwargs)
    engine.update_weights(checkpoint_views(model).items())
    return engine


@pytest.fixture(scope="module")
def deepseek():
    model = make_hf_model("deepseek_v3")
    return model, make_engine(model)


def test_checkpoint_names_are_the_saved_ones(tmp_path) -> None:
    """Per-expert names of a saved checkpoint map onto the fused expert tensors; loading them through the
    views gives transformers' own from_pretrained model, bit for bit."""
    from megatron_r1.convert.checkpoint import iter_hf_tensors

    model = make_hf_model("deepseek_v3", tied=False)
    model.save_pretrained(tmp_path)
    saved = dict(iter_hf_tensors(tmp_path))
    assert "model.layers.1.mlp.experts.7.up_proj.weight" in saved
    assert "model.layers.2.mlp.gate.e_score_correction_bias" in saved
    engine = HFModelEngine(model.config.to_dict(), CharTokenizer())
    assert set(saved) == set(dict(engine.named_weights()))
    engine.update_weights(saved.items())
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(engine.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("kind", ["qwen3_moe", "deepseek_v3", "deepseek_v3_yarn"])
def test_greedy_and_logprobs_match_transformers(kind: str) -> None:
    """Greedy tokens equal transformers' generate; every sampled token's log-prob equals a full forward of
    prompt + completion (left padding, prefix sharing and the cache change nothing)."""
    model = make_hf_model(kind, tied=kind == "qwen3_moe")
    engine = make_engine(model, max_batch_size=4)
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    for completion, prompt in zip(greedy, PROMPTS):
        with torch.no_grad():
            expected = model.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12
            )
        assert completion.token_ids == expected[0, len(prompt) :].tolist()
    sampled = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=3))
    assert [c.prompt_index for c in sampled] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(c.token_ids) for c in sampled}) > 3  # the G samples differ
    worst = 0.0
    for c in sampled:
        prompt = PROMPTS[c.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
        want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        worst = max(worst, (want - torch.tensor(c.logprobs)).abs().max().item())
    # fp32 logits reach ~10 here (1 ulp ~1e-6): cached decode and a full forward differ by a few ulps, up to
    # ~1e-5 over seeds 3-5 of all three kinds.
    assert worst < 3e-5


def test_seeded_sampling_and_stops(deepseek) -> None:
    _, engine = deepseek
    sampling = SamplingParams(n=2, max_new_tokens=8, seed=11)
    first, again = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    other = engine.generate(PROMPTS, dataclasses.replace(sampling, seed=12))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    stop = first[0].token_ids[2]
    stopped = engine.generate(PROMPTS[:1], dataclasses.replace(sampling, n=1, stop_token_ids=(stop,)))[0]
    assert (
        stopped.finish_reason == "stop"
        and stopped.token_ids[-1] == stop
        and stop not in stopped.token_ids[:-1]
    )
    assert stopped.text == CharTokenizer().decode(stopped.token_ids)


@pytest.mark.parametrize("kind", ["qwen3_moe", "deepseek_v3"])
def test_seeded_sampling_is_independent_of_batching(kind: str) -> None:
    """A row draws token t from a hash of (seed, row, t), as the native engine does: a completion is the same
    whatever the chunk size (prefix sharing split across chunks, rows dropped as others stop) and whatever
    prompts come after its own; stop strings end a row right after the token completing them."""
    model = make_hf_model(kind, seed=1)
    prompts = PROMPTS + [[30, 31], [4, 40, 44, 48]]
    sampling = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    engine = make_engine(model, max_batch_size=64)
    stop = engine.generate(prompts[:1], dataclasses.replace(sampling, n=1))[0].token_ids[2]
    sampling = dataclasses.replace(sampling, stop_token_ids=(stop,))
    reference = engine.generate(prompts, sampling)
    assert len({len(c.token_ids) for c in reference}) > 1  # rows stop at different steps
    assert len({tuple(c.token_ids) for c in reference}) > len(prompts)  # the n rows of a prompt differ
    for max_batch_size in (2, 4):
        chunked = make_engine(model, max_batch_size=max_batch_size).generate(prompts, sampling)
        assert [c.token_ids for c in chunked] == [c.token_ids for c in reference]
        for a, b in zip(chunked, reference):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=3e-5, rtol=0)
    # Prompt p's rows are rows p*n .. p*n+n-1 of the call: alone, or with other prompts after it, the
    # first prompts draw what they drew among all.
    alone = engine.generate(prompts[:1], sampling)
    assert [c.token_ids for c in alone] == [c.token_ids for c in reference[:3]]
    others = engine.generate(prompts[:2] + [[9, 9, 9]], sampling)
    assert [c.token_ids for c in others[:6]] == [c.token_ids for c in reference[:6]]
    r = next(i for i, c in enumerate(reference) if len(c.token_ids) >= 4)
    text = reference[r].text
    cut = engine.generate(prompts, dataclasses.replace(sampling, stop_strings=(text[2:4],)))
    assert cut[r].text == text[: text.index(text[2:4]) + 2] and cut[r].finish_reason == "stop"
    assert all(c.token_ids == ref.token_ids[: len(c.token_ids)] for c, ref in zip(cut, reference))


def test_bad_prompts_fail_before_generating(deepseek) -> None:
    _, engine = deepseek
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], SamplingParams())
    with pytest.raises(ValueError, match="prompt 0 has 64 tokens; max_position_embeddings is 64"):
        engine.generate([[1] * 64], SamplingParams())
    near_limit = engine.generate([[1] * 60], SamplingParams(max_new_tokens=10, seed=0))[0]
    assert len(near_limit.token_ids) == 4 and near_limit.finish_reason == "length"  # capped by the context


def test_same_draws_as_the_native_engine() -> None:
    """Both in-process engines key row r's token t on (seed, r, t): on a dense model either samples the same
    completions (what the trainer sees does not depend on which backend a family uses)."""
    import rollout_helpers

    hf = rollout_helpers.make_hf_model("llama", tied=False)
    native = rollout_helpers.make_engine(hf, max_batch_size=4)
    engine = HFModelEngine(hf.config.to_dict(), rollout_helpers.CharTokenizer(), max_batch_size=3)
    engine.update_weights(hf.state_dict().items())
    sampling = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=10, seed=21)
    stop = native.generate(PROMPTS[:1], sampling)[1].token_ids[3]
    sampling = dataclasses.replace(sampling, stop_token_ids=(stop,))
    ours, theirs = engine.generate(PROMPTS, sampling), native.generate(PROMPTS, sampling)
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
    assert {c.finish_reason for c in ours} == {"stop", "length"}
    assert len({tuple(c.token_ids) for c in ours}) > len(PROMPTS)


def test_update_weights_moves_the_sampler_and_rejects_bad_tensors(deepseek) -> None:
    model, engine = deepseek
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    before = engine.generate(PROMPTS, greedy)
    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    held = dict(engine.named_weights())[name]
    engine.update_weights(
        [(name, torch.zeros_like(held)), ("model.layers.1.mlp.gate.weight", torch.zeros(8, 64))]
    )
    assert torch.count_nonzero(engine.model.model.layers[1].mlp.experts.down_proj[3]) == 0
    engine.update_weights(checkpoint_views(model).items())  # restore
    assert [c.token_ids for c in engine.generate(PROMPTS, greedy)] == [c.token_ids for c in before]
    with pytest.raises(ValueError, match="unknown tensor name 'model.layers.0.mlp.gate.weight'"):
        engine.update_weights([("model.layers.0.mlp.gate.weight", torch.zeros(8, 64))])  # layer 0 is dense
    with pytest.raises(ValueError, match=r"shape mismatch for 'model.norm.weight': got \(3,\)"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])
    engine.update_weights([("model.rotary_emb.inv_freq", torch.zeros(4))])  # ignored, as in the native engine


@pytest.mark.parametrize("kind", ["qwen3_moe", "deepseek_v3", "deepseek_v3_yarn"])
def test_config_from_model_fields_reproduces_the_model(kind: str, tmp_path) -> None:
    """ModelConfig (as the trainer holds it, without hf_path) → config.json → the same function."""
    from megatron_r1.models.hf import model_config_from_hf

    model = make_hf_model(kind)
    model.save_pretrained(tmp_path)
    cfg = dataclasses.replace(model_config_from_hf(tmp_path), hf_path=None)
    rebuilt = HFModelEngine(hf_config_for(cfg), CharTokenizer())
    rebuilt.update_weights(checkpoint_views(model).items())
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_inexpressible_fields_fail_in_one_line() -> None:
    moe = ModelConfig(
        preset="qwen3_moe", num_experts=4, vocab_size=VOCAB, moe_shared_expert_intermediate_size=64
    )
    with pytest.raises(ConfigError, match="moe_shared_expert_intermediate_size") as err:
        hf_config_for(moe)
    assert "\n" not in str(err.value)
    ds = ModelConfig(
        preset="deepseek_v3",
        num_experts=8,
        moe_router_topk=4,
        moe_router_num_groups=4,
        moe_router_group_topk=1,
        moe_router_score_function="sigmoid",
        vocab_size=VOCAB,
    )
    with pytest.raises(ConfigError, match="moe_router_topk=4 with model.moe_router_group_topk=1"):
        hf_config_for(ds)


def test_backend_per_family() -> None:
    assert [backend_for(p) for p in ("tiny", "llama", "qwen2", "qwen3")] == ["native"] * 4
    assert backend_for("qwen3_moe") == backend_for("deepseek_v3") == "hf"
    with pytest.raises(ConfigError, match="model.preset=mixtral has no in-process rollout backend"):
        backend_for("mixtral")
