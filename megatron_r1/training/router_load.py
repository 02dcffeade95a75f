"""Router load balance of MoE policies: tokens routed to each expert during the training forward passes.

Routing collapse — a few experts taking most tokens while the others starve — is the classic failure of MoE
models under RL. :class:`RouterLoad` counts, with a forward hook on every Megatron router, the tokens each
expert receives in grad-enabled forwards (the policy update; not the no-grad log-prob passes), and
:meth:`RouterLoad.metrics` reduces them over the whole layout once per step: ``moe/tokens_per_expert_min`` and
``_max`` (over every MoE layer's experts) and ``moe/load_balance`` (the worst layer's min / max; 1 = even).
Padding tokens are routed and counted as Megatron's own ``local_tokens_per_expert`` counts them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_r1.parallel import ParallelState


class RouterLoad:
    """Tokens per expert of every router of ``model`` (this rank's stage), counted until :meth:`metrics`."""

    def __init__(self, model: torch.nn.Module):
        from megatron.core.transformer.moe.router import Router

        self.counts: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, Router):
                module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def count(_module, _inputs, output) -> None:
            if torch.is_grad_enabled():
                routing_map = output[1]  # [tokens, experts] bool
                tokens = routing_map.sum(dim=0).to(torch.float64).detach()
                self.counts[name] = self.counts.get(name, 0) + tokens

        return count

    def metrics(self, state: ParallelState) -> dict[str, float]:
        """The step's load-balance metrics, identical on every rank ({} for a dense model); resets the counts.
        Collective over the whole world when the model has routers."""
        from megatron.core import parallel_state as mpu

        if not _has_routers_anywhere(bool(self.counts), state):
            return {}
        # (min, −max, min/max): reduced with MIN over the stages; a stage without routers contributes +inf.
        stats = torch.full((3,), float("inf"), dtype=torch.float64, device=state.device)
        if self.counts:
            per_layer = torch.stack([self.counts[k] for k in sorted(self.counts)])  # [layers, experts]
            if dist.get_world_size() > 1:
                group = mpu.get_tensor_and_data_parallel_group(with_context_parallel=True)
                dist.all_reduce(per_layer, group=group)
            low, high = per_layer.min(dim=1).values, per_layer.max(dim=1).values
            ratio = (low / high.clamp(min=1.0)).min()
            stats = torch.stack([low.min(), -high.max(), ratio])
        if state.pp_size > 1:  # stages hold different layers: the worst of each statistic
            dist.all_reduce(stats, op=dist.ReduceOp.MIN, group=state.pp_group)
        self.counts = {}
        return {
            "moe/tokens_per_expert_min": float(stats[0]),
            "moe/tokens_per_expert_max": float(-stats[1]),
            "moe/load_balance": float(stats[2]),
        }


def _has_routers_anywhere(local: bool, state: ParallelState) -> bool:
    """Whether any pipeline stage has routers (a stage of only dense layers still joins the reduction)."""
    if state.pp_size == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=state.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=state.pp_group)
    return bool(flag.item())
