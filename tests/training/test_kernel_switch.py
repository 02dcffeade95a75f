"""``train.logprob_impl`` switches the trainer between the Triton kernels (here under the interpreter) and the
torch references; both give the same GRPO loss, metrics and gradients."""

import types

import pytest
import torch

from megatron_r1.config import Config
from megatron_r1.training.grpo import grpo_loss_fn


def _components(impl: str, kl_coef: float, tis_clip: float = 0.0):
    cfg = Config()
    cfg.train.logprob_impl = impl
    cfg.algorithm.kl_coef = kl_coef
    cfg.algorithm.tis_clip = tis_clip
    cfg.algorithm.clip_high = 0.28
    return types.SimpleNamespace(cfg=cfg)


@pytest.mark.parametrize(("kl_coef", "tis_clip"), [(0.0, 0.0), (0.01, 0.0), (0.0, 2.0), (0.01, 2.0)])
def test_fused_and_reference_losses_agree(kl_coef, tis_clip):
    """Also with truncated importance sampling: the fused kernel takes the TIS weights on its surrogate
    term exactly as the plain path applies them."""
    torch.manual_seed(0)
    B, T = 3, 7
    old = -torch.rand(B, T)
    mb = {
        "response_mask": (torch.rand(B, T) > 0.3).float(),
        "old_logprobs": old,
        "advantages": torch.randn(B),
        "sampler_logprobs": old - 1.5 * torch.rand(B, T) + 0.5,  # π_train / π_sampler in [0.6, 2.7]
    }
    if kl_coef:
        mb["ref_logprobs"] = -torch.rand(B, T)
    base = -torch.rand(B, T)
    results = {}
    for impl in ("torch", "triton"):
        logprobs = base.clone().requires_grad_(True)
        c = _components(impl, kl_coef, tis_clip)
        fn = grpo_loss_fn(c, num_tokens=mb["response_mask"].sum(), num_seqs=B)
        loss, metrics = fn(logprobs, None, mb)
        loss.backward()
        results[impl] = (loss.detach(), metrics, logprobs.grad)
    (l_t, m_t, g_t), (l_k, m_k, g_k) = results["torch"], results["triton"]
    torch.testing.assert_close(l_k, l_t)
    torch.testing.assert_close(g_k, g_t)
    for key in ("kl", "clip_fraction", "tokens") + (("tis_weight", "tis_clipped") if tis_clip else ()):
        torch.testing.assert_close(m_k[key].float(), m_t[key].float())
    if tis_clip:
        assert 0 < m_t["tis_clipped"] < m_t["tokens"]  # the cap binds on some tokens, not all
        untruncated = grpo_loss_fn(_components("torch", kl_coef), mb["response_mask"].sum(), B)
        assert not torch.allclose(untruncated(base.clone(), None, mb)[0], l_t)
