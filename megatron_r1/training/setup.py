"""Everything a run needs, built once from the config: process groups, tokenizer, policy (and reference)
on Megatron-Core, optimizer, rollout engine, prompt source."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from megatron_r1.config import Config, ConfigError, validate_model_parallel_fields
from megatron_r1.parallel import ParallelState, init_distributed, uses_cuda
from megatron_r1.rewards.scorer import RewardScorer
from megatron_r1.training.optim import build_optimizer
from megatron_r1.training.policy import Policy
from megatron_r1.training.prompts import PromptSource, build_prompt_source

log = logging.getLogger(__name__)


@dataclass
class Components:
    cfg: Config
    state: ParallelState
    tokenizer: Any
    model: torch.nn.Module
    """The bare Megatron GPTModel of this rank's stage (for weight sync and checkpoints)."""
    policy: Policy
    reference: Policy | None
    optimizer: Any
    engine: Any
    prompts: PromptSource
    scorer: Any
    eval_scorer: Any
    to_hf: Any


def load_tokenizer(cfg: Config):
    if cfg.model.hf_path:
        from megatron_r1.data.hf_tokenizer import load_tokenizer as load_hf

        return load_hf(cfg.model.hf_path)
    from megatron_r1.data.tokenizer import CharTokenizer

    return CharTokenizer()


def _resolve_model_config(cfg: Config, tokenizer) -> None:
    if cfg.model.hf_path:
        from megatron_r1.models.hf import model_config_from_hf

        hf_cfg = model_config_from_hf(cfg.model.hf_path)
        hf_cfg.params_dtype = cfg.model.params_dtype
        hf_cfg.fp8, hf_cfg.fp8_recipe = cfg.model.fp8, cfg.model.fp8_recipe  # precision is the run's choice
        cfg.model = hf_cfg
        # The architecture is known only now: check its MoE / MLA fields against the layout before any work.
        validate_model_parallel_fields(dataclasses.replace(hf_cfg, hf_path=None), cfg.parallel)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = len(tokenizer)
    if cfg.model.vocab_size % cfg.parallel.tensor_parallel:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} must be divisible by "
            f"parallel.tensor_parallel={cfg.parallel.tensor_parallel}"
        )


def build_components(cfg: Config) -> Components:
    from megatron_r1.config import validate
    from megatron_r1.convert import get_adapter
    from megatron_r1.models import build_model, set_recompute
    from megatron_r1.rollout.backends import build_inprocess_engine
    from megatron_r1.rollout.engine import IdleEngine

    if not uses_cuda(cfg.parallel) and cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    state = init_distributed(cfg.parallel, seed=cfg.train.seed)
    validate(cfg, world_size=state.world_size)
    tokenizer = load_tokenizer(cfg)
    _resolve_model_config(cfg, tokenizer)

    # Built with ``calculate_per_token_loss`` (models/dense.py): the losses divide by global counts, so
    # gradients are summed over micro-batches and DP ranks.
    model = build_model(cfg.model, cfg.parallel, state.is_first_stage, state.is_last_stage).to(state.device)
    set_recompute(model.config, cfg.train.recompute)
    if cfg.model.hf_path:
        from megatron_r1.convert.checkpoint import load_hf_weights

        load_hf_weights(model, cfg.model.hf_path, cfg.model)
    if cfg.model.checkpoint:  # an earlier stage's weights (pipeline), after any HF ones
        from megatron_r1.training.checkpoint import load_model_weights

        log.info("model weights from %s", load_model_weights(cfg.model.checkpoint, model))
    reference = None
    if cfg.algorithm.kl_coef > 0:  # the frozen reference; its weights are set by snapshot_reference()
        ref_model = build_model(cfg.model, cfg.parallel, state.is_first_stage, state.is_last_stage)
        reference = Policy(
            ref_model.to(state.device).requires_grad_(False).eval(), state, cfg.train.logprob_impl
        )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    engine_dtype = dtype[cfg.rollout.dtype or cfg.model.params_dtype]
    adapter = get_adapter(cfg.model.preset)
    to_hf = lambda name, tensor: adapter.to_hf(name, tensor, cfg.model)  # noqa: E731
    if cfg.rollout.engine == "native" and not state.mp_leader:
        engine = IdleEngine()  # the native engine generates on each TP × PP group's first rank
    elif cfg.rollout.engine == "native":
        # The hand-written decoder for dense families, transformers' classes for MoE / MLA (backends.py).
        engine = build_inprocess_engine(
            cfg,
            tokenizer,
            state.device,
            engine_dtype,
            max_batch_size=max(64, cfg.data.prompts_per_step * cfg.rollout.group_size),
        )
    else:
        engine = build_vllm_engine(cfg, state, tokenizer, model, to_hf, engine_dtype)
    # After the engine: vLLM sizes its memory from what is free, before the optimizer's state exists.
    optimizer = build_optimizer(model, cfg.train, state, cfg.parallel.distributed_optimizer)
    # Forward/backward go through the DDP wrapper on CUDA; weight sync and checkpoints use the bare model.
    policy = Policy(getattr(optimizer, "model", model), state, cfg.train.logprob_impl)

    prompts = build_prompt_source(cfg, tokenizer)
    r = cfg.reward
    overlong = (
        (cfg.rollout.max_new_tokens, cfg.algorithm.overlong_buffer) if cfg.algorithm.overlong_buffer else None
    )
    scorer = RewardScorer(r.weights, r.num_workers, r.timeout_s, overlong=overlong)
    eval_scorer = RewardScorer({r.accuracy: 1.0}, r.num_workers, r.timeout_s)
    return Components(
        cfg=cfg,
        state=state,
        tokenizer=tokenizer,
        model=model,
        policy=policy,
        reference=reference,
        optimizer=optimizer,
        engine=engine,
        prompts=prompts,
        scorer=scorer,
        eval_scorer=eval_scorer,
        to_hf=to_hf,
    )


