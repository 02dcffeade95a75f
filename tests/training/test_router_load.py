"""MoE router bookkeeping on CPU (one process): the load-balance metrics count every routed token of the
training forwards (not the no-grad log-prob passes), and the expert bias moves as Megatron's
``get_updated_expert_bias`` moves it, towards the mean load."""

import torch

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.models import build_model
from megatron_r1.parallel import init_distributed
from megatron_r1.training.optim import update_expert_bias
from megatron_r1.training.router_load import RouterLoad

TOKENS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(8).expand_as(TOKENS)


def _moe(**fields):
    cfg = ModelConfig(
        preset="qwen3_moe", vocab_size=64, num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, **fields
    )
    return build_model(cfg, ParallelConfig())


def test_router_load_counts_routed_tokens_of_training_forwards():
    state = init_distributed(ParallelConfig())
    model = _moe()
    load = RouterLoad(model)
    with torch.no_grad():
        model(TOKENS, POSITIONS, None)
    assert load.counts == {}  # log-prob passes do not count
    model(TOKENS, POSITIONS, None)
    assert len(load.counts) == 2  # one router per MoE layer
    for counts in load.counts.values():
        assert counts.shape == (4,) and counts.sum().item() == TOKENS.numel() * 2  # top-2
    per_layer = torch.stack(list(load.counts.values()))
    metrics = load.metrics(state)
    assert metrics["moe/tokens_per_expert_min"] == per_layer.min().item()
    assert metrics["moe/tokens_per_expert_max"] == per_layer.max().item()
    worst = (per_layer.min(dim=1).values / per_layer.max(dim=1).values).min().item()
    assert metrics["moe/load_balance"] == worst and 0 <= worst <= 1
    assert (
        load.counts == {}
        and RouterLoad(build_model(ModelConfig(vocab_size=64), ParallelConfig())).metrics(state) == {}
    )


def test_expert_bias_moves_towards_the_mean_load():
    init_distributed(ParallelConfig())
    model = _moe(moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True)
    model(TOKENS, POSITIONS, None)
    routers = [m for m in model.modules() if getattr(m, "expert_bias", None) is not None]
    counts = [r.local_tokens_per_expert.clone() for r in routers]
    assert all(c.sum() == TOKENS.numel() * 2 for c in counts)
    update_expert_bias(model)
    rate = model.config.moe_router_bias_update_rate
    for router, c in zip(routers, counts):
        # Under-loaded experts (below the mean) gain +rate, over-loaded ones lose it.
        torch.testing.assert_close(router.expert_bias, torch.sign(c.mean() - c) * rate)
        assert router.local_tokens_per_expert.sum() == 0
