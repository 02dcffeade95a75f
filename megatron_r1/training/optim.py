"""Optimizer, learning-rate schedule, data-parallel gradient reduction and gradient clipping.

On CUDA the model is wrapped in Megatron-Core's ``DistributedDataParallel`` and stepped by its optimizer
(``get_megatron_optimizer``; ``parallel.distributed_optimizer`` shards the state over data-parallel ranks).
On CPU (gloo: tests, the demo) Megatron's DDP and optimizer hard-code CUDA, so the same update is done by
:class:`LocalOptimizer`: AdamW, gradients summed over data-parallel ranks — DP × CP: context-parallel ranks
hold the same parameters and each a part of every sequence, as Megatron's DDP reduces over
``get_data_parallel_group(with_context_parallel=True)`` (the losses are already divided by global
counts), and the global gradient norm computed once per parameter shard: tensor-parallel shards are summed
over the TP group, replicated parameters (norms) counted once, stages summed over the PP group.
With tied embeddings under PP, the two copies' gradients are summed over the embedding group and the norm
counts the weight once. Parameters replicated over TP whose gradients are partial per TP rank — those marked
``sequence_parallel`` (norms and the MoE router under sequence parallelism) and the q/k layernorms — are
summed over TP, and the routers' expert bias (aux-loss-free balancing) is updated from the tokens-per-expert
counts, as Megatron's ``finalize_model_grads`` does on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_r1.config import TrainConfig
from megatron_r1.parallel import ParallelState


def lr_at(step: int, cfg: TrainConfig, total_steps: int, peak: float | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant / cosine /
    linear."""
    peak = cfg.lr if peak is None else peak
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + (peak - cfg.min_lr) * (1.0 - progress)


