"""Predicted time of one GRPO step: generation (decode bound by HBM reads), training (FLOPs at a stated
MFU plus the TP / EP traffic not hidden behind it), log-prob passes, weight sync (bytes at a stated link
speed). Reward scoring is not modelled."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_r1.config import Config, ModelConfig
from megatron_r1.plan.assumptions import Assumptions
from megatron_r1.plan.hardware import GPU
from megatron_r1.plan.layout import Layout
from megatron_r1.plan.memory import DTYPE_BYTES, EngineMemory
from megatron_r1.plan.params import ModelParams, head_dim


@dataclass(frozen=True)
class StepTime:
    generation: float
    train: float
    logprobs: float
    weight_sync: float
    tokens: float
    """Prompt + response tokens of the step's rollouts (NeMo-RL's tokens/s/GPU counts these)."""
    train_flops: float

    @property
    def total(self) -> float:
        return self.generation + self.train + self.logprobs + self.weight_sync


def attention_flops_per_token(m: ModelConfig, context: float) -> float:
    """Forward FLOPs of QKᵀ and AV for one token attending to ``context`` keys, all layers."""
    if m.multi_latent_attention:
        qk, v = m.qk_head_dim + m.qk_pos_emb_head_dim, m.v_head_dim
    else:
        qk = v = head_dim(m)
    return 2 * m.num_layers * m.num_attention_heads * (qk + v) * context


def link_gb_s(gpu: GPU, group: int, a: Assumptions) -> float:
    """Bandwidth of a group of ``group`` GPUs: NVLink inside a node, the network across nodes."""
    return (gpu.nvlink_gb_s if group <= a.gpus_per_node else gpu.network_gb_s) * a.link_efficiency


def cp_kv_elements_per_token(m: ModelConfig) -> float:
    """K and V elements per token and layer that context parallelism moves between ranks (all TP ranks
    together): GQA's query groups; MLA's per-head keys and values (its core attention takes them expanded)."""
    if m.multi_latent_attention:
        return m.num_attention_heads * (m.qk_head_dim + m.qk_pos_emb_head_dim + m.v_head_dim)
    return 2 * m.num_query_groups * head_dim(m)


def cp_kv_bytes_per_layer(m: ModelConfig, layout: Layout, local_tokens: float) -> float:
    """Bytes of K and V (bf16) one GPU receives from the other CP ranks in one attention layer's forward,
    for ``local_tokens`` tokens of its own: the (cp − 1) other shares of the sequences, its TP shard of the
    heads (TE's ring passes the same chunks as the CPU all-gather)."""
    return local_tokens * (layout.cp - 1) * cp_kv_elements_per_token(m) * 2 / layout.tp


def forward_comm_seconds(m: ModelConfig, layout: Layout, gpu: GPU, tokens: float, a: Assumptions) -> float:
    """Per GPU, one forward pass over ``tokens`` (the whole step's): TP all-gather + reduce-scatter around
    attention and MLP (4 × hidden per token per layer, ring: (tp-1)/tp of it), the MoE all-to-all
    (dispatch + combine of top-k copies of each token) and, under context parallelism, every attention
    layer's K and V from the other CP ranks (TE's ring or the CPU all-gather: each rank receives the
    (cp-1) other shares of the sequence's K / V, its TP shard of the heads), over the link their group
    spans (a CP group's ranks are TP apart)."""
    per_replica = tokens / (layout.dp * layout.cp)
    layers = m.num_layers / layout.pp
    seconds = 0.0
    if layout.cp > 1:
        volume = cp_kv_bytes_per_layer(m, layout, per_replica)
        seconds += layers * volume / (link_gb_s(gpu, layout.tp * layout.cp, a) * 1e9)
    if layout.tp > 1:
        volume = 4 * per_replica * m.hidden_size * 2 * (layout.tp - 1) / layout.tp
        seconds += layers * volume / (link_gb_s(gpu, layout.tp, a) * 1e9)
    if m.num_experts and layout.ep > 1:
        moe_layers = (m.num_layers - m.moe_first_k_dense) / layout.pp
        local = per_replica / layout.tp
        volume = 2 * local * m.moe_router_topk * m.hidden_size * 2 * (layout.ep - 1) / layout.ep
        seconds += moe_layers * volume / (link_gb_s(gpu, layout.ep * layout.etp, a) * 1e9)
    return seconds * (1 - a.comm_overlap)


def step_time(
    cfg: Config,
    m: ModelConfig,
    params: ModelParams,
    layout: Layout,
    gpu: GPU,
    engine: EngineMemory,
    a: Assumptions,
) -> StepTime:
    rollouts = cfg.data.prompts_per_step * cfg.rollout.group_size
    prompt = a.mean_prompt_tokens if a.mean_prompt_tokens is not None else cfg.data.max_prompt_tokens / 2
    response = a.mean_response_tokens if a.mean_response_tokens is not None else cfg.rollout.max_new_tokens
    seq = prompt + response
    tokens = rollouts * seq
    active = params.active
    # Training: 6 × active params per token plus attention (causal: mean context seq / 2), fwd + 2 × bwd.
    fwd_per_token = 2 * active + attention_flops_per_token(m, seq / 2)
    train_flops = cfg.algorithm.ppo_epochs * 3 * fwd_per_token * tokens
    mfu = a.moe_train_mfu if m.num_experts else a.train_mfu
    speed = layout.world * gpu.bf16_tflops * 1e12 * mfu * (a.fp8_speedup if m.fp8 != "off" else 1.0)
    comm = forward_comm_seconds(m, layout, gpu, tokens, a)
    # Backward moves twice the forward's traffic; full recompute repeats the forward. The 1F1B pipeline
    # idles (pp - 1) / microbatches of the time (Narayanan et al. 2021).
    train_passes = 3 + (cfg.train.recompute == "full")
    microbatches = max(1, rollouts // (layout.dp * cfg.train.micro_batch_size))
    bubble = 1 + (layout.pp - 1) / microbatches
    train = (train_flops / speed + cfg.algorithm.ppo_epochs * train_passes * comm) * bubble
    # Forward-only passes: old log-probs (PPO epochs > 1) and the reference (β > 0).
    passes = (cfg.algorithm.ppo_epochs > 1) + (cfg.algorithm.kl_coef > 0)
    logprobs = passes * (fwd_per_token * tokens / speed + comm)
    # Generation: each decode step of an engine reads its weights (the experts its batch touches) and the
    # KV cache of its sequences; continuous batching keeps `concurrent` sequences running.
    wbytes = DTYPE_BYTES[m.params_dtype]
    per_engine = engine.rollouts
    concurrent = max(1, engine.concurrent)
    expert_share = 1.0
    if m.num_experts:
        touched = 1 - (1 - m.moe_router_topk / m.num_experts) ** concurrent
        expert_share = touched
    weight_reads = (params.total - params.experts * (1 - expert_share)) * wbytes / layout.rollout_tp
    kv_reads = concurrent * (prompt + response / 2) * engine.kv_bytes_per_token
    bandwidth = gpu.hbm_tb_s * 1e12 * a.hbm_efficiency
    overhead = a.decode_overhead_s if cfg.rollout.engine == "vllm" else a.native_decode_overhead_s
    if layout.rollout_tp > 1:
        cross_node = layout.rollout_tp > a.gpus_per_node
        overhead += 2 * m.num_layers * (a.network_latency_s if cross_node else a.collective_latency_s)
    decode_step = (weight_reads + kv_reads) / bandwidth + overhead
    # Synchronous (on-policy) generation waits for the longest completion: some reach max_new_tokens.
    decode_steps = max(per_engine * response / concurrent, cfg.rollout.max_new_tokens)
    prefill = per_engine * prompt * 2 * active / (layout.rollout_tp * gpu.bf16_tflops * 1e12 * a.train_mfu)
    generation = decode_steps * decode_step + prefill
    # Weight sync: every engine GPU receives its share of the full model from the trainer shards.
    sync = params.total * wbytes / layout.rollout_tp / (link_gb_s(gpu, layout.world, a) * 1e9)
    return StepTime(generation, train, logprobs, sync, tokens, train_flops)