def build_vllm_engine(cfg: Config, state: ParallelState, tokenizer, model, to_hf, dtype: torch.dtype):
    """vLLM, colocated, on every rank (``external_launcher`` under torchrun builds its groups over the whole
    world, so every rank must construct it) in the rollout layout: ``rollout.tensor_parallel`` ranks per
    replica. It starts from ``model.hf_path``, or from an HF directory written from the policy (the demo's
    tiny model); text is decoded with the trainer's tokenizer so rewards see what the native engine gives."""
    from megatron_r1.rollout.engine import build_engine
    from megatron_r1.rollout.hf_dir import engine_hf_dir
    from megatron_r1.rollout.reshard import hf_weight_buckets

    r = cfg.rollout
    bucket_bytes = r.weight_sync_bucket_mb * 2**20
    hf_path = engine_hf_dir(
        cfg.model, tokenizer, lambda: hf_weight_buckets(model, state, to_hf, bucket_bytes)
    )
    llm_kwargs: dict = {"enable_expert_parallel": True} if r.expert_parallel > 1 else {}
    if r.quantization != "none":
        llm_kwargs["quantization"] = r.quantization
    return build_engine(
        r.engine,
        hf_path=hf_path,
        tokenizer=tokenizer,
        dtype=dtype,
        tensor_parallel_size=r.tensor_parallel,
        gpu_memory_utilization=r.gpu_memory_utilization,
        max_model_len=cfg.model.max_position_embeddings,
        seed=cfg.train.seed,  # equal on the ranks of a replica; requests carry their own seeds
        kv_cache_gb=r.kv_cache_gb,
        **llm_kwargs,
    )


def snapshot_reference(c: Components) -> None:
    """Freeze the current policy as the KL reference π_ref (the base model the run starts from)."""
    if c.reference is not None:
        c.reference.model.load_state_dict(c.model.state_dict())


def close_components(c: Components) -> None:
    """Stop what a run started beside the trainer: the reward worker processes, the rollout engine (its
    ``close()`` / ``shutdown()`` where it has one). Safe to call twice."""
    for scorer in (c.scorer, c.eval_scorer):
        scorer.close()
    for name in ("close", "shutdown"):
        method = getattr(c.engine, name, None)
        if callable(method):
            method()
            break