def tp_summed_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters replicated over TP whose gradient each TP rank holds only a part of, so it must be summed
    over TP: those marked ``sequence_parallel`` (under sequence parallelism every rank sees 1/TP of the
    tokens) and the q/k layernorms (applied to this rank's heads only) — Megatron's
    ``_allreduce_non_tensor_model_parallel_grads`` rule. MLA's ``q_layernorm`` is not per head: it normalises
    the full query latent, whose gradient the column-parallel up projection already all-reduces, so it is
    summed only when sequence parallelism marks it (Megatron's name rule would double it on the local
    spec)."""
    config = model.config
    per_head_qk_norm = config.qk_layernorm and not getattr(config, "multi_latent_attention", False)
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad
        and (
            (config.sequence_parallel and getattr(p, "sequence_parallel", False))
            or (per_head_qk_norm and ("q_layernorm" in name or "k_layernorm" in name))
        )
    ]


def update_expert_bias(model: torch.nn.Module) -> None:
    """DeepSeek-V3's aux-loss-free balancing: every router's ``expert_bias`` moves by ± the update rate
    towards the mean load, from its tokens-per-expert counts summed over TP × CP × DP (Megatron's
    ``get_updated_expert_bias``, called as ``finalize_model_grads._update_router_expert_bias`` does); the
    counts are reset."""
    routers = [m for m in model.modules() if getattr(m, "expert_bias", None) is not None]
    if not routers:
        return
    from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

    counts = torch.stack([r.local_tokens_per_expert for r in routers])  # [routers, experts]
    biases = torch.stack([r.expert_bias for r in routers])
    updated = get_updated_expert_bias(counts, biases, model.config.moe_router_bias_update_rate)
    for router, bias in zip(routers, updated):
        router.expert_bias.copy_(bias)
        router.local_tokens_per_expert.zero_()


class LocalOptimizer:
    """AdamW with data-parallel gradient sum and TP/PP-aware global-norm clipping (CPU / gloo)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, state: ParallelState):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.tp_summed = tp_summed_parameters(model) if state.tp_size > 1 else []
        self.cfg = cfg
        self.state = state
        self.opt = torch.optim.AdamW(
            self.params,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            eps=1e-8,
        )

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _reduce_grads(self) -> None:
        for p in self.tp_summed:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=self.state.tp_group)
        if self.state.pp_size > 1:
            self._reduce_tied_embedding_grads()
        if self.state.dp_cp_size == 1:
            return
        dp_cp = self.state.dp_cp_group if self.state.cp_size > 1 else self.state.dp_group
        expert_dp = None
        if self.state.ep_size > 1:
            from megatron.core import parallel_state as mpu

            expert_dp = mpu.get_expert_data_parallel_group()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            # Expert weights (``allreduce=False`` under EP) are replicated only across the expert-DP group
            # (Megatron's expert layout folds CP into it).
            group = dp_cp if getattr(p, "allreduce", True) else expert_dp
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(p.grad, group=group)

    def _reduce_tied_embedding_grads(self) -> None:
        """Tied embeddings under PP: the first stage's embedding and the last stage's output layer are copies
        of one weight (``shared_embedding``); both get the sum of their gradients, as Megatron's
        ``finalize_model_grads`` does on CUDA."""
        from megatron.core import parallel_state as mpu

        for p in self.params:
            if getattr(p, "shared_embedding", False):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, group=mpu.get_embedding_group())

    def grad_norm(self) -> float:
        tp_sq = torch.zeros((), dtype=torch.float64)
        rep_sq = torch.zeros((), dtype=torch.float64)
        expert_sq = torch.zeros((), dtype=torch.float64)
        for p in self.params:
            if p.grad is None or getattr(p, "shared", False):  # the last stage's tied copy: counted once
                continue
            sq = p.grad.detach().double().pow(2).sum()
            if not getattr(p, "allreduce", True):  # an expert shard of this EP rank
                expert_sq += sq
            elif getattr(p, "tensor_model_parallel", False):
                tp_sq += sq
            else:
                rep_sq += sq
        if self.state.tp_size > 1:
            dist.all_reduce(tp_sq, group=self.state.tp_group)
        if self.state.ep_size > 1:
            from megatron.core import parallel_state as mpu

            dist.all_reduce(expert_sq, group=mpu.get_expert_tensor_and_model_parallel_group())
        total = tp_sq + rep_sq + expert_sq
        if self.state.pp_size > 1:
            dist.all_reduce(total, group=self.state.pp_group)
        return float(total.sqrt())

    def step(self, lr: float) -> tuple[float, bool]:
        """Reduce, clip, step. Returns (grad_norm, stepped); a non-finite norm skips the update."""
        self._reduce_grads()
        update_expert_bias(self.model)  # before the non-finite check, as finalize_model_grads runs first
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.zero_grad()
            return norm, False
        if self.cfg.grad_clip > 0 and norm > self.cfg.grad_clip:
            scale = self.cfg.grad_clip / (norm + 1e-6)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.zero_grad()
        return norm, True

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.opt.load_state_dict(sd)


