"""The native engine's GPU path (CUDA graphs, no per-token sync) against its eager path and transformers."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS, make_engine, make_hf_model

from megatron_r1.rollout.engine import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _tokens(out):
    return [c.token_ids for c in out]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_graphs_match_eager_and_cpu_greedy(family: str) -> None:
    hf = make_hf_model(family, tied=family == "qwen2")
    sampling = SamplingParams(n=3, temperature=0.0, max_new_tokens=40)
    cpu = make_engine(hf).generate(PROMPTS, sampling)
    eager = make_engine(hf, device="cuda", cuda_graphs=False).generate(PROMPTS, sampling)
    graphed_engine = make_engine(hf, device="cuda", max_batch_size=4)  # continuous batching on GPU
    graphed = graphed_engine.generate(PROMPTS, sampling)
    assert graphed_engine.captured_widths, "no CUDA graph was captured"
    assert _tokens(graphed) == _tokens(eager) == _tokens(cpu)
    for a, b in zip(graphed, cpu):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_graphs_seeded_sampling_and_logprob_contract() -> None:
    hf = make_hf_model("llama", tied=False)
    engine = make_engine(hf, device="cuda", max_batch_size=8, sync_every=5)
    hf = hf.cuda()
    stop = 127
    sampling = SamplingParams(
        n=4, temperature=0.8, top_p=0.9, max_new_tokens=30, seed=3, stop_token_ids=(stop,)
    )
    first, second = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    assert _tokens(first) == _tokens(second)
    for c in first:
        assert (stop not in c.token_ids[:-1]) and len(c.token_ids) == len(c.logprobs)
        assert c.finish_reason == ("stop" if c.token_ids[-1] == stop else "length")
        ids = torch.tensor([PROMPTS[c.prompt_index] + c.token_ids], device="cuda")
        with torch.no_grad():
            logits = hf(ids).logits[0, len(PROMPTS[c.prompt_index]) - 1 : -1].float()
        expected = torch.log_softmax(logits / 0.8, -1).gather(
            -1, torch.tensor(c.token_ids, device="cuda")[:, None]
        )
        torch.testing.assert_close(torch.tensor(c.logprobs), expected[:, 0].cpu(), atol=1e-4, rtol=0)
    engine.sleep()
    engine.wake_up()
    assert _tokens(engine.generate(PROMPTS, sampling)) == _tokens(first)


def test_resident_engine_keeps_its_graphs_across_sleep() -> None:
    hf = make_hf_model("qwen2", tied=True)
    engine = make_engine(hf, device="cuda", offload_on_sleep=False)
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=20, seed=1)
    first = engine.generate(PROMPTS, sampling)
    graphs = engine._state.graphs
    engine.sleep()
    engine.wake_up()
    assert _tokens(engine.generate(PROMPTS, sampling)) == _tokens(first)
    assert engine._state.graphs is graphs and graphs.widths  # no re-capture
