"""The native engine's oneDNN-packed CPU weights: F.linear's numbers, never stale after a weight update."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS, make_engine, make_hf_model

from megatron_r1.rollout import cpu_packing
from megatron_r1.rollout.cpu_packing import pack_weight, packed_linear, packing_supported
from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.native_model import Linear

pytestmark = pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN packed linear here")


@pytest.fixture
def pack_everything(monkeypatch):
    """The test models are far below the size where packing pays: pack every weight anyway."""
    monkeypatch.setattr(cpu_packing, "_MIN_PACKED_ELEMENTS", 1)


def _packed_modules(engine) -> list[str]:
    return [n for n, m in engine.model.named_modules() if isinstance(m, Linear) and m.packed is not None]


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_packed_linear_matches_f_linear(rows: int) -> None:
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(rows, 3, 64, generator=gen)
    with torch.inference_mode():
        got = packed_linear(x, pack_weight(weight, 8), bias)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, bias), atol=2e-5, rtol=1e-5)


def test_only_float32_is_packed() -> None:
    assert not packing_supported(torch.bfloat16)
    hf = make_hf_model("llama", tied=True)
    assert make_engine(hf).pack_weights
    assert not make_engine(hf, dtype=torch.bfloat16).pack_weights
    assert not make_engine(hf, cpu_packed_weights=False).pack_weights


@pytest.mark.parametrize("family,tied", [("llama", False), ("qwen2", True)])
def test_packed_engine_generates_what_the_plain_one_does(family: str, tied: bool, pack_everything) -> None:
    hf = make_hf_model(family, tied=tied)
    packed, plain = make_engine(hf), make_engine(hf, cpu_packed_weights=False)
    sampling = SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=3)
    out_packed, out_plain = packed.generate(PROMPTS, sampling), plain.generate(PROMPTS, sampling)
    assert packed.model.is_packed and not plain.model.is_packed
    assert len(_packed_modules(packed)) == 7 * hf.config.num_hidden_layers  # q k v o gate up down
    assert packed.model._packed_head is not None
    assert [c.token_ids for c in out_packed] == [c.token_ids for c in out_plain]
    for a, b in zip(out_packed, out_plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_update_weights_drops_the_packed_copy_and_generate_repacks(pack_everything) -> None:
    hf_a, hf_b = make_hf_model("qwen2", tied=True, seed=0), make_hf_model("qwen2", tied=True, seed=1)
    engine = make_engine(hf_a)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    engine.generate(PROMPTS, greedy)
    assert engine.model.is_packed and _packed_modules(engine)
    engine.update_weights(hf_b.state_dict().items())
    # A forward now reads the new parameters, not the old packed copy.
    assert not engine.model.is_packed and not _packed_modules(engine)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf_b(ids).logits, atol=1e-5, rtol=0)
    fresh = make_engine(hf_b, cpu_packed_weights=False)
    assert [c.token_ids for c in engine.generate(PROMPTS, greedy)] == [
        c.token_ids for c in fresh.generate(PROMPTS, greedy)
    ]
    assert engine.model.is_packed


def test_small_weights_stay_unpacked(monkeypatch) -> None:
    hf = make_hf_model("llama", tied=False, intermediate_size=256)  # MLP weights 64 x 256, attention 64 x 64
    monkeypatch.setattr(cpu_packing, "_MIN_PACKED_ELEMENTS", 64 * 256)
    engine = make_engine(hf)
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=2, seed=0))
    assert engine.model.is_packed
    assert {n.rsplit(".", 1)[-1] for n in _packed_modules(engine)} == {"gate_proj", "up_proj", "down_proj"}
