"""Will a config fit, and how fast will it run: per-GPU memory and step time of a colocated GRPO run.

Pure arithmetic over :class:`~megatron_r1.config.Config` (no torch.distributed, no model build):
:mod:`params` counts parameters as Megatron builds them, :mod:`memory` sizes the trainer and rollout phases,
:mod:`timing` predicts the step, :mod:`report` prints it. ``megatron-r1 plan`` is the CLI over
:func:`make_plan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megatron_r1.config import Config, ConfigError, ModelConfig
from megatron_r1.plan.assumptions import Assumptions
from megatron_r1.plan.hardware import GPU, get_gpu
from megatron_r1.plan.layout import Layout, check_model_layout, layout_problem, make_layout
from megatron_r1.plan.memory import (
    GIB,
    EngineMemory,
    TrainerMemory,
    engine_memory,
    trainer_memory,
)
from megatron_r1.plan.params import ModelParams, model_params
from megatron_r1.plan.timing import StepTime, step_time

__all__ = ["Assumptions", "Plan", "make_plan", "resolve_model"]


@dataclass(frozen=True)
class Plan:
    cfg: Config
    model: ModelConfig
    model_source: str
    gpu: GPU
    layout: Layout
    params: ModelParams
    trainer: TrainerMemory
    """The pipeline stage with the largest peak."""
    stage: int
    engine: EngineMemory
    train_phase: dict[str, float]
    """GiB per GPU while training, by part."""
    rollout_phase: dict[str, float]
    """GiB per GPU while generating, by part."""
    time: StepTime
    assumptions: Assumptions
    reasons: tuple[str, ...]
    """Why it does not fit (empty when it fits)."""

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def peak_gib(self) -> float:
        return max(self.train_phase["total"], self.rollout_phase["total"])

    @property
    def host_gib_per_node(self) -> float:
        """Host memory a node needs for the engine weights while they sleep (vLLM level 1, native engine)."""
        lay, node = self.layout, min(self.assumptions.gpus_per_node, self.layout.world)
        engine_gpus = node if lay.rollout_tp > 1 else max(1, node // (lay.tp * lay.pp * lay.cp))
        return engine_gpus * self.engine.weights / GIB

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.time.tokens / self.time.total / self.layout.world


def resolve_model(cfg: Config) -> tuple[ModelConfig, str]:
    """The architecture to plan: ``hf_path``'s config.json when it exists here, else the config's fields.
    The vocabulary of a model without one is the built-in tokenizer's."""
    m = cfg.model
    if m.hf_path and (Path(m.hf_path) / "config.json").is_file():
        from megatron_r1.models.hf import model_config_from_hf

        hf = model_config_from_hf(m.hf_path)
        keep = {k: getattr(m, k) for k in ("params_dtype", "fp8", "fp8_recipe")}
        return dataclasses.replace(hf, **keep), f"{m.hf_path}/config.json"
    source = "the config's model fields" + (f" ({m.hf_path} is not here)" if m.hf_path else "")
    if m.vocab_size == 0:
        from megatron_r1.data.tokenizer import CharTokenizer

        m = dataclasses.replace(m, vocab_size=len(CharTokenizer()))
    return m, source


def _gib(parts: dict[str, float]) -> dict[str, float]:
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def make_plan(
    cfg: Config, gpus: int | None = None, gpu: str = "H100", assumptions: Assumptions | None = None
) -> Plan:
    """Memory per GPU and step time of ``cfg`` on ``gpus`` GPUs (default ``parallel.world_size``)."""
    a = assumptions or Assumptions()
    hw = get_gpu(gpu)
    m, source = resolve_model(cfg)
    if m.num_experts == 0 and cfg.parallel.expert_parallel > 1:
        raise ConfigError(f"parallel.expert_parallel={cfg.parallel.expert_parallel} needs an MoE model")
    layout = make_layout(cfg, gpus)
    check_model_layout(m, layout)
    params = model_params(m)
    engine = engine_memory(cfg, m, params, layout, hw.memory_gib, a)
    reserve = a.reserve_gib * GIB
    best = None
    for stage in range(layout.pp):
        t = trainer_memory(cfg, m, params, layout, stage, a)
        # Asleep while the trainer trains: vLLM (sleep level 1 / 2) and the native engine (sleep() frees its
        # KV cache and moves its weights to host memory) hold no GPU memory.
        train = {
            "weights": t.weights,
            "grads": t.grads,
            "optimizer": t.optimizer,
            "reference": t.reference,
            "activations": t.activations,
            "engine_weights": 0.0,
            "kv_cache": 0.0,
            "reserve": reserve,
        }
        rollout = dict(train, activations=0.0, engine_weights=engine.weights, kv_cache=engine.kv_cache)
        rollout["reserve"] = reserve + engine.workspace
        if cfg.rollout.engine != "vllm" and stage != 0:  # the native engine: on each group's first rank
            rollout.update(engine_weights=0.0, kv_cache=0.0)
        train_gib, rollout_gib = _gib(train), _gib(rollout)
        peak = max(train_gib["total"], rollout_gib["total"])
        if best is None or peak > best[0]:
            best = (peak, stage, t, train_gib, rollout_gib)
    _, stage, trainer, train_gib, rollout_gib = best
    time = step_time(cfg, m, params, layout, hw, engine, a)
    reasons = []
    for phase, parts in (("trainer", train_gib), ("rollout", rollout_gib)):
        if parts["total"] > hw.memory_gib:
            biggest = max((k for k in parts if k != "total"), key=parts.get)
            reasons.append(
                f"{phase} phase needs {parts['total']:.1f} GiB per GPU on {layout.world} {hw.name}s "
                f"({hw.memory_gib} GiB); largest part: {biggest} {parts[biggest]:.1f} GiB"
            )
    problem = layout_problem(cfg, layout.world)
    if problem:
        reasons.append(problem)
    seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if cfg.rollout.engine == "vllm" and engine.concurrent < 1:
        reasons.append(
            f"rollout engine has no room for one {seq}-token sequence's KV cache within "
            f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization}"
        )
    return Plan(
        cfg,
        m,
        source,
        hw,
        layout,
        params,
        trainer,
        stage,
        engine,
        train_gib,
        rollout_gib,
        time,
        a,
        tuple(reasons),
    )
