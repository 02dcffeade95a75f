"""Per-GPU memory of a colocated GRPO run: the trainer phase and the rollout phase.

Trainer (Megatron-Core, bf16 with fp32 main params): weights, fp32 gradient buffer
(``grad_reduce_in_fp32=True``, full size even with the distributed optimizer), Adam state (fp32 master,
m, v: 12 bytes per 16-bit parameter) sharded over DP (dense) and expert-DP (experts) by the distributed
optimizer, the frozen KL reference when β > 0, and activations. Activations follow Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", the accounting Megatron's docs use),
written per stored tensor so that GQA, SwiGLU, MoE and MLA shapes are exact: Transformer Engine's
layers (fused attention: no s² term) unless told otherwise, no dropout (masks are not stored), sequence
parallel splitting the hidden-sized tensors over TP, full recompute keeping only each layer's input, 1F1B
keeping min(pp, microbatches) microbatches in flight on the first stage.

Rollout engine: vLLM takes ``gpu_memory_utilization`` of the GPU, its weights split over
``rollout.tensor_parallel`` GPUs and the rest KV cache; the native engine keeps a full copy on each
model-parallel group's first rank with KV cache for all of that replica's rollouts. Both sleep while the
trainer trains (vLLM sleep level 1 or 2, the native engine's ``sleep()``: no GPU memory). The trainer keeps
weights, gradients and optimizer state on the GPU while the engine generates (nothing here offloads them).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_r1.config import Config, ModelConfig
from megatron_r1.plan.assumptions import Assumptions
from megatron_r1.plan.layout import Layout
from megatron_r1.plan.params import ModelParams, head_dim, is_moe_layer

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class StageParams:
    """Parameters one GPU of a pipeline stage holds."""

    dense: int
    """Sharded over TP (or replicated); the optimizer shards them over DP × CP."""
    experts: int
    """Routed experts: the optimizer shards them over expert-DP."""
    linear: int
    """Of which GEMM weights (what FP8 keeps an extra copy of)."""

    @property
    def total(self) -> int:
        return self.dense + self.experts


def stage_layers(m: ModelConfig, layout: Layout, stage: int) -> range:
    per = m.num_layers // layout.pp
    return range(stage * per, (stage + 1) * per)


def stage_params(params: ModelParams, m: ModelConfig, layout: Layout, stage: int) -> StageParams:
    dense = experts = linear = 0
    for i in stage_layers(m, layout, stage):
        layer = params.layers[i]
        dense += layer.tp_split // layout.tp + layer.replicated
        experts += layer.experts // (layout.ep * layout.etp)
        linear += layer.tp_split // layout.tp + layer.experts // (layout.ep * layout.etp)
    if stage == 0:
        dense += params.embedding // layout.tp
    if stage == layout.pp - 1:
        # Tied embeddings on several stages: the last stage keeps its own copy as the output layer.
        out = params.output or (params.embedding if layout.pp > 1 else 0)
        dense += out // layout.tp + params.final_norm
        linear += out // layout.tp
    return StageParams(dense, experts, linear)


def activation_elements(m: ModelConfig, index: int) -> tuple[float, float, float]:
    """Activation elements one token stores for layer ``index``'s backward:
    (hidden-sized: split over TP only with sequence parallel, TP-split, of which GEMM inputs)."""
    h = m.hidden_size
    heads = m.num_attention_heads
    hidden = 4 * h  # inputs and outputs of the two norms
    gemm = 2 * h  # the norm outputs feed GEMMs
    if m.multi_latent_attention:
        qk = m.qk_head_dim + m.qk_pos_emb_head_dim
        q_lora = m.q_lora_rank or 0
        hidden += 2 * q_lora + 2 * m.kv_lora_rank + m.qk_pos_emb_head_dim  # latents and their norms
        split = heads * qk * 2 + heads * (m.qk_head_dim + m.v_head_dim) + heads * m.v_head_dim
        gemm += q_lora + m.kv_lora_rank + heads * m.v_head_dim
    else:
        d = head_dim(m)
        split = (heads + 2 * m.num_query_groups) * d + heads * d  # q, k, v; attention output
        gemm += heads * d
    if is_moe_layer(m, index):
        f = m.moe_ffn_hidden_size or m.ffn_hidden_size
        s = m.moe_shared_expert_intermediate_size or 0
        split += m.moe_router_topk * (h + 3 * f) + 3 * s  # permuted tokens, fc1 out (2f), act out (f)
        gemm += m.moe_router_topk * (h + f) + s
        hidden += m.num_experts  # router logits
    else:
        split += 3 * m.ffn_hidden_size
        gemm += m.ffn_hidden_size
    return hidden, split, gemm


def local_spec_bytes_per_token(m: ModelConfig, index: int, layout: Layout, seq: float) -> float:
    """Bytes per token one GPU stores for layer ``index`` on Megatron's local spec (no Transformer Engine),
    as its autograd graph saves them: each RMSNorm (``WrappedTorchNorm``) keeps its fp32 input and output and
    the per-row rstd, plus the bf16 cast when a GEMM consumes it; core attention keeps Q, K and V expanded to
    every head, its output, the fp32 softmax output and the bf16 probabilities; SwiGLU keeps fc1's output,
    both halves and the product. Under context parallelism (the CPU attention patch, ``parallel/cpu.py``)
    each rank's queries attend to the whole ``seq``-token sequence: K and V are gathered over CP
    (``layout.cp`` times this rank's tokens) and the scores are [local queries × seq]."""
    h, heads = m.hidden_size, m.num_attention_heads
    hidden_div = layout.tp if layout.sp else 1
    norms = 2 * (10 * h + 4) / hidden_div  # input and pre-MLP norms
    if m.multi_latent_attention:
        qk, v = m.qk_head_dim + m.qk_pos_emb_head_dim, m.v_head_dim
        q_lora = m.q_lora_rank or 0
        norms += (10 * q_lora + 4 if q_lora else 0) + 10 * m.kv_lora_rank + 4  # latent norms feed GEMMs
        latents = 2 * (m.kv_lora_rank + m.qk_pos_emb_head_dim)
        attention = latents + (2 * (1 + layout.cp) * heads * (qk + v) + 6 * heads * seq) / layout.tp
    else:
        d = head_dim(m)
        if m.qk_layernorm:  # per-head q / k norms: their casts feed RoPE, which keeps no copy
            norms += (
                8 * heads * d + 4 * heads + 8 * m.num_query_groups * d + 4 * m.num_query_groups
            ) / layout.tp
        attention = (2 * (2 + 2 * layout.cp) * heads * d + 6 * heads * seq) / layout.tp
    if is_moe_layer(m, index):
        f = m.moe_ffn_hidden_size or m.ffn_hidden_size
        s = m.moe_shared_expert_intermediate_size or 0
        mlp = (m.moe_router_topk * (2 * h + 10 * f) + 10 * s) / layout.tp + 8 * m.num_experts
    else:
        mlp = 10 * m.ffn_hidden_size / layout.tp
    return norms + attention + mlp


def layer_activation_bytes(
    m: ModelConfig, index: int, layout: Layout, tokens: float, seq: float, fp8: bool, te: bool
) -> float:
    """Bytes one GPU stores for one layer's backward, for ``tokens`` tokens (this rank's: a 1 / CP share of
    each sequence under context parallelism) of a microbatch of ``seq``-token sequences: the Transformer
    Engine spec (fused norm + GEMM, fused attention, fused SwiGLU) by :func:`activation_elements`, the local
    spec by :func:`local_spec_bytes_per_token`."""
    hidden, split, gemm = activation_elements(m, index)
    hidden_div = layout.tp if layout.sp else 1
    elems = hidden / hidden_div + split / layout.tp
    gemm_share = gemm / layout.tp  # roughly: the GEMM inputs split as their layers are
    bytes_per_token = 2 * elems - (gemm_share if fp8 else 0)  # FP8 keeps GEMM inputs in 1 byte
    if not te:
        bytes_per_token = local_spec_bytes_per_token(m, index, layout, seq)
    return tokens * bytes_per_token


@dataclass(frozen=True)
class TrainerMemory:
    weights: float
    grads: float
    optimizer: float
    reference: float
    activations: float
    params: StageParams


def trainer_memory(
    cfg: Config, m: ModelConfig, params: ModelParams, layout: Layout, stage: int, a: Assumptions
) -> TrainerMemory:
    """Bytes per GPU of pipeline stage ``stage`` while training (the engine asleep)."""
    sp = stage_params(params, m, layout, stage)
    wbytes = DTYPE_BYTES[m.params_dtype]
    fp8 = m.fp8 != "off"
    # TE keeps an FP8 copy of each GEMM weight and its transpose (Hopper GEMMs need both layouts).
    weights = sp.total * wbytes + (2 * sp.linear if fp8 else 0)
    grads = sp.total * 4
    opt_bytes = 12 if wbytes == 2 else 8
    dist = cfg.parallel.distributed_optimizer
    optimizer = opt_bytes * (
        sp.dense / (layout.dp * layout.cp if dist else 1) + sp.experts / (layout.edp if dist else 1)
    )
    reference = sp.total * wbytes if cfg.algorithm.kl_coef > 0 else 0.0
    seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    mbs = cfg.train.micro_batch_size
    tokens = mbs * seq / layout.cp
    rollouts = cfg.data.prompts_per_step * cfg.rollout.group_size // layout.dp
    microbatches = max(1, -(-rollouts // mbs))
    in_flight = min(layout.pp - stage, microbatches)
    layers = stage_layers(m, layout, stage)
    full = [layer_activation_bytes(m, i, layout, tokens, seq, fp8, a.te_spec) for i in layers]
    if cfg.train.recompute == "full":
        hidden_div = layout.tp if layout.sp else 1
        kept = len(layers) * tokens * 2 * m.hidden_size / hidden_div
        acts = in_flight * kept + max(full)
    else:
        acts = in_flight * sum(full)
    if stage == layout.pp - 1:
        acts += 2 * tokens * 2 * m.vocab_size / layout.tp  # bf16 logits and their gradient
    return TrainerMemory(weights, grads, optimizer, reference, acts, sp)


@dataclass(frozen=True)
class EngineMemory:
    weights: float
    kv_cache: float
    workspace: float
    concurrent: int
    """Sequences an engine holds at once."""
    rollouts: int
    """Sequences an engine generates per step."""
    kv_bytes_per_token: float
    """KV cache bytes per token on one GPU of the engine."""


def kv_bytes_per_token(m: ModelConfig, rollout_tp: int) -> float:
    """KV cache bytes per token per GPU: MLA caches the compressed latent and the rotary key (the same on
    every TP rank); GQA splits its KV heads over TP (replicated once TP exceeds them)."""
    if m.multi_latent_attention:
        return 2 * m.num_layers * (m.kv_lora_rank + m.qk_pos_emb_head_dim)
    heads = max(1, m.num_query_groups // rollout_tp)
    return 2 * m.num_layers * 2 * heads * head_dim(m)


def engine_memory(
    cfg: Config, m: ModelConfig, params: ModelParams, layout: Layout, gpu_gib: float, a: Assumptions
) -> EngineMemory:
    """Bytes per GPU of the rollout engine while it generates."""
    wbytes = DTYPE_BYTES[m.params_dtype]
    weights = params.total * wbytes / layout.rollout_tp
    rollouts = -(-cfg.data.prompts_per_step * cfg.rollout.group_size // layout.engines)
    seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    per_token = kv_bytes_per_token(m, layout.rollout_tp)
    if cfg.rollout.engine == "vllm":
        budget = cfg.rollout.gpu_memory_utilization * gpu_gib * GIB
        workspace = a.engine_workspace_gib * GIB
        kv = max(0.0, budget - weights - workspace)
        concurrent = min(rollouts, int(kv // (per_token * seq)))
    else:  # the native engine holds every rollout of its replica at once
        workspace = 0.0
        concurrent = rollouts
        kv = rollouts * seq * per_token
    return EngineMemory(weights, kv, workspace, concurrent, rollouts, per_token)
