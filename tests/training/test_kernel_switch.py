"""``train.logprob_impl`` switches the trainer between the Triton kernels (here under the interpreter) and the
torch references; both give the same GRPO loss, metrics and gradients."""

import types

import pytest
import torch

from megatron_r1.config import Config
from megatron_r1.training.grpo import grpo_loss_fn


def _components(impl: str, kl_coef: float):
    cfg = Config()
    cfg.train.logprob_impl = impl
    cfg.algorithm.kl_coef = kl_coef
    cfg.algorithm.clip_high = 0.28
    return types.SimpleNamespace(cfg=cfg)


@pytest.mark.parametrize("kl_coef", [0.0, 0.01])
def test_fused_and_reference_losses_agree(kl_coef):
    torch.manual_seed(0)
    B, T = 3, 7
    mb = {
        "response_mask": (torch.rand(B, T) > 0.3).float(),
        "old_logprobs": -torch.rand(B, T),
        "advantages": torch.randn(B),
        "sampler_logprobs": -torch.rand(B, T),
    }
    if kl_coef:
        mb["ref_logprobs"] = -torch.rand(B, T)
    base = -torch.rand(B, T)
    results = {}
    for impl in ("torch", "triton"):
        logprobs = base.clone().requires_grad_(True)
        fn = grpo_loss_fn(_components(impl, kl_coef), num_tokens=mb["response_mask"].sum(), num_seqs=B)
        loss, metrics = fn(logprobs, None, mb)
        loss.backward()
        results[impl] = (loss.detach(), metrics, logprobs.grad)
    (l_t, m_t, g_t), (l_k, m_k, g_k) = results["torch"], results["triton"]
    torch.testing.assert_close(l_k, l_t)
    torch.testing.assert_close(g_k, g_t)
    for key in ("kl", "clip_fraction", "tokens"):
        torch.testing.assert_close(m_k[key].float(), m_t[key].float())
