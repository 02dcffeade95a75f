"""GPU facts the planner uses, with where each comes from. Vendor peak figures (dense, no sparsity); the
planner applies its own stated efficiencies to them (``Assumptions``)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_r1.config import ConfigError


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    """Device memory as CUDA reports it (GiB)."""
    bf16_tflops: float
    """Dense BF16 tensor-core peak (TFLOP/s)."""
    fp8_tflops: float
    """Dense FP8 tensor-core peak (TFLOP/s)."""
    hbm_tb_s: float
    """HBM bandwidth (TB/s)."""
    nvlink_gb_s: float
    """NVLink bandwidth per GPU, one direction (GB/s)."""
    network_gb_s: float
    """Inter-node network per GPU (GB/s): one 400 Gb/s InfiniBand NIC per GPU."""
    source: str


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU(
            "H100",
            79.6,
            989.0,
            1979.0,
            3.35,
            450.0,
            50.0,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB: 989 TF bf16, 1,979 TF fp8, 3.35 TB/s, NVLink "
            "900 GB/s bidirectional); 81,559 MiB as nvidia-smi reports it",
        ),
        GPU(
            "H800",
            79.6,
            989.0,
            1979.0,
            3.35,
            160.0,
            50.0,
            "The H100 SXM die, NVLink cut down; DeepSeek-V3 technical report §3.1-3.2 (arXiv 2412.19437): "
            "NVLink 160 GB/s and InfiniBand 50 GB/s per GPU as DeepSeek measured them",
        ),
        GPU(
            "H200",
            139.8,
            989.0,
            1979.0,
            4.8,
            450.0,
            50.0,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM 141 GB: 989 TF bf16, 1,979 TF fp8, 4.8 TB/s, NVLink "
            "900 GB/s bidirectional)",
        ),
    )
}


def get_gpu(name: str) -> GPU:
    key = name.upper()
    if key not in GPUS:
        raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]