class MegatronOptimizer:
    """Megatron-Core DDP + optimizer (CUDA): bucketed gradient all-reduce / reduce-scatter, fp32 main
    params for bf16 models, the distributed optimizer when asked for, Megatron's gradient clipping."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, state: ParallelState, distributed: bool):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        tcfg = model.config
        self.state = state
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=distributed,
            average_in_collective=False,
        )
        self.model = DistributedDataParallel(config=tcfg, ddp_config=ddp_config, module=model)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                adam_beta1=cfg.adam_beta1,
                adam_beta2=cfg.adam_beta2,
                clip_grad=cfg.grad_clip,
                bf16=tcfg.bf16,
                fp16=tcfg.fp16,
                params_dtype=tcfg.params_dtype,
                use_distributed_optimizer=distributed,
            ),
            [self.model],
        )
        # The schedules multiply the loss by ``grad_scale_func`` before backward (the MoE aux loss too), as
        # Megatron's training loop sets it: without it an fp16 loss is never scaled while the optimizer
        # unscales the gradients by its loss scale (2^32 at first), and nothing is learned. For bf16 / fp32
        # the scale is 1.
        tcfg.grad_scale_func = self.optimizer.scale_loss
        self._has_grad_scaler = bool(tcfg.fp16)
        # The distributed optimizer's default checkpoint format ('fully_sharded_model_space') writes
        # ShardedTensors with ``flattened_range``, which megatron-core 0.19's dist_checkpointing refuses
        # ("ShardedTensor.flattened_range is not supported"). 'dp_reshardable' is what Megatron's training
        # loop uses: fully parallel, no gather; a resume may change the DP size, not TP / PP.
        self._ckpt_metadata = {"distrib_optim_sharding_type": "dp_reshardable"} if distributed else None

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def _grads_finite(self) -> bool:
        """Whether every reduced gradient is finite on every rank. bf16 / fp32 have no grad scaler, so
        Megatron's optimizer would apply NaN / inf gradients (a NaN norm never exceeds a threshold)."""
        found = torch.zeros((), dtype=torch.float32, device=self.state.device)
        for buffer in self.model.buffers + self.model.expert_parallel_buffers:
            found = torch.maximum(found, (~torch.isfinite(buffer.grad_data)).any().float())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return not bool(found)

    def step(self, lr: float) -> tuple[float, bool]:
        """Reduce, clip, step. Returns (grad_norm, stepped); a non-finite gradient skips the update (fp16:
        Megatron's grad scaler finds it and backs its scale off)."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.model])
        if not self._has_grad_scaler and not self._grads_finite():
            self.zero_grad()
            return float("nan"), False
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stepped, grad_norm, _ = self.optimizer.step()
        self.zero_grad()
        return float(grad_norm if grad_norm is not None else float("nan")), bool(stepped)

    def _init_empty_distributed_state(self) -> None:
        """Give a fresh distributed optimizer's Adam state (zeros, step 0) before a checkpoint is loaded
        into it: without Apex / Transformer Engine its ``state_dict()`` (which the load template is built
        from) asserts one common ``step`` over a state that does not exist yet."""
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        for sub in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if not isinstance(sub, DistributedOptimizer) or len(sub.optimizer.state):
                continue
            for group in sub.optimizer.param_groups:
                for p in group["params"]:
                    sub.optimizer.state[p].update(
                        step=torch.zeros((), dtype=torch.float32),
                        exp_avg=torch.zeros_like(p),
                        exp_avg_sq=torch.zeros_like(p),
                    )

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        if is_loading:
            self._init_empty_distributed_state()
        return self.optimizer.sharded_state_dict(
            model_sharded_state_dict, is_loading=is_loading, metadata=self._ckpt_metadata
        )

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        # The distributed optimizer copies loaded values into its main params in place; for fp32 models
        # those are views of the model's parameters, which autograd refuses outside no_grad.
        with torch.no_grad():
            self.optimizer.load_state_dict(sd)
        self._restore_distributed_steps(sd)

    def _restore_distributed_steps(self, sd: dict) -> None:
        """torch's Adam (no Apex / TE) keeps a per-parameter ``step``; Megatron's distributed optimizer
        saves it in its param groups but its 'dp_reshardable' load leaves the per-parameter copies at the
        loading optimizer's value, so Adam's bias correction would restart. Set them from the groups."""
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        subs = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        dicts = [sd] if len(subs) == 1 else [sd[i] for i in range(len(subs))]
        for sub, sub_sd in zip(subs, dicts, strict=True):
            if not isinstance(sub, DistributedOptimizer):
                continue
            steps = {g.get("step") for g in sub_sd["optimizer"]["param_groups"]} - {None}
            if len(steps) != 1:
                continue  # Apex / TE optimizers keep no per-parameter step
            step = float(steps.pop())
            for state in sub.optimizer.state.values():
                if "step" in state:
                    state["step"] = torch.tensor(step, dtype=torch.float32)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, state: ParallelState, distributed: bool):
    if state.device.type == "cuda":
        return MegatronOptimizer(model, cfg, state, distributed)
    return LocalOptimizer(model, cfg, state)
