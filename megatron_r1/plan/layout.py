"""The parallel layout the planner works in: every size derived once from the config and the GPU count."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_r1.config import Config, ConfigError, ModelConfig, validate


@dataclass(frozen=True)
class Layout:
    world: int
    tp: int
    pp: int
    cp: int
    dp: int
    """Data-parallel replicas of the dense part (world / (tp × pp × cp))."""
    ep: int
    etp: int
    """Expert tensor parallel: Megatron's default, the TP size (``expert_tensor_parallel_size=None``)."""
    edp: int
    """Expert data parallel: world / (pp × ep × etp), what the distributed optimizer shards experts over."""
    sp: bool
    """Sequence parallel (activations between TP regions split over TP)."""
    rollout_tp: int
    """GPUs per rollout engine."""
    engines: int
    """Rollout engines: world / rollout_tp, or one per model-parallel group (its first rank) at TP 1."""


def layout_problem(cfg: Config, world: int) -> str | None:
    """What ``validate`` says of ``cfg`` on ``world`` GPUs (None when it is a valid layout)."""
    checked = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, world_size=world))
    try:
        validate(checked, world_size=world)
    except ConfigError as exc:
        return str(exc)
    return None


def make_layout(cfg: Config, gpus: int | None = None) -> Layout:
    """The sizes of ``cfg``'s layout on ``gpus`` GPUs (default: ``parallel.world_size``, else the smallest
    world). Only what the arithmetic needs is checked here; :func:`layout_problem` checks the rest."""
    p = cfg.parallel
    tp, pp, cp = p.tensor_parallel, p.pipeline_parallel, getattr(p, "context_parallel", 1)
    world = gpus or p.world_size or tp * pp * cp * p.expert_parallel
    if world % (tp * pp * cp) or (world // (tp * pp * cp)) % p.expert_parallel:
        raise ConfigError(layout_problem(cfg, world) or f"world size {world} does not fit the layout")
    dp = world // (tp * pp * cp)
    etp = tp
    # Megatron requires sequence parallel for MoE with TP > 1; the planner assumes what would be built.
    sp = bool(getattr(p, "sequence_parallel", False)) or (cfg.model.num_experts > 0 and tp > 1)
    rtp = cfg.rollout.tensor_parallel
    engines = world // rtp if rtp > 1 else dp
    return Layout(
        world,
        tp,
        pp,
        cp,
        dp,
        p.expert_parallel,
        etp,
        world // (pp * p.expert_parallel * etp),
        sp,
        rtp,
        engines,
    )


def check_model_layout(m: ModelConfig, layout: Layout) -> None:
    """What Megatron requires of the model shape in this layout (also for configs with ``hf_path``)."""
    heads = m.num_attention_heads
    groups = heads if m.multi_latent_attention else m.num_query_groups
    for name, value in (("num_attention_heads", heads), ("num_query_groups", groups)):
        if value % layout.tp:
            raise ConfigError(f"parallel.tensor_parallel={layout.tp} must divide model.{name}={value}")
    if m.num_layers % layout.pp:
        raise ConfigError(
            f"parallel.pipeline_parallel={layout.pp} must divide model.num_layers={m.num_layers} "
            "(uneven pipeline stages are not supported)"
        )
    if m.vocab_size % layout.tp:
        raise ConfigError(f"parallel.tensor_parallel={layout.tp} must divide model.vocab_size={m.vocab_size}")
    if layout.ep > 1 and (not m.num_experts or m.num_experts % layout.ep):
        raise ConfigError(
            f"parallel.expert_parallel={layout.ep} must divide model.num_experts={m.num_experts}"
        )
