"""A step whose tokens carry no learning signal (every advantage 0, no KL term) is not computed: no
forward/backward, no optimizer step, the same metric keys, reported as ``no_signal``."""

import math
import types

import torch

from megatron_r1.config import load_config
from megatron_r1.training.grpo import has_learning_signal, update
from megatron_r1.training.setup import build_components


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, S = 4, 10
    tokens = torch.randint(1, vocab, (B, S), generator=g)
    mask = torch.zeros(B, S - 1)
    mask[:, 3:] = 1.0
    return {"tokens": tokens, "response_mask": mask, "sampler_logprobs": -torch.rand(B, S - 1) * mask}


def test_no_signal_step_is_skipped_with_stable_metrics(monkeypatch):
    cfg = load_config(None, ["train.sft_warmup_steps=0", "train.micro_batch_size=4", "train.lr=1e-2"])
    c = build_components(cfg)
    runs = []
    real_run = c.policy.run
    monkeypatch.setattr(c.policy, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    batch = _batch(cfg.model.vocab_size)
    before = {n: p.detach().clone() for n, p in c.model.named_parameters()}

    idle = update(c, batch | {"advantages": torch.zeros(4)}, step=0, total_steps=2)
    assert runs == []
    assert all(torch.equal(p, before[n]) for n, p in c.model.named_parameters())
    assert idle["no_signal"] == 1.0 and idle["skipped"] == 0.0  # not a bad step
    assert idle["loss"] == idle["grad_norm"] == idle["kl"] == idle["clip_fraction"] == 0.0
    assert math.isnan(idle["entropy"]) and math.isnan(idle["logprob_diff"])  # not measured

    live = update(c, batch | {"advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])}, step=1, total_steps=2)
    assert runs == [1]
    assert sorted(live) == sorted(idle)
    assert live["no_signal"] == 0.0 and live["grad_norm"] > 0 and math.isfinite(live["entropy"])
    assert any(not torch.equal(p, before[n]) for n, p in c.model.named_parameters())


def test_kl_term_is_a_signal_even_without_advantages():
    cfg = load_config(None, ["algorithm.kl_coef=0.05"])
    batch = _batch(32) | {"advantages": torch.zeros(4)}
    assert has_learning_signal(types.SimpleNamespace(cfg=cfg, reference=object()), batch)
