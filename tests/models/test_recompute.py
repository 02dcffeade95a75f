"""train.recompute=full: Megatron recomputes each layer in the backward; the gradients are unchanged."""

from __future__ import annotations

import torch

from megatron_r1.config import ModelConfig, ParallelConfig


def test_full_recompute_gives_the_same_gradients(monkeypatch):
    import megatron.core.tensor_parallel as tensor_parallel

    from megatron_r1.models import build_model, set_recompute
    from megatron_r1.parallel import init_distributed

    init_distributed(ParallelConfig())
    calls = []
    checkpoint = tensor_parallel.checkpoint

    def counting(*args):
        calls.append(1)
        return checkpoint(*args)

    monkeypatch.setattr(tensor_parallel, "checkpoint", counting)
    cfg = ModelConfig(preset="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96, vocab_size=96)
    model = build_model(cfg, ParallelConfig())
    tokens = torch.randint(0, 96, (2, 12))
    position_ids = torch.arange(12).expand(2, -1)
    grads = []
    for mode in ("none", "full"):
        set_recompute(model.config, mode)
        model.zero_grad()
        logits = model(tokens, position_ids, attention_mask=None)
        logits.float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.config.recompute_granularity == "full" and len(calls) == cfg.num_layers
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
