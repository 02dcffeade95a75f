"""The MoE load-balancing loss gets the same weight however a batch is split into micro-batches: its
gradient through :class:`Policy` equals coeff · ∇aux of one plain forward/backward (Megatron's formula),
not micro-batches × that."""

import pytest
import torch

from megatron_r1.config import Config
from megatron_r1.models import build_model, get_family
from megatron_r1.parallel import init_distributed
from megatron_r1.training.policy import Policy

COEFF = 0.5


def _moe_config():
    cfg = Config()
    m = cfg.model
    m.preset, m.vocab_size, m.num_layers, m.hidden_size, m.ffn_hidden_size = "qwen3_moe", 32, 1, 32, 64
    m.num_attention_heads, m.num_query_groups, m.kv_channels = 4, 2, 8
    m.num_experts, m.moe_router_topk, m.moe_ffn_hidden_size = 4, 2, 16
    m.moe_aux_loss_coeff = COEFF
    cfg.parallel.backend = "gloo"  # the CPU path, also on a GPU host
    return cfg


def _router_grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "router" in n}
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    return grads


def _policy_grads(cfg, state, batch, micro_batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.parallel)
    assert model.config.calculate_per_token_loss  # set before the routers were built
    policy = Policy(model, state, "torch")
    # Only the aux loss reaches the routers: the main loss contributes nothing.
    policy.run(batch, lambda logprobs, _e, _mb: (logprobs.sum() * 0.0, {}), micro_batch_size)
    return _router_grads(model)


def _formula_grads(cfg, tokens) -> dict[str, torch.Tensor]:
    """coeff · ∇aux(whole batch): one forward/backward of a model whose routers apply the aux loss as is."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    torch.manual_seed(0)
    family = get_family(cfg.model.preset)
    tcfg = family.transformer_config(cfg.model, cfg.parallel)
    tcfg.calculate_per_token_loss = False
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=family.layer_spec(tcfg),
        vocab_size=cfg.model.vocab_size,
        max_sequence_length=cfg.model.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.model.rotary_base),
    )
    MoEAuxLossAutoScaler.set_loss_scale(torch.ones(1))
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    (model(tokens, positions, None).sum() * 0.0).backward()
    return _router_grads(model)


@pytest.mark.parametrize("micro_batch_size", [1, 2, 4])
def test_aux_loss_gradient_does_not_depend_on_micro_batches(micro_batch_size):
    cfg = _moe_config()
    state = init_distributed(cfg.parallel, seed=0)
    # Identical sequences: every micro-batch's aux loss equals the whole batch's.
    tokens = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(1)).repeat(4, 1)
    expected = _formula_grads(cfg, tokens)
    got = _policy_grads(cfg, state, {"tokens": tokens}, micro_batch_size)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
