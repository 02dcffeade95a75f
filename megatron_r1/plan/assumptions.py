"""Every number the planner assumes that is not in the config or the GPU table, printed with each plan."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Assumptions:
    mean_response_tokens: int | None = None
    """Mean generated tokens per completion (None = rollout.max_new_tokens, the worst case)."""
    mean_prompt_tokens: int | None = None
    """Mean prompt tokens (None = half of data.max_prompt_tokens)."""
    train_mfu: float = 0.35
    """Model FLOPs utilisation of dense training (Megatron-Core on H100s reaches 0.35-0.45 in bf16)."""
    moe_train_mfu: float = 0.15
    """MFU of MoE training (all-to-all dispatch, grouped GEMMs: 0.1-0.25 in published runs)."""
    fp8_speedup: float = 1.3
    """Training speed-up of FP8 GEMMs over bf16 end to end (GEMMs run at 2× peak, the rest does not)."""
    hbm_efficiency: float = 0.6
    """Fraction of HBM bandwidth a decode step reaches reading weights and KV cache."""
    decode_overhead_s: float = 0.004
    """Fixed time per decode step (scheduling, sampling, launches; vLLM with CUDA graphs)."""
    native_decode_overhead_s: float = 0.03
    """The same for the native engine (eager PyTorch, no CUDA graphs)."""
    collective_latency_s: float = 30e-6
    """Latency of one all-reduce in a decode step of a rollout engine within a node (2 per layer)."""
    network_latency_s: float = 100e-6
    """The same for an engine spanning nodes (InfiniBand)."""
    link_efficiency: float = 0.7
    """Fraction of link bandwidth collectives (weight sync, TP, EP all-to-all) reach."""
    comm_overlap: float = 0.5
    """Fraction of the trainer's TP / EP communication hidden behind computation."""
    gpus_per_node: int = 8
    """GPUs one NVLink domain holds: groups larger than this cross the inter-node network."""
    te_spec: bool = True
    """Transformer Engine layers (fused norm + GEMM, fused attention without s × s scores). False: Megatron's
    local spec (fp32 norm copies, K / V expanded to every head, scores stored), what runs without TE."""
    reserve_gib: float = 3.0
    """Per GPU: CUDA context, NCCL buffers, allocator fragmentation."""
    engine_workspace_gib: float = 2.0
    """Per GPU of a vLLM engine: activations of a scheduled batch and CUDA graphs (inside its budget)."""

    def lines(self) -> list[str]:
        return [f"{f.name} = {getattr(self, f.name)}: {ASSUMPTION_DOCS[f.name]}" for f in fields(self)]


# The field docstrings in short, for the printed report (docstrings are not introspectable).
ASSUMPTION_DOCS = {
    "mean_response_tokens": "mean generated tokens per completion (None = rollout.max_new_tokens)",
    "mean_prompt_tokens": "mean prompt tokens (None = half of data.max_prompt_tokens)",
    "train_mfu": "MFU of dense training (Megatron-Core bf16 on H100: 0.35-0.45)",
    "moe_train_mfu": "MFU of MoE training (all-to-all, grouped GEMMs: 0.1-0.25 published)",
    "fp8_speedup": "end-to-end training speed-up of FP8 GEMMs over bf16",
    "hbm_efficiency": "fraction of HBM bandwidth a decode step reaches (weights + KV reads)",
    "decode_overhead_s": "fixed time per vLLM decode step (scheduling, sampling, CUDA-graph launch)",
    "native_decode_overhead_s": "fixed time per native-engine decode step (eager PyTorch)",
    "collective_latency_s": "one all-reduce in a multi-GPU engine's decode step (2 per layer), in a node",
    "network_latency_s": "the same for an engine spanning nodes",
    "link_efficiency": "fraction of NVLink / network bandwidth collectives reach (sync, TP, EP)",
    "comm_overlap": "fraction of the trainer's TP / EP communication hidden behind computation",
    "gpus_per_node": "GPUs per NVLink domain; larger TP / EP / engine groups cross the network",
    "te_spec": "Transformer Engine layers (fused attention: no s × s scores); False: Megatron's local spec",
    "reserve_gib": "per GPU: CUDA context, NCCL buffers, allocator fragmentation",
    "engine_workspace_gib": "per vLLM engine GPU: batch activations and CUDA graphs (inside its budget)",
}
